"""Fixtures of the index tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def faiss_one_thread() -> Iterator[None]:
    """FAISS on one thread for a module: results do not depend on how work is split between
    threads, and OpenMP threads only contend on a small shared test machine."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)
