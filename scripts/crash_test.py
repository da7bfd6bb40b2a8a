#!/usr/bin/env python
"""Kill a real indexer with SIGKILL at random moments, again and again, over one library.

The photos are copied to a scratch folder that changes before every round (a file added,
one edited, one renamed, one deleted), so every round has work to interrupt. After every kill
the library is reopened and checked: SQLite integrity_check ok, image states consistent, the
index holds exactly the stored ids, no stored file that is still there unchanged was lost, no
path stored twice. A last run without a kill must then give the same library as a clean run
over the final folder: the same files in the same states with the same vectors.

Usage: .venv/bin/python scripts/crash_test.py PHOTOS [--rounds 20] [--seed 0] [--db URL]
           [--writers N [--overlap]] [-- extra index options, e.g. -m tests.models:tiny_cnn -w none]
With ``--db`` the library crashed is that one (e.g. an empty PostgreSQL database); the clean
reference run is always a SQLite file. With ``--writers N`` (a server library only) every round
starts N indexers on the same folder at once and kills one of them; the others must finish
cleanly. With ``--overlap`` as well, the photos lie in a chain of nested folders (one more than
rounds) and round R's indexers alternate between two of them: the first on the folder that the
last round made a root, a moment later the next on the folder above it, which takes that root
in while the first run writes under it. For a server library the script last copies it to
SQLite (``db copy``) and back to a fresh database, and checks that ``similar`` answers the
same in all three.
Exits 1 on the first broken invariant. Run it from the checkout root.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from featx_search import Library, Query


def _server(db: str) -> bool:
    return "://" in db


def _shown(db: str) -> str:
    """``db`` as printed: a server URL without its password."""
    if not _server(db):
        return db
    from sqlalchemy.engine import make_url

    return make_url(db).render_as_string(hide_password=True)


def _exists(db: str) -> bool:
    return _server(db) or Path(db).exists()


def _nest(photos: Path, levels: int, rng: random.Random) -> list[Path]:
    """Spread the files of ``photos`` over a chain of ``levels`` nested folders (``photos``,
    ``photos/nest``, ``photos/nest/nest``, ...), each keeping its path below its level;
    returns the chain, outermost first."""
    chain = [photos]
    for _ in range(levels - 1):
        chain.append(chain[-1] / "nest")
    for path in sorted(p for p in photos.rglob("*") if p.is_file() or p.is_symlink()):
        target = rng.choice(chain) / path.relative_to(photos)
        if target != path:
            target.parent.mkdir(parents=True, exist_ok=True)
            path.rename(target)
    return chain


def _indexer(db: str, photos: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "featx_search", "--db", str(db), "index", str(photos), "-q"]
    return subprocess.Popen(cmd + extra, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _generation(db: str) -> int:
    """How many batches the library has committed, read without Alembic or locks (the
    indexer keeps writing): every committed batch bumps its space's generation."""
    if _server(db):
        import psycopg
        from sqlalchemy.engine import make_url

        libpq = make_url(db).set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            with psycopg.connect(libpq) as con:
                found = con.execute("SELECT coalesce(max(generation), 0) FROM spaces").fetchone()
                return int(found[0]) if found else 0
        except psycopg.Error:
            return 0  # not migrated yet
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return int(con.execute("SELECT coalesce(max(generation), 0) FROM spaces").fetchone()[0])
    except sqlite3.Error:
        return 0  # not created or not migrated yet


def _snapshot(db: str) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """(path -> state, path -> vector) of the library's only space (empty before it exists)."""
    with Library.open(db, create=False) as lib:
        spaces = lib.spaces()
        if not spaces:  # killed before the space was stored
            return {}, {}
        _, ids, matrix = spaces[0].vectors()
        paths = {facts.id: facts.path for facts in spaces[0].image_facts(ids.tolist())}
        vectors = {paths[int(i)]: row for i, row in zip(ids, matrix, strict=True)}
        states = {p: "indexed" for p in vectors} | {p: "failed" for p, _ in lib.failures()}
        return states, vectors


