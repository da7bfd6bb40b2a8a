"""The library database: migrations, version refusal, pragmas, vector storage."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL

from featx_search import Library, LibraryError, LibraryVersionError, Query, schema_status
from featx_search.migrate import alembic_config, alembic_head
from featx_search.schema import HEAD_REVISION, metadata
from featx_search.store import Store
from tests.support import TINY, TINY_ARGS, run_cli


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


def test_migrations_agree_with_models(library_db: str) -> None:
    store = Store.open(library_db)
    try:
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == []
        cfg = alembic_config(store.engine.url)
        command.check(cfg)  # raises when autogenerate would write a new revision
    finally:
        store.close()


def _tables(url: URL) -> set[str]:
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_downgrade_step_by_step_to_base_and_back(library_db: str) -> None:
    """Every migration's downgrade runs on both back ends, one revision at a time: the
    revisions that made a table (0006 copy_views, 0005 claims) drop it, and at base no table
    of the schema is left."""
    made = {"8110f08c8ae4": "copy_views", "c6a1bdbb1052": "claims"}
    store = Store.open(library_db)
    url = store.engine.url
    store.close()
    cfg = alembic_config(url)
    assert set(metadata.tables) <= _tables(url)
    walked = []
    for revision in ScriptDirectory.from_config(cfg).walk_revisions():  # newest first
        assert schema_status(library_db).current == revision.revision
        command.downgrade(cfg, "-1")
        walked.append(revision.revision)
        if revision.revision in made:
            assert made[revision.revision] not in _tables(url) and "images" in _tables(url)
    assert walked[0] == HEAD_REVISION and set(made) <= set(walked)
    assert _tables(url) & set(metadata.tables) == set()
    status = schema_status(library_db)
    assert status.current is None and not status.up_to_date
    Store.open(library_db).close()
    assert schema_status(library_db).up_to_date
    assert set(metadata.tables) <= _tables(url)


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


def test_reader_reads_back_what_the_store_wrote(tmp_path: Path, library_db: str) -> None:
    """A Reader (sqlite3 and the SQL compiled in sql_sqlite.py, or on a server the Core
    statements) and the Store (SQLAlchemy Core on its engine) read back alike what the Store
    wrote: paths that are not UTF-8, dates, blobs, flags and id lists longer than SQLite's
    limit of bound variables survive the crossing."""
    from datetime import datetime

    from featx_search import reader
    from featx_search.config import ExtractorSpec, Preprocess, SpaceSpec
    from featx_search.records import FileResult

    store = Store.open(library_db)
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

        read = reader.Reader.open(store.location)
        assert read is not None
        try:
            for each in (read, store):
                assert [r.fingerprint for r in each.spaces()] == [spec.fingerprint]
                assert each.spaces()[0].count == len(names)
                ids = sorted(added)
                many = [*ids[::-1], *range(10**6, 10**6 + 40_000)]  # > 32766 variables
                generation, got_ids, got = each.vectors(space.id, many)
                assert got_ids.tolist() == ids and generation == each.space(space.id).generation
                np.testing.assert_array_equal(got, vectors)
                np.testing.assert_array_equal(each.vector_ids(space.id), ids)
                paths = each.paths(many)
                assert [paths[i] for i in ids] == [str(root / n) for n in names]
                odd = root / names[-1]
                assert each.image_id(odd) == ids[-1] and each.image_id(root / "nope.jpg") is None
                facts = each.image_facts(space.id, ids[2:])
                assert [f.id for f in facts] == ids[2:]
                assert facts[-1].taken_at == taken and facts[0].taken_at is None
                assert facts[-1].path == str(odd) and facts[-1].mtime_ns == 10**18 + 6
                assert [f.id for f in each.image_facts(None)] == [*ids, max(ids) + 1]
                assert each.image_counts() == {"indexed": len(names), "failed": 1}
                assert each.failures() == [(str(root / "broken.jpg"), "not an image")]
                assert each.find_root(root / "sub") == (root_id, root)
                assert each.integrity_problems() == []
                known = each.known_files(root_id, "", space.id)
                assert known[names[-1]].has_vector is True
                assert known["broken.jpg"] == reader.KnownFile(max(ids) + 1, 1, 1, "failed", False)
                copies = each.copies([f"{6:064x}", "f" * 64], space.id)
                assert list(copies) == [f"{6:064x}"]
                assert copies[f"{6:064x}"][0].path == odd and copies[f"{6:064x}"][0].has_vector
                assert each.stored_sizes() == {1, *range(100, 100 + len(names))}
                assert each.transform(space.id) is None and each.manifest(space.id) is None
        finally:
            read.close()
    finally:
        store.close()


def test_library_at_an_older_revision_is_migrated_on_open(library_db: str) -> None:
    from featx_search.reader import Reader

    db = library_db
    store = Store.open(db)
    url = store.engine.url
    store.close()
    command.downgrade(alembic_config(url), "-1")
    assert Reader.open(db) is None  # the Alembic-free path only serves the newest schema
    with Library.open(db) as lib:
        assert lib.info().revision == Store.head_revision()
    reader = Reader.open(db)
    assert reader is not None
    reader.close()


# -- any path a file system allows ----------------------------------------------------------

# "%" broke Alembic's config interpolation; "%25" and "%(x)s" are what an escaped URL or a
# config value would look like; the rest are spaces and names that are not ASCII.
ODD_FOLDERS = ["pct 100%", "50%25 off %(x)s", "with  spaces ", "naïve 写真 ü"]


def _first_photo(photos: Path) -> Path:
    return sorted(photos.rglob("*.jpg"))[0]


@pytest.mark.parametrize("folder", ODD_FOLDERS)
def test_any_path_works_as_a_library_path(tmp_path: Path, photos: Path, folder: str) -> None:
    from featx_search.connect import database_url

    db = tmp_path / folder / f"{folder}.db"
    with Library.open(db) as lib:
        assert lib.path == db
        assert lib.index([photos], TINY).added == 12
    # An older revision is migrated on open: Alembic runs on a path with these characters.
    command.downgrade(alembic_config(database_url(db)), "-1")
    assert not schema_status(db).up_to_date
    photo = _first_photo(photos)
    with Library.open(db) as lib:
        assert lib.info().revision == HEAD_REVISION
        hit = lib.search(photo, Query(k=1))[0]
        assert hit.path == str(photo)
        assert lib.similar(hit.image_id, Query(k=1))[0].image_id == hit.image_id
    with Library.open(db) as lib:  # the Alembic-free reader
        assert lib.similar(photo, Query(k=1))[0].path == str(photo)
    assert schema_status(db).up_to_date


def test_a_leading_tilde_is_the_home_folder(
    tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    with Library.open("~/my libs/lib.db") as lib:
        assert lib.path == home / "my libs" / "lib.db"
        lib.index([photos], TINY)
    assert (home / "my libs" / "lib.db").is_file()
    with Library.open(Path("~/my libs/lib.db"), create=False) as lib:
        photo = _first_photo(photos)
        assert lib.search(photo, Query(k=1))[0].path == str(photo)


@pytest.mark.parametrize("folder", ["pct 100%", "naïve 写真", "~"])
def test_cli_takes_any_library_path(
    tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch, folder: str
) -> None:
    import json

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    db = "~/lib/lib.db" if folder == "~" else str(tmp_path / folder / "lib.db")
    where = tmp_path / "home" / "lib" / "lib.db" if folder == "~" else Path(db)

    def run(*args: str | Path) -> str:
        return run_cli(*args, env={"FEATX_DB": db}).stdout

    run("index", photos, *TINY_ARGS)
    assert where.is_file()
    photo = _first_photo(photos)
    assert json.loads(run("search", photo, "-k", "1", "--json"))["path"] == str(photo)
    assert json.loads(run("info", "--json"))["path"] == str(where)
    run("--db", db, "similar", photo, "-k", "2")


def test_cli_process_creates_a_library_under_a_percent_path(tmp_path: Path, photos: Path) -> None:
    """The reported failure, as reported: FEATX_DB='/tmp/pct 100%/lib.db' featx-search index."""
    import os
    import subprocess
    import sys

    db = tmp_path / "pct 100%" / "lib.db"
    env = {**os.environ, "FEATX_DB": str(db)}
    args = [sys.executable, "-m", "featx_search", "index", str(photos / "a"), *TINY_ARGS]
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "indexed 6" in done.stdout
    assert schema_status(db).up_to_date


# -- read-only libraries --------------------------------------------------------------------


def _snapshot(db: Path) -> dict[str, bytes]:
    """Every file of a library (database, WAL files, index files) and its bytes."""
    files = [p for p in db.parent.rglob("*") if p.is_file()]
    return {str(p.relative_to(db.parent)): p.read_bytes() for p in sorted(files)}


def _read_only_checks(lib: Library, db: Path, photos: Path) -> None:
    """Queries answer; every write raises ReadOnlyError naming the library."""
    from featx_search import ExtractorSpec
    from featx_search.errors import ReadOnlyError

    photo = _first_photo(photos)
    assert lib.search(photo, Query(k=1))[0].path == str(photo)
    assert lib.similar(photo, Query(k=2))[0].path == str(photo)
    assert lib.duplicates(0.9999) == [] and lib.duplicates(exact=True) == []
    info = lib.info()
    assert info.revision == HEAD_REVISION and info.images == {"indexed": 12}
    assert lib.check().ok
    assert lib.plan([photos]).unchanged == 12  # a dry run only reads
    assert schema_status(db).up_to_date
    space = lib.space()
    writes = [
        lambda: lib.index([photos]),
        lambda: lib.index([photos], TINY),
        lambda: lib.create_space(ExtractorSpec(model="tests.models:tiny_cnn", weights="none")),
        lambda: lib.remove([photo]),
        lambda: space.whiten(0),
        lambda: space.rebuild(),
        lambda: space.configure_index("Flat"),
    ]
    for write in writes:
        with pytest.raises(ReadOnlyError, match="read-only") as err:
            write()
        assert str(db) in str(err.value) and err.value.hint
    assert lib.search(photo, Query(k=1))[0].path == str(photo)  # still answering


@pytest.fixture
def whitened(tmp_path: Path, photos: Path) -> Path:
    """A library of the 12 photos with PCA-whitening and a stale index file (so a query
    rebuilds the index in memory, which must not be written back)."""
    from sqlalchemy import update

    from featx_search.schema import spaces

    db = tmp_path / "lib" / "lib.db"
    with Library.open(db) as lib:
        lib.index([photos], TINY)
        lib.space().whiten(4)
        store = lib._stores.writer()
        with store.transaction() as conn:
            conn.execute(update(spaces).values(generation=spaces.c.generation + 1))
    return db


def test_read_only_storage_answers_queries(
    whitened: Path, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage this process may not write (as root, chmod cannot show it: the check that
    decides is made to say "not writable", as it does on a read-only mount)."""
    from featx_search import connect

    before = _snapshot(whitened)
    monkeypatch.setattr(connect, "_may_write", lambda path: False)
    with Library.open(whitened) as lib:
        assert lib._store.read_only
        # Neither -wal nor -shm can be made beside the file: SQLite reads it as immutable.
        assert lib._store.uri.endswith("?immutable=1")
        assert lib.space().whitening() is not None
        _read_only_checks(lib, whitened, photos)
    assert _snapshot(whitened) == before


