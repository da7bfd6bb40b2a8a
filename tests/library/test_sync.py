"""Keeping a library in step with its folders: hashes, moves, dry runs, retries, interrupts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select, text

from featx_search import Library, Progress, Query, SyncOptions, ingest
from featx_search import scan as scan_module
from featx_search.schema import images
from tests.support import TINY, make_photo, run_cli


def _rows(library: Library) -> dict[str, Any]:
    with library._store.transaction() as s:
        return {row.relpath: row for row in s.execute(select(images))}


def test_content_hash_and_date_taken_are_recorded(library: Library, tmp_path: Path) -> None:
    root = tmp_path / "p"
    plain = make_photo(root / "plain.jpg", seed=1)
    dated = root / "dated.jpg"
    img = PILImage.open(plain)
    exif = img.getexif()
    exif.get_ifd(0x8769)[0x9003] = "2019:07:04 18:30:05"
    img.save(dated, exif=exif)
    library.index([root], TINY)
    rows = _rows(library)
    for name in ("plain.jpg", "dated.jpg"):
        expected = hashlib.sha256((root / name).read_bytes()).hexdigest()
        assert rows[name].content_hash == expected
    assert rows["dated.jpg"].taken_at == datetime(2019, 7, 4, 18, 30, 5)
    assert rows["plain.jpg"].taken_at is None


def _vectors(library: Library) -> dict[str, np.ndarray]:
    """Stored vectors of the library's only space, keyed by absolute path."""
    space = library.space()
    _, ids, matrix = space.vectors()
    paths = {facts.id: facts.path for facts in space.image_facts(ids.tolist())}
    return {paths[int(i)]: row for i, row in zip(ids, matrix, strict=True)}


class _Opened:
    """Counts the files the indexer decodes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        real = ingest.decode_file

        def spy(path: str | os.PathLike[str], **kwargs: Any) -> Any:
            self.paths.append(os.fspath(path))
            return real(path, **kwargs)

        monkeypatch.setattr(ingest, "decode_file", spy)


def test_sync_follows_edits_moves_and_deletions(
    library: Library, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library.index([photos], TINY)
    before = _vectors(library)
    opened = _Opened(monkeypatch)
    # rename within the folder, move to a new subfolder, edit one, delete one, add one
    (photos / "a" / "img01.jpg").rename(photos / "a" / "renamed.jpg")
    (photos / "deep" / "er").mkdir(parents=True)
    (photos / "b" / "img02.jpg").rename(photos / "deep" / "er" / "img02.jpg")
    edited = photos / "b" / "img04.jpg"
    make_photo(edited, seed=404)
    os.utime(edited, ns=(1, 3_000_000_000))
    (photos / "a" / "img03.png").unlink()
    make_photo(photos / "b" / "new.png", seed=99)
    report = library.index([photos])
    assert (report.added, report.updated, report.moved, report.removed, report.unchanged) == (
        1,
        1,
        2,
        1,
        8,
    )
    # Only the edited and the new file were decoded; moves reuse the stored vector.
    assert sorted(opened.paths) == sorted([str(edited), str(photos / "b" / "new.png")])
    after = _vectors(library)
    np.testing.assert_array_equal(
        after[str(photos / "a" / "renamed.jpg")], before[str(photos / "a" / "img01.jpg")]
    )
    np.testing.assert_array_equal(
        after[str(photos / "deep" / "er" / "img02.jpg")], before[str(photos / "b" / "img02.jpg")]
    )
    assert str(photos / "a" / "img01.jpg") not in after
    assert str(photos / "a" / "img03.png") not in after
    assert len(after) == 12
    hits = library.similar(photos / "a" / "renamed.jpg", Query(k=1))
    assert hits[0].path == str(photos / "a" / "renamed.jpg")
    # The index agrees with the store.
    space = library.space()
    assert sorted(space.index().ids().tolist()) == space.vectors()[1].tolist()


def test_move_from_a_root_not_scanned_keeps_the_vector(
    library: Library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for i in range(3):
        make_photo(old / f"p{i}.jpg", seed=i)
    make_photo(new / "other.jpg", seed=50)
    library.index([old, new], TINY)
    (old / "p1.jpg").rename(new / "p1.jpg")
    opened = _Opened(monkeypatch)
    report = library.index([new])
    assert (report.moved, report.added, report.removed) == (1, 0, 0)
    assert opened.paths == []
    assert str(new / "p1.jpg") in _vectors(library) and str(old / "p1.jpg") not in _vectors(library)


def test_a_folder_given_before_its_parent_is_indexed_once_under_the_parent(
    library: Library, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One run given a folder and then its parent: the parent is the one root, and each
    file is planned and embedded once (not under both)."""
    opened = _Opened(monkeypatch)
    report = library.index([photos / "a", photos], TINY)
    assert (report.added, report.unchanged, report.failed) == (12, 0, 0)
    assert sorted(opened.paths) == sorted(str(p) for p in photos.rglob("img*"))
    assert len(_rows(library)) == 12
    assert [root for _, root in library._store.roots_below(photos.parent)] == [photos]
    space = library.space()
    assert sorted(space.index().ids().tolist()) == space.vectors()[1].tolist()


