"""What the command line owns of the process: SIGINT, the OpenMP environment and logging."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from . import output


def prefer_passive_openmp() -> bool:
    """Make torch's OpenMP threads sleep, not spin, while they wait (``OMP_WAIT_POLICY``):
    while indexing, decoding threads share the cores with the model's threads. The program
    owns its environment, so front ends call this, before torch is imported; a value the user
    set is kept. Returns True when the setting is in effect."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def prepare_environment() -> None:
    """Process settings that must be in place before anything imports torch."""
    prefer_passive_openmp()


@contextmanager
def stop_on_interrupt() -> Iterator[threading.Event]:
    """While indexing, the first Ctrl-C sets the yielded event, which asks the run to stop
    after the batches in flight; a second one stops at once (the committed batches are kept
    either way). Off the main thread no handler can be installed and the event stays unset."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        output.stopping()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


class _StderrHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"{record.levelname.lower()}: {record.getMessage()}", err=True)


def log_to_stderr(verbose: bool) -> None:
    """The package's log records as ``level: message`` lines on stderr: INFO and up when
    ``verbose``, else warnings and errors."""
    logger = logging.getLogger("featx_search")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