def test_open_read_only_on_purpose(whitened: Path, photos: Path) -> None:
    from featx_search.errors import ReadOnlyError

    before = _snapshot(whitened)
    with Library.open(whitened, read_only=True) as lib:
        assert lib._store.uri.endswith("?mode=ro")
        _read_only_checks(lib, whitened, photos)
        with pytest.raises(ReadOnlyError, match="opened read-only"):
            lib.index([photos])
    assert _snapshot(whitened).keys() >= before.keys()
    assert {k: v for k, v in _snapshot(whitened).items() if k in before} == before
    with pytest.raises(LibraryError, match="no library at"):
        Library.open(whitened.with_name("missing.db"), read_only=True)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="permission bits do not stop root (the test above covers the decision)",
)
def test_read_only_folder_and_file_for_real(whitened: Path, photos: Path) -> None:

    before = _snapshot(whitened)
    folders = [whitened.parent, whitened.with_name(whitened.name + ".indexes")]
    whitened.chmod(0o444)
    for folder in folders:
        folder.chmod(0o555)
    try:
        with Library.open(whitened) as lib:
            assert lib._store.read_only
            _read_only_checks(lib, whitened, photos)
    finally:
        for folder in folders:
            folder.chmod(0o755)
        whitened.chmod(0o644)
    assert _snapshot(whitened) == before


def test_read_only_library_that_needs_migrating_says_so(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featx_search import connect
    from featx_search.errors import ReadOnlyError

    Store.open(db).close()
    command.downgrade(alembic_config(f"sqlite:///{db}"), "-1")
    monkeypatch.setattr(connect, "_may_write", lambda path: False)
    with pytest.raises(ReadOnlyError, match="needs migrating") as err:
        Library.open(db)
    assert str(db) in str(err.value)
    with pytest.raises(ReadOnlyError, match="read-only"):
        Library.open(db.with_name("new.db"))  # nothing can be created there either
    assert not db.with_name("new.db").exists()
