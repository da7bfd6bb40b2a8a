"""Planning a sync: which files to embed, move, keep or remove (nothing is written here
except the roots of new folders, and only when not a dry run)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from .images import hash_file
from .records import FAILED, KnownFile, Move
from .reports import IndexReport
from .scan import FileInfo, scan, stat_or_lstat

if TYPE_CHECKING:
    from .reader import Reader
    from .store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    root_id: int
    relpath: str
    info: FileInfo
    is_update: bool  # the file's content changed (or it failed before and is tried again)
    known: bool = True  # the store has a row for this path


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    unchanged: int = 0
    moves: list[tuple[Path, Path, Move]] = field(default_factory=list)
    removed: dict[int, Path] = field(default_factory=dict)
    held: int = 0
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _held_back(rel: str, unreadable: Sequence[str]) -> bool:
    return any(u in (".", "") or rel == u or rel.startswith(u + os.sep) for u in unreadable)


def _is_empty_folder(folder: Path) -> bool:
    try:
        with os.scandir(folder) as entries:
            return next(entries, None) is None
    except OSError:
        return True


def _known(
    store: Reader, root_id: int | None, root_dir: Path, prefix: str, space_id: int
) -> dict[str, KnownFile]:
    """Stored files under ``prefix`` of a root, by path relative to it. A folder that is no
    root yet (a dry run does not make it one) knows the files of the roots below it."""
    if root_id is not None:
        return store.known_files(root_id, prefix, space_id)
    known: dict[str, KnownFile] = {}
    for nested_id, nested in store.roots_below(root_dir):
        rel = os.path.relpath(nested, root_dir)
        for path, file in store.known_files(nested_id, "", space_id).items():
            known[os.path.join(rel, path)] = file
    return known


def _folder(path: Path) -> Path | None:
    """The folder a sync of ``path`` (absolute) scans: ``path`` itself, or a file's folder
    (resolved); None when ``path`` does not exist."""
    if path.is_dir():
        return path.resolve()
    if path.exists() or path.is_symlink():
        return path.parent.resolve()
    return None


def make_plan(
    store: Reader,
    space_id: int,
    paths: Iterable[str | os.PathLike[str]],
    *,
    dry_run: bool = False,
    retry_failed: bool = False,
    prune_empty: bool = False,
) -> Plan:
    plan = Plan()
    seen: set[tuple[int, str]] = set()
    given = [Path(raw).expanduser().absolute() for raw in paths]
    folders = {path: _folder(path) for path in given}
    if not dry_run:
        # Outer folders first: a folder given after one inside it would take the inner
        # one's root in under the plan's feet (its files planned twice, under two roots).
        for outer in sorted(
            {f for f in folders.values() if f is not None}, key=lambda f: len(f.parts)
        ):
            cast("Store", store).root_for(outer)
    for path in given:
        whole = path.is_dir()
        folder = folders[path]
        if folder is None:
            plan.missing.append(str(path))
            log.warning("%s does not exist; nothing under it is changed", path)
            continue
        if dry_run:
            root_id, root_dir = store.find_root(folder)
        else:
            root_id, root_dir = cast("Store", store).root_for(folder)
        prefix = "" if folder == root_dir else os.path.relpath(folder, root_dir)
        known = _known(store, root_id, root_dir, prefix if whole else "", space_id)
        unreadable: list[Path] = []
        found: Iterable[FileInfo | None] = (
            scan(folder, unreadable) if whole else [stat_or_lstat(folder / path.name)]
        )
        visited: set[str] = set()
        for info in found:
            if info is None:
                continue
            rel = os.path.relpath(info.path, root_dir)
            visited.add(rel)
            if (root_id or 0, rel) in seen:
                continue
            seen.add((root_id or 0, rel))
            old = known.get(rel)
            same = old is not None and (old.size, old.mtime_ns) == (info.size, info.mtime_ns)
            if (
                same
                and old is not None
                and (old.has_vector or (old.status == FAILED and not retry_failed))
            ):
                plan.unchanged += 1
            else:
                is_update = old is not None and (not same or old.status == FAILED)
                plan.jobs.append(Job(root_id or 0, rel, info, is_update, known=old is not None))
        if not whole:
            continue
        gone = {rel: k for rel, k in known.items() if rel not in visited}
        if not gone:
            continue
        if not visited and not prune_empty and _is_empty_folder(folder):
            # An unmounted drive usually leaves an empty mount point behind.
            plan.held += len(gone)
            plan.warnings.append(
                f"{folder} is empty: it looks unmounted, so its {len(gone)} stored files are "
                "kept (sync with prune_empty, --prune-empty, if they were really deleted)"
            )
            continue
        skip = [os.path.relpath(u, root_dir) for u in unreadable]
        for rel, k in gone.items():
            if _held_back(rel, skip):
                plan.held += 1
            else:
                plan.removed[k.id] = root_dir / rel
        for u in unreadable:
            plan.warnings.append(f"cannot read {u}: stored files under it are kept")
    _find_moves(store, space_id, plan)
    return plan


def _find_moves(store: Reader, space_id: int, plan: Plan) -> None:
    """Turn new files whose bytes equal a vanished stored file into moves of that file.

    Only new files with the size of some stored file are hashed. A source qualifies when a
    scan saw it gone, or when its file is missing while its root folder is present (a file
    moved in from a root not scanned in this run); a source on an absent root is never
    taken, since that root may only be unmounted.
    """
    if all(job.known for job in plan.jobs):
        return
    sizes = store.stored_sizes()
    hashed: dict[int, str] = {}
    for i, job in enumerate(plan.jobs):
        if not job.known and job.info.size in sizes:
            try:
                hashed[i] = hash_file(job.info.path)
            except OSError:
                continue  # decoding will record why it cannot be read
    copies = store.copies(hashed.values(), space_id)
    taken: set[int] = set()
    moved_jobs: set[int] = set()
    for i, digest in hashed.items():
        for source in copies.get(digest, []):
            if source.id in taken:
                continue
            vanished = source.id in plan.removed or (
                not os.path.lexists(source.path) and not _is_empty_folder(source.root)
            )
            if not vanished:
                continue
            job = plan.jobs[i]
            taken.add(source.id)
            plan.removed.pop(source.id, None)
            plan.moves.append(
                (
                    source.path,
                    job.info.path,
                    Move(source.id, job.root_id, job.relpath, job.info.size, job.info.mtime_ns),
                )
            )
            if source.has_vector or source.status == FAILED:
                moved_jobs.add(i)
            else:  # moved, but not yet embedded in this space
                plan.jobs[i] = Job(job.root_id, job.relpath, job.info, is_update=False)
            break
    plan.jobs = [job for i, job in enumerate(plan.jobs) if i not in moved_jobs]


def plan_report(
    store: Reader,
    space: tuple[int, str, str],
    paths: Iterable[str | os.PathLike[str]],
    *,
    retry_failed: bool = False,
    prune_empty: bool = False,
) -> IndexReport:
    """What a sync of ``paths`` into ``space`` (id, fingerprint, label) would do, as a
    dry-run report listing every change. Reads only: no model is loaded, nothing is written."""
    started = time.perf_counter()
    plan = make_plan(
        store, space[0], paths, dry_run=True, retry_failed=retry_failed, prune_empty=prune_empty
    )
    report = start_report(space[1], space[2], plan, dry_run=True)
    for job in plan.jobs:
        report.changes.append(("update" if job.is_update else "add", str(job.info.path)))
        if job.is_update:
            report.updated += 1
        else:
            report.added += 1
    report.changes.extend(("remove", str(path)) for path in plan.removed.values())
    report.removed = len(plan.removed)
    report.seconds = time.perf_counter() - started
    return report


def start_report(fingerprint: str, label: str, plan: Plan, *, dry_run: bool = False) -> IndexReport:
    """A report holding what the plan alone says (unchanged, moved, held, missing, warnings)."""
    report = IndexReport(space=fingerprint, label=label, dry_run=dry_run)
    report.unchanged, report.missing, report.held = plan.unchanged, plan.missing, plan.held
    report.warnings = plan.warnings
    report.moved = len(plan.moves)
    report.changes.extend(("move", f"{old} -> {new}") for old, new, _ in plan.moves)
    return report
