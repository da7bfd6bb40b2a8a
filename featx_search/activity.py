"""What a library's indexer is doing, for other processes to see (``info``, the web app).

While :meth:`Space.sync` runs it keeps a small JSON file beside the database
(``DB.activity.json``; for a server library, ``activity.json`` in this machine's index
folder, so only processes on the same machine see it): its process id, the phase, how many
images of how many are done, when it started and when it last wrote. The file is replaced
atomically on every update and removed when the run ends; one left by a process that died is
ignored (its process is gone, or it has not been written for :data:`STALE_SECONDS`).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .options import Progress, ProgressCallback

STALE_SECONDS = 600.0
# At most this many writes a second: each is a small file replaced in place.
_MIN_INTERVAL = 0.5


@dataclass(frozen=True)
class Activity:
    """An index run in progress: ``done`` of ``total`` images embedded so far (``total`` is
    0 while the folders are scanned), in ``phase`` ("scanning", "embedding", "publishing")."""

    pid: int
    phase: str
    done: int
    total: int
    failed: int
    started: datetime
    updated: datetime

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["started"] = self.started.isoformat(timespec="seconds")
        out["updated"] = self.updated.isoformat(timespec="seconds")
        return out


def activity_path(db: Path) -> Path:
    return db.with_name(db.name + ".activity.json")


def _file(db: Path | None, file: Path | None) -> Path:
    if file is not None:
        return file
    if db is None:
        raise TypeError("give the library's database file or its activity file")
    return activity_path(db)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def current_activity(db: Path | None = None, *, file: Path | None = None) -> Activity | None:
    """The index run going on in the SQLite library ``db`` now (or whose activity file is
    ``file``), or None (no run, or one that died)."""
    try:
        data = json.loads(_file(db, file).read_text())
        activity = Activity(
            pid=int(data["pid"]),
            phase=str(data["phase"]),
            done=int(data["done"]),
            total=int(data["total"]),
            failed=int(data["failed"]),
            started=datetime.fromtimestamp(float(data["started"]), timezone.utc),
            updated=datetime.fromtimestamp(float(data["updated"]), timezone.utc),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no file, or one being replaced or damaged: nothing to show
    age = time.time() - activity.updated.timestamp()
    if age > STALE_SECONDS or not _alive(activity.pid):
        return None
    return activity


class ActivityFile:
    """Writes the activity file of one index run (a context manager; the file is removed at
    the end). Writing is best effort: a folder that cannot take the file only loses the
    progress shown elsewhere."""

    def __init__(self, db: Path | None = None, *, file: Path | None = None) -> None:
        self.path = _file(db, file)
        self.started = time.time()
        self._last = 0.0
        self._state: dict[str, Any] = {"phase": "scanning", "done": 0, "total": 0, "failed": 0}

    def __enter__(self) -> ActivityFile:
        self._write(force=True)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()

    def phase(self, name: str) -> None:
        self._state["phase"] = name
        self._write(force=True)

    def wrap(self, callback: ProgressCallback | None) -> ProgressCallback:
        """A progress callback that records each step, then calls ``callback``."""

        def record(step: Progress) -> None:
            first = self._state["phase"] != "embedding"
            self._state.update(
                phase="embedding", done=step.done, total=step.total, failed=step.failed
            )
            self._write(force=first or step.done >= step.total)
            if callback is not None:
                callback(step)

        return record

    def _write(self, *, force: bool) -> None:
        now = time.time()
        if not force and now - self._last < _MIN_INTERVAL:
            return
        self._last = now
        data = {**self._state, "pid": os.getpid(), "started": self.started, "updated": now}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError:
            pass
