"""The one progress bar of the command line, fed by the core's progress callback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from ..options import Progress, ProgressCallback


class _Bar:
    """A click progress bar on stderr, opened at the first report (which brings the total)."""

    def __init__(self, label: str, *, rate: bool) -> None:
        self.label = label
        self.show_rate = rate
        self.bar: Any = None
        self.rate = ""

    def __call__(self, p: Progress) -> None:
        if self.bar is None:
            self.bar = click.progressbar(
                length=p.total,
                label=self.label,
                file=sys.stderr,
                show_pos=self.show_rate,
                item_show_func=(lambda _: self.rate) if self.show_rate else None,
            )
            self.bar.__enter__()
        if self.show_rate and p.elapsed > 0:
            self.rate = f"{p.done / p.elapsed:.1f} img/s" + (
                f", {p.failed} failed" if p.failed else ""
            )
        self.bar.update(p.done - self.bar.pos)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@contextmanager
def progress_bar(
    label: str, *, show: bool, rate: bool = False
) -> Iterator[ProgressCallback | None]:
    """A progress callback drawing a bar labelled ``label`` on stderr, or None when not
    ``show`` or stderr is not a terminal. ``rate`` adds the position, images per second and
    failures. The bar is closed on leaving."""
    if not (show and sys.stderr.isatty()):
        yield None
        return
    bar = _Bar(label, rate=rate)
    try:
        yield bar
    finally:
        bar.close()