def _opens(path: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # the corpus may hold broken files on purpose
        return False


def _mutate(folder: Path, rng: random.Random, round_: int) -> set[Path]:
    """Add, edit, rename and delete one file each and touch half the others (so they are
    embedded again); returns the paths whose content changed or that went away (the files a
    round may legitimately drop from the library)."""
    from PIL import Image

    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    images = [p for p in files if p.suffix.lower() in (".jpg", ".jpeg", ".png") and _opens(p)]
    if len(images) < 4:
        return set()
    added, edited, renamed, deleted = rng.sample(images, 4)
    with Image.open(added) as img:
        w, h = img.size
        img.convert("RGB").crop((0, 0, w * 9 // 10, h * 9 // 10)).save(
            added.with_name(f"new-{round_}.jpg"), quality=90
        )
    with Image.open(edited) as img:
        img.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
            edited.with_suffix(".tmp.jpg"), quality=85
        )
    os.replace(edited.with_suffix(".tmp.jpg"), edited)
    renamed.rename(renamed.with_name(f"renamed-{round_}{renamed.suffix}"))
    deleted.unlink()
    for path in images:
        if path not in (edited, renamed, deleted) and rng.random() < 0.5:
            os.utime(path, ns=(time.time_ns(), time.time_ns()))
    return {edited, renamed, deleted}


def _stored_paths(db: str) -> set[str]:
    return set(_snapshot(db)[1])


def _same_answers(dbs: list[str], probes: int) -> None:
    """``similar`` (k=5, by path) answers with the same paths in every library of ``dbs``."""
    paths = sorted(_stored_paths(dbs[0]))[:probes]  # indexed ones (failed files have no vector)
    answers = []
    for db in dbs:
        with Library.open(db, create=False) as lib:
            answers.append([[m.path for m in lib.similar(p, Query(k=5))] for p in paths])
    for db, answer in zip(dbs[1:], answers[1:], strict=True):
        if answer != answers[0]:
            raise SystemExit(
                f"FAIL: similar answers differently in {_shown(db)} and {_shown(dbs[0])}"
            )


def _copy(source: str, target: str) -> None:
    cmd = [sys.executable, "-m", "featx_search", "db", "copy", source, target]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(
            f"FAIL: db copy {_shown(source)} -> {_shown(target)}: {done.stderr.strip()}"
        )


def _check(db: str) -> int:
    """Reopen the library, check its invariants, return how many images it holds."""
    with Library.open(db, create=False) as lib:
        report = lib.check()
        if not report.ok:
            raise SystemExit(f"FAIL: {report.problems}")
        paths = [facts.path for facts in lib._store.image_facts(None)]
        rows, distinct = len(paths), len(set(paths))
        if rows != distinct:
            raise SystemExit(f"FAIL: {rows - distinct} paths stored twice")
        return int(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("--rounds", type=int, default=20, help="kills before the final run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the scratch files here (a new folder)")
    parser.add_argument("--db", help="the library to crash (default: a file in the workdir)")
    parser.add_argument("--writers", type=int, default=1, help="indexers at once (server only)")
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="with --writers: indexers on a folder and on its parent (the parent's root "
        "takes the folder's in while its run writes)",
    )
    parser.add_argument("--copy-to", help="an empty server database for the copy back")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.extra = extra
    if args.writers > 1 and not (args.db and _server(args.db)):
        parser.error("--writers above 1 needs a server library (--db URL): SQLite has one writer")
    if args.overlap and args.writers < 2:
        parser.error("--overlap needs --writers 2 or more")
    rng = random.Random(args.seed)
    with contextlib.ExitStack() as stack:
        tmp = args.workdir or stack.enter_context(tempfile.TemporaryDirectory())
        photos, db = Path(tmp) / "photos", args.db or str(Path(tmp) / "crashed.db")
        shutil.copytree(args.photos, photos, symlinks=True)
        chain = _nest(photos, args.rounds + 1, rng) if args.overlap else [photos]
        full = 5.0  # seconds a run may last; updated from each round
        kills = 0
        for round_ in range(args.rounds):
            before = _stored_paths(db) if _exists(db) else set()
            changed = _mutate(photos, rng, round_)
            total = sum(1 for p in photos.rglob("*") if p.is_file())
            started = time.perf_counter()
            start = _generation(db)
            if args.overlap:
                # The inner folder's run first, then (once it has written or after a
                # moment) the outer folder's: its root takes the inner root in mid-run.
                inner, outer = chain[-1 - round_], chain[-2 - round_]
                procs = [_indexer(db, inner, args.extra)]
                waited = time.perf_counter() + rng.uniform(0.2, 2.0)
                while (
                    procs[0].poll() is None
                    and _generation(db) == start
                    and time.perf_counter() < waited
                ):
                    time.sleep(0.01)
                procs += [
                    _indexer(db, outer if i % 2 else inner, args.extra)
                    for i in range(1, args.writers)
                ]
            else:
                procs = [_indexer(db, photos, args.extra) for _ in range(args.writers)]
            proc = rng.choice(procs)  # the one killed; the others must finish on their own
            # Two kills in three land once a random number of batches is committed (mid-indexing,
            # between or inside batches); the others at a random time (start-up, migration,
            # scan, publish).
            batches = total // 2  # an upper bound on this round's batches
            target = start + rng.randint(1, batches) if rng.random() < 2 / 3 else None
            deadline = time.perf_counter() + rng.uniform(0.0, full)
            while proc.poll() is None:
                if target is None and time.perf_counter() >= deadline:
                    break
                if target is not None and _generation(db) >= target:
                    time.sleep(rng.uniform(0.0, 0.05))
                    break
                time.sleep(0.005)
            if proc.poll() is None:
                proc.kill()
                kills += 1
            # A run lasts at least as long as this one got: later random kills can reach
            # further than start-up.
            full = max(full, time.perf_counter() - started)
            proc.wait()
            for other in procs:
                if other is not proc and other.wait() != 0:
                    error = other.stderr.read().decode().strip()  # type: ignore[union-attr]
                    raise SystemExit(f"FAIL: round {round_}: a writer not killed failed: {error}")
            held = _check(db) if _exists(db) else 0
            # (a file renamed in an earlier round may still be stored under its old path
            # until a run gets to record the move: only files still on disk count; a kill
            # during start-up may come before the library file exists)
            kept = {p for p in before if Path(p) not in changed and Path(p).exists()}
            lost = kept - (_stored_paths(db) if _exists(db) else set())
            if lost:
                raise SystemExit(f"FAIL: round {round_}: stored files lost: {sorted(lost)[:5]}")
            done = _generation(db) - start
            killed = proc.returncode == -9
            how = "time" if target is None else f"batch target {target - start}"
            if args.overlap:
                how += f", killed the {'outer' if procs.index(proc) % 2 else 'inner'} folder's run"
            print(f"round {round_} ({how}): killed={killed} after {done} batches, stored={held} ok")
        final = _indexer(db, photos, args.extra)
        if final.wait() != 0:
            raise SystemExit(f"FAIL: final run: {final.stderr.read().decode()}")  # type: ignore[union-attr]
        _check(db)
        reference = str(Path(tmp) / "reference.db")
        if _indexer(reference, photos, args.extra).wait() != 0:
            raise SystemExit("FAIL: the clean reference run failed")
        expected_states, expected_vectors = _snapshot(reference)
        states, vectors = _snapshot(db)
        if states != expected_states:
            raise SystemExit("FAIL: final states differ from an uninterrupted run")
        for path, vector in expected_vectors.items():
            if not np.allclose(vectors[path], vector, atol=1e-5):
                raise SystemExit(f"FAIL: vector of {path} differs from an uninterrupted run")
        print(
            f"ok: {kills} kills in {args.rounds} rounds; the final library equals a clean run "
            f"({len(states)} files)"
        )
        if _server(db):
            copied = str(Path(tmp) / "copied.db")
            _copy(db, copied)
            libraries = [db, copied]
            if args.copy_to:
                _copy(copied, args.copy_to)
                libraries.append(args.copy_to)
            _same_answers(libraries, probes=10)
            shown = ", ".join(_shown(d) for d in libraries)
            print(f"ok: similar answers the same in {shown}")


if __name__ == "__main__":
    main()
