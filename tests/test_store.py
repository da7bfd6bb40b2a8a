"""The library database: migrations, version refusal, pragmas, vector storage."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from featx_search import LibraryError, LibraryVersionError, Query, schema_status
from featx_search.schema import HEAD_REVISION, metadata
from featx_search.store import Store, _alembic_config, alembic_head


def test_new_library_is_migrated_to_head(db: Path) -> None:
    store = Store.open(db)
    try:
        assert store.current_revision() == Store.head_revision()
        tables = set(
            sqlite3.connect(db)
            .execute("select name from sqlite_master where type='table'")
            .fetchall()
        )
        assert {("images",), ("spaces",), ("vectors",), ("roots",), ("index_manifest",)} <= tables
    finally:
        store.close()


def test_migrations_agree_with_models(db: Path) -> None:
    store = Store.open(db)
    try:
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == []
        cfg = _alembic_config(store.engine.url)
        command.check(cfg)  # raises when autogenerate would write a new revision
    finally:
        store.close()


def test_downgrade_to_base_and_back(db: Path) -> None:
    Store.open(db).close()
    cfg = _alembic_config(f"sqlite:///{db}")
    command.downgrade(cfg, "base")
    names = {
        r[0]
        for r in sqlite3.connect(db).execute("select name from sqlite_master where type='table'")
    }
    assert "images" not in names
    status = schema_status(db)
    assert status.current is None and not status.up_to_date
    Store.open(db).close()
    assert schema_status(db).up_to_date


def test_unknown_revision_is_refused(db: Path) -> None:
    Store.open(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("update alembic_version set version_num = 'ffffffffffff'")
    with pytest.raises(LibraryVersionError, match="newer featx-search"):
        Store.open(db)
    # Refusing must not touch the database.
    with sqlite3.connect(db) as conn:
        assert conn.execute("select version_num from alembic_version").fetchone() == (
            "ffffffffffff",
        )


def test_wal_mode_and_foreign_keys(db: Path) -> None:
    store = Store.open(db)
    try:
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("pragma journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("pragma foreign_keys").scalar() == 1
    finally:
        store.close()


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.db"
    bogus.write_text("this is not sqlite " * 100)
    with pytest.raises(LibraryError, match="not a featx-search library"):
        Store.open(bogus)
    assert bogus.read_text().startswith("this is not sqlite")


def test_folder_as_database_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LibraryError, match="is a folder"):
        Store.open(tmp_path)


def test_vectors_are_float32_blobs(library, photos: Path, db: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import TINY

    library.index([photos], spec=TINY)
    space = library.spaces()[0]
    rows = sqlite3.connect(db).execute("select image_id, data from vectors").fetchall()
    assert len(rows) == 12
    for _image_id, blob in rows:
        assert len(blob) == 4 * space.dim
        vec = np.frombuffer(blob, dtype="<f4")
        assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5
    some = next(p for p in photos.rglob("*.jpg"))
    stored = dict(rows)
    match = library.search(some, Query(k=1))[0]
    np.testing.assert_allclose(
        np.frombuffer(stored[match.image_id], "<f4"), library.embed([some])[0], atol=1e-6
    )


def test_head_revision_constant_matches_the_migrations() -> None:
    assert alembic_head() == HEAD_REVISION, f"set schema.HEAD_REVISION to {alembic_head()!r}"
    assert Store.head_revision() == HEAD_REVISION


def test_reader_reads_back_what_the_store_wrote(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A Reader (its own read-only-capable engine) reads back what a Store wrote: paths that
    are not UTF-8, dates, blobs and long id lists (read in chunks) survive the crossing."""
    from datetime import datetime

    from featx_search import reader
    from featx_search.config import ExtractorSpec, Preprocess, SpaceSpec
    from featx_search.store import FileResult

    monkeypatch.setattr(reader, "_CHUNK", 3)  # several "IN (...)" chunks per call
    store = Store.open(tmp_path / "lib.db")
    try:
        root = tmp_path / "photos"
        root.mkdir()
        spec = SpaceSpec(
            model="m",
            weights="none",
            weights_sha256=None,
            layers=("x",),
            pool="avg",
            preprocess=Preprocess(),
            dim=4,
            torch_version="t",
            torchvision_version="tv",
            request=ExtractorSpec(model="m", weights="none"),
        )
        space = store.ensure_space(spec)
        root_id, _ = store.root_for(root)
        names = [f"img{i}.jpg" for i in range(6)] + [
            b"caf\xe9.jpg".decode("utf-8", "surrogateescape")
        ]
        taken = datetime(2019, 7, 1, 12, 30, 5, 250)
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(len(names), 4)).astype(np.float32)
        results = [
            FileResult(
                root_id,
                name,
                100 + i,
                10**18 + i,
                vector=vectors[i],
                width=40,
                height=30,
                content_hash=f"{i:064x}",
                taken_at=taken if i == 6 else None,
            )
            for i, name in enumerate(names)
        ]
        results.append(FileResult(root_id, "broken.jpg", 1, 1, error="not an image"))
        added, _ = store.write_batch(space.id, results)

        read = reader.Reader.open(store.path)
        assert read is not None
        try:
            assert [r.fingerprint for r in read.spaces()] == [spec.fingerprint]
            assert read.spaces()[0].count == len(names)
            ids = sorted(added)
            generation, got_ids, got = read.vectors(space.id, [*ids[::-1], 999_999])
            assert got_ids.tolist() == ids and generation == read.space(space.id).generation
            np.testing.assert_array_equal(got, vectors)
            np.testing.assert_array_equal(read.vector_ids(space.id), ids)
            paths = read.paths(ids)
            assert [paths[i] for i in ids] == [str(root / n) for n in names]
            odd = root / names[-1]
            assert read.image_id(odd) == ids[-1] and read.image_id(root / "nope.jpg") is None
            facts = read.image_facts(space.id, ids[2:])
            assert [f.id for f in facts] == ids[2:]
            assert facts[-1].taken_at == taken and facts[0].taken_at is None
            assert facts[-1].path == str(odd) and facts[-1].mtime_ns == 10**18 + 6
            assert read.image_counts() == {"indexed": len(names), "failed": 1}
            assert read.failures() == [(str(root / "broken.jpg"), "not an image")]
            assert read.find_root(root / "sub") == (root_id, root)
            assert read.integrity_problems() == []
        finally:
            read.close()
    finally:
        store.close()


def test_library_at_an_older_revision_is_migrated_on_open(db: Path) -> None:
    from featx_search import Library
    from featx_search.reader import Reader

    Store.open(db).close()
    command.downgrade(_alembic_config(f"sqlite:///{db}"), "-1")
    assert Reader.open(db) is None  # the Alembic-free path only serves the newest schema
    with Library.open(db) as lib:
        assert lib.info().revision == Store.head_revision()
    assert Reader.open(db) is not None