def test_a_copy_is_embedded_not_moved(library: Library, photos: Path) -> None:
    library.index([photos], TINY)
    shutil.copy2(photos / "a" / "img01.jpg", photos / "copy.jpg")
    report = library.index([photos])
    assert (report.added, report.moved) == (1, 0)
    assert str(photos / "a" / "img01.jpg") in _vectors(library)


def _snapshot(library: Library) -> object:
    """What a dry run must not change: the database file and the files beside it, or on a
    server the stored rows and the index folder."""
    if library.location.is_sqlite:
        db = library.path
        return db.read_bytes(), sorted(p.name for p in db.parent.iterdir())
    store = library._store
    files = sorted(p.name for p in store.index_dir.iterdir())
    return store.image_facts(None), [(s.id, s.generation) for s in store.spaces()], files


def test_dry_run_lists_changes_and_writes_nothing(
    library: Library, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library.index([photos], TINY)
    (photos / "a" / "img01.jpg").rename(photos / "a" / "moved.jpg")
    edited = photos / "b" / "img04.jpg"
    make_photo(edited, seed=404)
    os.utime(edited, ns=(1, 3_000_000_000))
    (photos / "a" / "img03.png").unlink()
    make_photo(photos / "b" / "new.png", seed=99)
    snapshot = _snapshot(library)
    opened = _Opened(monkeypatch)
    report = library.plan([photos])
    assert report.dry_run and opened.paths == []
    assert (report.added, report.updated, report.moved, report.removed) == (1, 1, 1, 1)
    assert sorted(report.changes) == sorted(
        [
            ("add", str(photos / "b" / "new.png")),
            ("update", str(edited)),
            ("move", f"{photos / 'a' / 'img01.jpg'} -> {photos / 'a' / 'moved.jpg'}"),
            ("remove", str(photos / "a" / "img03.png")),
        ]
    )
    assert _snapshot(library) == snapshot
    real = library.index([photos])
    assert (real.added, real.updated, real.moved, real.removed) == (1, 1, 1, 1)


def test_unreadable_folder_holds_its_files(
    library: Library, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library.index([photos], TINY)
    real_walk = os.walk

    def walk(top: Any, onerror: Any = None, **kw: Any) -> Any:
        for dirpath, dirnames, filenames in real_walk(top, onerror=onerror, **kw):
            if Path(dirpath) == photos / "a":  # as if listing it failed (root ignores chmod)
                onerror(PermissionError(13, "Permission denied", str(photos / "a")))
                dirnames[:] = []
                continue
            yield dirpath, dirnames, filenames

    monkeypatch.setattr(scan_module.os, "walk", walk)
    report = library.index([photos])
    assert (report.removed, report.held) == (0, 6)
    assert any("cannot read" in w and str(photos / "a") in w for w in report.warnings)
    assert library.spaces()[0].count == 12


def test_empty_root_looks_unmounted_and_is_kept(library: Library, photos: Path) -> None:
    library.index([photos], TINY)
    shutil.rmtree(photos)
    photos.mkdir()  # what an unmounted mount point looks like
    report = library.index([photos])
    assert (report.removed, report.held) == (0, 12)
    assert "--prune-empty" in report.warnings[0]
    assert library.spaces()[0].count == 12
    pruned = library.index([photos], options=SyncOptions(prune_empty=True))
    assert pruned.removed == 12 and library.spaces()[0].count == 0


def test_retry_failed(library: Library, photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (photos / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert library.index([photos], TINY).failed == 1
    opened = _Opened(monkeypatch)
    assert library.index([photos]).failed == 0 and opened.paths == []
    retried = library.index([photos], options=SyncOptions(retry_failed=True))
    assert retried.failed == 1 and opened.paths == [str(photos / "bad.jpg")]
    assert len(library.failures()) == 1


def test_stop_ends_after_the_batch_and_the_next_run_resumes(library: Library, photos: Path) -> None:
    calls: list[int] = []
    stop = threading.Event()
    handler = signal.getsignal(signal.SIGINT)

    def interrupt(p: Progress) -> None:
        calls.append(p.done)
        assert signal.getsignal(signal.SIGINT) is handler  # library code leaves SIGINT alone
        if len(calls) == 1:
            stop.set()

    report = library.index(
        [photos], TINY, options=SyncOptions(batch_size=4), progress=interrupt, stop=stop
    )
    # The batch being embedded when stop was set is finished and saved too, then it stops.
    assert report.interrupted and (report.added, report.remaining) == (8, 4)
    assert calls == [4, 8]
    assert library.spaces()[0].count == 8
    rest = library.index([photos])
    assert (rest.added, rest.unchanged, rest.interrupted) == (4, 8, False)
    assert library.spaces()[0].count == 12


def test_cli_dry_run_verbose_and_json(db: Path, photos: Path) -> None:
    def run(*args: str | Path, code: int = 0) -> str:
        result = run_cli("--db", db, *args, ok=False)
        assert result.exit_code == code, result.output
        return result.output

    assert "no library at" in run("index", photos, "--dry-run", code=1)
    assert not db.exists()
    run("index", photos, "-m", TINY.model, "-w", "none", "-q")
    (photos / "a" / "img01.jpg").rename(photos / "a" / "moved.jpg")
    (photos / "b" / "img02.jpg").unlink()
    out = run("index", photos, "--dry-run")
    assert f"move   {photos / 'a' / 'img01.jpg'} -> {photos / 'a' / 'moved.jpg'}" in out
    assert f"remove {photos / 'b' / 'img02.jpg'}" in out
    assert "dry run: would add 0, update 0, move 1, remove 1" in out
    summary = json.loads(run("index", photos, "--json"))
    assert {k: summary[k] for k in ("added", "updated", "moved", "removed", "unchanged")} == {
        "added": 0,
        "updated": 0,
        "moved": 1,
        "removed": 1,
        "unchanged": 10,
    }
    make_photo(photos / "b" / "new.png", seed=5)
    out = run("index", photos, "--verbose")
    assert f"add    {photos / 'b' / 'new.png'}" in out
    assert "Error" not in run("db", "check") and "ok" in run("db", "check")


def test_progress_bar_on_a_terminal(db: Path, photos: Path) -> None:
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    options = ["-m", TINY.model, "-w", "none", "--batch-size", "4"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "featx_search", "--db", str(db), "index", str(photos), *options],
        cwd=Path(__file__).resolve().parents[2],
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert "embedding" in screen and "12/12" in screen and "img/s" in screen
    assert "indexed 12 (added 12, updated 0)" in screen


def test_check_finds_an_index_that_disagrees_with_the_store(library: Library, photos: Path) -> None:
    library.index([photos], TINY)
    assert library.check().ok
    with library._store.transaction() as s:  # a vector lost behind the index file's back
        s.execute(text("DELETE FROM vectors WHERE image_id = (SELECT min(image_id) FROM vectors)"))
    report = library.check()
    assert not report.ok
    assert any("index ids differ" in p for p in report.problems)
    assert any("marked indexed but have no vector" in p for p in report.problems)


def test_an_index_run_is_visible_to_other_processes(db: Path, photos: Path) -> None:
    from featx_search.activity import activity_path, current_activity

    seen = []

    def look(step: Progress) -> None:
        seen.append(current_activity(db))

    with Library.open(db) as lib:
        lib.index([photos], TINY, options=SyncOptions(batch_size=4), progress=look)
    assert seen and all(a is not None and a.pid == os.getpid() for a in seen)
    done = [a.done for a in seen if a is not None]
    # The first and last steps are always written (others at most twice a second).
    assert done[0] == 4 and done[-1] == 12 and done == sorted(done)
    assert {a.total for a in seen if a is not None} == {12}
    assert current_activity(db) is None and not activity_path(db).exists()
