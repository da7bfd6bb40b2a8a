"""Walking folders for image files."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .images import is_image_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileInfo:
    """A file found by a scan: absolute path, size in bytes, modification time in ns."""

    path: Path
    size: int
    mtime_ns: int


def stat_or_lstat(path: Path) -> FileInfo | None:
    """Stat one file, following a symlink; a broken link gets the link's own stat, so that
    decoding records it as failed with the reason instead of it being skipped silently.
    None when the path is gone altogether."""
    try:
        st = path.stat()
    except OSError:
        try:
            st = path.lstat()
        except OSError:
            return None
    return FileInfo(path, st.st_size, st.st_mtime_ns)


def scan(folder: Path, unreadable: list[Path] | None = None) -> Iterator[FileInfo]:
    """Every image file under ``folder`` (recursively, sorted by path, hidden folders skipped).

    Symlinked folders are not followed, so link loops cannot trap the walk. Folders that
    cannot be listed are logged and appended to ``unreadable``: what the store knows under
    them must not be taken as deleted.
    """

    def onerror(err: OSError) -> None:
        log.warning("cannot read folder %s: %s", err.filename, err.strerror)
        if unreadable is not None:
            unreadable.append(Path(err.filename))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=onerror):
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                log.info("not following symlinked folder %s", os.path.join(dirpath, name))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not is_image_name(name):
                continue
            info = stat_or_lstat(Path(dirpath, name))
            if info is not None:
                yield info
