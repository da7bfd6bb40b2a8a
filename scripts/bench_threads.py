#!/usr/bin/env python
"""Model threads and layout: images/s of the bare efficientnet_lite0 extractor on 16 random
inputs (one batch), for 1 and 2 torch threads, channels_last on and off, twice each.

Run it with and without passive OpenMP waiting to compare (this script sets nothing itself):
    env -u OMP_WAIT_POLICY  .venv/bin/python scripts/bench_threads.py   # libgomp default
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/bench_threads.py
"""

from __future__ import annotations

import os
import time

import numpy as np

from featx_search import Compute, ExtractorSpec
from featx_search.extract import load_extractor


def main() -> None:
    batch = np.random.default_rng(0).normal(size=(16, 3, 224, 224)).astype(np.float32)
    print(f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    for threads in (1, 2, 1, 2):
        for channels_last in (True, False):
            compute = Compute(device="cpu", threads=threads, channels_last=channels_last)
            extractor = load_extractor(ExtractorSpec(), compute)
            extractor.embed(batch[:4])
            t0 = time.perf_counter()
            extractor.embed(batch)
            rate = len(batch) / (time.perf_counter() - t0)
            print(f"threads={threads} channels_last={channels_last}: {rate:.1f} img/s")


if __name__ == "__main__":
    main()
