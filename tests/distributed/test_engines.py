"""Same vectors everywhere: the local engine, the Ray engine and the shards route (local and
Ray) store the same vectors and failures for the same files; ingest is idempotent, remaps
paths and refuses another space's shards; the Ray engine stops after a batch and resumes,
and refuses workers that would change the vectors; a missing Ray gives one clear error."""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from featx_search import Library, SyncOptions
from featx_search.errors import SpaceError
from featx_search.plan import Job
from featx_search.scan import scan
from tests.support import TINY, TINY_ARGS, make_photo, run_cli

# Ray warns about its own deprecated settings while it runs (not ours to fix).
pytestmark = pytest.mark.filterwarnings(r"ignore::DeprecationWarning:ray\..*")


def _stored(db: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Vectors by path, and failures by path, of a library's one space."""
    with Library.open(db) as lib:
        space = lib.space()
        _, ids, vectors = space.vectors()
        paths = {f.id: f.path for f in space.image_facts()}
        failures = dict(lib.failures())
    return {paths[i]: v for i, v in zip(ids.tolist(), vectors, strict=True)}, failures


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for path in a:
        np.testing.assert_allclose(a[path], b[path], atol=1e-5, err_msg=path)


@pytest.fixture
def with_bad(photos: Path) -> Path:
    (photos / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    return photos


def test_ray_engine_and_shards_store_the_local_vectors(
    ray_local: ModuleType, with_bad: Path, tmp_path: Path
) -> None:
    local, ray_db, shard_db = (tmp_path / f"{n}.db" for n in ("local", "ray", "shards"))
    run_cli("--db", local, "index", with_bad, *TINY_ARGS, "-q")
    result = run_cli(
        "--db",
        ray_db,
        "index",
        with_bad,
        *TINY_ARGS,
        "--engine",
        "ray",
        "--batch-size",
        "4",
        "--json",
    )
    report = json.loads(result.stdout)
    assert (report["added"], report["failed"]) == (12, 1)
    shards = tmp_path / "shards"
    run_cli("embed", with_bad, *TINY_ARGS, "--engine", "ray", "--out", shards, "-q")
    run_cli("--db", shard_db, "ingest", shards, "-q")

    expected, failed = _stored(local)
    assert len(expected) == 12 and list(failed) == [str(with_bad / "a" / "broken.jpg")]
    for db in (ray_db, shard_db):
        vectors, failures = _stored(db)
        _same(vectors, expected)
        assert failures == failed
    # A second Ray run has nothing to embed; the Ray engine leaves the Ray it found running.
    again = json.loads(
        run_cli("--db", ray_db, "index", with_bad, "--engine", "ray", "--json").stdout
    )
    assert (again["added"], again["unchanged"]) == (0, 13)
    assert ray_local.is_initialized()


def test_local_shards_ingest_idempotent_and_remapped(
    parquet: ModuleType, with_bad: Path, tmp_path: Path
) -> None:
    make_photo(with_bad / "top.jpg", seed=40)
    make_photo(with_bad / "b" / "deeper" / "inner.jpg", seed=41)
    shards, db = tmp_path / "shards", tmp_path / "lib.db"
    run_cli("embed", with_bad, *TINY_ARGS, "--out", shards, "-q")
    # Embedding again into the same folder adds nothing: its files are there already.
    again = json.loads(run_cli("embed", with_bad, *TINY_ARGS, "--out", shards, "--json").stdout)
    assert (again["added"], again["unchanged"]) == (0, 15)
    assert len(list(shards.glob("part-*.parquet"))) == 1

    # Rows come in any order (the Ray engine's): files of inner folders first here.
    (shard,) = shards.glob("part-*.parquet")
    table = parquet.read_table(shard)
    parquet.write_table(table.take(list(reversed(range(table.num_rows)))), shard)

    elsewhere = tmp_path / "mounted" / "Pictures"
    mapping = f"{with_bad}={elsewhere}"
    first = json.loads(run_cli("--db", db, "ingest", shards, "--map", mapping, "--json").stdout)
    assert (first["added"], first["failed"]) == (14, 1)
    with Library.open(db) as lib:
        generation = lib.space().generation
    second = json.loads(run_cli("--db", db, "ingest", shards, "--map", mapping, "--json").stdout)
    assert (second["added"], second["updated"], second["unchanged"]) == (0, 0, 15)
    with Library.open(db) as lib:
        assert lib.space().generation == generation

    local = tmp_path / "local.db"
    run_cli("--db", local, "index", with_bad, *TINY_ARGS, "-q")
    expected, failed = _stored(local)
    vectors, failures = _stored(db)

    def mapped(path: str) -> str:
        return path.replace(str(with_bad), str(elsewhere), 1)

    _same(vectors, {mapped(p): v for p, v in expected.items()})
    assert sorted(failures) == [mapped(p) for p in failed]
    assert run_cli("--db", db, "db", "check").stdout.strip() == "ok"
    # Searching the ingested library from a stored vector works (the index was published).
    found = run_cli("--db", db, "similar", mapped(sorted(expected)[0]), "-k", "3").stdout
    assert str(elsewhere) in found


def test_ingest_refuses_another_space(parquet: ModuleType, photos: Path, tmp_path: Path) -> None:
    db, shards = tmp_path / "lib.db", tmp_path / "shards"
    run_cli("--db", db, "index", photos, *TINY_ARGS, "-q")
    run_cli("embed", photos / "a", *TINY_ARGS, "--pool", "max", "--out", shards, "-q")
    with Library.open(db) as lib:
        ours = lib.space().fingerprint
    theirs = json.loads((shards / "manifest.json").read_text())["fingerprint"]
    assert ours != theirs
    result = run_cli("--db", db, "ingest", shards, ok=False)
    assert result.exit_code != 0
    assert ours in result.output and theirs in result.output
    # Given on purpose, the shards' space is added beside the library's.
    run_cli("--db", db, "ingest", shards, "--new-space", "-q")
    with Library.open(db) as lib:
        assert sorted(s.fingerprint for s in lib.spaces()) == sorted([ours, theirs])
    # embed refuses to mix spaces in one folder too.
    mixed = run_cli("embed", photos / "a", *TINY_ARGS, "--out", shards, ok=False)
    assert mixed.exit_code != 0 and "--out" in mixed.output and theirs in mixed.output


def test_missing_ray_is_one_clear_error(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    monkeypatch.delitem(sys.modules, "featx_search.distributed", raising=False)
    result = run_cli("--db", tmp_path / "x.db", "index", photos, "--engine", "ray", ok=False)
    assert result.exit_code == 2 or result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[0].startswith("Error: --engine 'ray' needs Ray Data"), result.output
    assert "pip install 'featx-search[ray]'" in result.output
    assert not (tmp_path / "x.db").exists()


def test_ray_address_needs_the_ray_engine(photos: Path, tmp_path: Path) -> None:
    result = run_cli("--db", tmp_path / "x.db", "index", photos, "--ray-address", "auto", ok=False)
    assert result.exit_code == 2 and "--ray-address" in result.output


def test_ray_engine_stops_after_a_batch_and_the_next_sync_resumes(
    ray_local: ModuleType, photos: Path, library: Library
) -> None:
    from featx_search.distributed import RayEngine

    space = library.create_space(TINY)
    stop = threading.Event()
    stop.set()  # as Ctrl-C does: the batch that comes back is committed, then the run ends
    options = SyncOptions(batch_size=4)
    first = space.sync([photos], options, engine=RayEngine(), stop=stop)
    assert first.interrupted and first.added == 4 and first.remaining == 8
    assert space.count == 4
    second = space.sync([photos], options, engine=RayEngine())
    assert (second.added, second.unchanged, second.interrupted) == (8, 4, False)
    assert space.count == 12


def test_a_worker_that_would_change_the_vectors_is_refused(
    ray_local: ModuleType, photos: Path, library: Library
) -> None:
    from featx_search.distributed import RayEngine

    space = library.create_space(TINY)
    elsewhere = replace(space.record.spec, torch_version="0.0")  # as if the driver had it
    jobs = [Job(0, str(info.path), info, is_update=False) for info in scan(photos)]
    with pytest.raises(SpaceError, match="cannot be reproduced"):
        list(RayEngine()(jobs, elsewhere, SyncOptions(batch_size=4), threading.Event()))
