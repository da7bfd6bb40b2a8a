"""Richer queries: filters, -k with filters, --threshold, --exclude-self and --combine, each
checked against a brute-force reference computed from the stored vectors with numpy."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featx_search import ConfigError, Filters, ImageError, Library, Match, Query, parse_date
from featx_search.store import Store
from tests.support import TINY, is_server, make_photo, pg_database

N = 24


@dataclass
class Corpus:
    db: str  # a SQLite file's path or a PostgreSQL database's URL
    root: Path
    ids: np.ndarray  # stored image ids, ascending
    vectors: np.ndarray  # their stored vectors
    paths: dict[int, str]
    dates: dict[str, datetime]  # path -> the date planted (EXIF taken, else mtime)


def _plant(root: Path) -> dict[str, datetime]:
    """24 photos in a/, b/ and b/c/; every third JPEG says when it was taken (EXIF), the rest
    carry only a file time, spread over 2019-2022."""
    dates: dict[str, datetime] = {}
    for i in range(N):
        folder = ("a", "b", "b/c")[i % 3]
        ext = ".png" if i % 4 == 0 else ".jpg"
        path = make_photo(root / folder / f"img{i:02d}{ext}", seed=200 + i)
        mtime = datetime(2019 + i % 4, 1 + i % 12, 1 + i, 12, 0, 0)
        if ext == ".jpg" and i % 3 == 1:
            taken = datetime(2018, 1 + i % 12, 10, 8, 30, 0)
            exif = Image.Exif()
            exif.get_ifd(0x8769)[0x9003] = taken.strftime("%Y:%m:%d %H:%M:%S")
            with Image.open(path) as img:
                img.load()
                img.save(path, exif=exif)
            dates[str(path)] = taken
        else:
            dates[str(path)] = mtime
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return dates


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def corpus(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Corpus]:
    """The same 24 photos indexed into a SQLite library, then into a PostgreSQL one."""
    base = tmp_path_factory.mktemp("query")
    if request.param == "sqlite":
        yield from _corpus(base, str(base / "lib.db"))
        return
    server: str = request.getfixturevalue("pg_server")
    with pytest.MonkeyPatch.context() as patch, pg_database(server) as url:
        patch.setenv("XDG_CACHE_HOME", str(base / "cache"))
        yield from _corpus(base, url)


def _corpus(base: Path, db: str) -> Iterator[Corpus]:
    root = base / "photos"
    dates = _plant(root)
    with Library.open(db) as lib:
        lib.index([root], TINY)
    store = Store.open(db)
    try:
        space = store.spaces()[0].id
        _, ids, vectors = store.vectors(space)
        paths = store.paths(ids.tolist())
    finally:
        store.close()
    yield Corpus(
        db,
        root.resolve(),
        ids,
        vectors,
        paths,
        {str(Path(p).resolve()): d for p, d in dates.items()},
    )


@pytest.fixture
def lib(corpus: Corpus) -> Iterator[Library]:
    with Library.open(corpus.db, create=False) as library:
        yield library


def reference(
    corpus: Corpus,
    query: np.ndarray,
    allowed: Callable[[str], bool],
    exclude: frozenset[int] = frozenset(),
) -> list[tuple[int, float]]:
    """Every allowed image, best first: (id, score) by a plain matrix product."""
    scores = corpus.vectors @ query
    rows = [
        (int(i), float(s))
        for i, s in zip(corpus.ids, scores, strict=True)
        if allowed(corpus.paths[int(i)]) and int(i) not in exclude
    ]
    return sorted(rows, key=lambda r: -r[1])


def assert_top_k(matches: list[Match], ref: list[tuple[int, float]], k: int) -> None:
    """Same scores as the reference's top k (ties may swap ids), each match allowed, ranks 1..n."""
    want = ref[:k]
    assert len(matches) == len(want)
    assert [m.rank for m in matches] == list(range(1, len(want) + 1))
    np.testing.assert_allclose([m.score for m in matches], [s for _, s in want], atol=1e-5)
    ref_score = dict(ref)
    for m in matches:
        assert m.image_id in ref_score, f"{m.path} should have been filtered out"
        assert abs(ref_score[m.image_id] - m.score) < 1e-5


def _id(corpus: Corpus, rel: str) -> int:
    path = str(corpus.root / rel)
    return next(i for i, p in corpus.paths.items() if p == path)


def _vector(corpus: Corpus, image_id: int) -> np.ndarray:
    row: np.ndarray = corpus.vectors[int(np.searchsorted(corpus.ids, image_id))]
    return row


def _is_img1x_jpg(name: str) -> bool:
    return (
        len(name) == 9 and name.startswith("img1") and name[4].isdigit() and name.endswith(".jpg")
    )


FILTER_CASES: list[tuple[str, dict[str, str], Callable[[Corpus, str], bool]]] = [
    ("under", {"under": "b"}, lambda c, p: Path(p).is_relative_to(c.root / "b")),
    ("under-nested", {"under": "b/c"}, lambda c, p: Path(p).parent == c.root / "b" / "c"),
    ("glob-name", {"glob": "*.png"}, lambda c, p: p.endswith(".png")),
    ("glob-chars", {"glob": "img1?.jpg"}, lambda c, p: _is_img1x_jpg(Path(p).name)),
    ("glob-path", {"glob": "*/a/*"}, lambda c, p: Path(p).parent.name == "a"),
    ("after", {"after": "2021-01-01"}, lambda c, p: c.dates[p] >= datetime(2021, 1, 1)),
    ("before", {"before": "2020-06"}, lambda c, p: c.dates[p] < datetime(2020, 6, 1)),
    (
        "window+under",
        {"after": "2018", "before": "2021-03-15", "under": "a"},
        lambda c, p: (
            datetime(2018, 1, 1) <= c.dates[p] < datetime(2021, 3, 15)
            and Path(p).parent.name == "a"
        ),
    ),
]


def _filters(corpus: Corpus, raw: dict[str, str]) -> Filters:
    return Filters(
        under=str(corpus.root / raw["under"]) if "under" in raw else None,
        glob=raw.get("glob"),
        after=parse_date(raw["after"]) if "after" in raw else None,
        before=parse_date(raw["before"]) if "before" in raw else None,
    )


@pytest.mark.parametrize(("name", "raw", "keep"), FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
def test_each_filter_matches_brute_force(
    corpus: Corpus,
    lib: Library,
    name: str,
    raw: dict[str, str],
    keep: Callable[[Corpus, str], bool],
) -> None:
    passing = [p for p in corpus.paths.values() if keep(corpus, p)]
    assert 0 < len(passing) < N, f"{name}: the planted corpus should split ({len(passing)})"
    query_id = _id(corpus, "a/img03.jpg")
    for k in (3, N):
        matches = lib.similar(query_id, Query(k=k, filters=_filters(corpus, raw)))
        ref = reference(corpus, _vector(corpus, query_id), lambda p: keep(corpus, p))
        assert_top_k(matches, ref, k)
    # k larger than what passes: every passing image, none other
    assert {
        m.path for m in lib.similar(query_id, Query(k=N, filters=_filters(corpus, raw)))
    } == set(passing)


def test_k_with_a_filter_still_fills_k(corpus: Corpus, lib: Library) -> None:
    query_id = _id(corpus, "a/img00.png")
    in_c = lambda p: Path(p).parent == corpus.root / "b" / "c"  # noqa: E731
    overall = reference(corpus, _vector(corpus, query_id), lambda p: True)
    # Fetching the 5 best and dropping the others would come up short here:
    assert sum(in_c(corpus.paths[i]) for i, _ in overall[:5]) < 5
    matches = lib.similar(query_id, Query(k=5, filters=Filters(under=str(corpus.root / "b" / "c"))))
    assert len(matches) == 5 and all(in_c(m.path) for m in matches)
    assert_top_k(matches, reference(corpus, _vector(corpus, query_id), in_c), 5)


def test_index_selector_searches_only_the_given_ids() -> None:
    from featx_search.ann.index import VectorIndex

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1000, 1200, dtype=np.int64)
    index = VectorIndex.build(16, ids, vectors)
    allowed = np.sort(rng.choice(ids, 30, replace=False))
    scores, found = index.search(vectors[:3], 10, selector=allowed)
    for row in range(3):
        ref = vectors[np.isin(ids, allowed)] @ vectors[row]
        np.testing.assert_allclose(scores[row], np.sort(ref)[::-1][:10], atol=1e-5)
        assert set(found[row]) <= set(allowed)
    assert index.search(vectors[:1], 50, selector=allowed[:4])[1].shape == (1, 4)


def test_threshold_keeps_exactly_the_scores_above(corpus: Corpus, lib: Library) -> None:
    query_id = _id(corpus, "b/img01.jpg")
    ref = reference(corpus, _vector(corpus, query_id), lambda p: True)
    cut = (ref[6][1] + ref[7][1]) / 2  # between the 7th and 8th best
    matches = lib.similar(query_id, Query(k=N, threshold=cut))
    assert [m.image_id for m in matches] == [i for i, s in ref if s >= cut]
    assert len(matches) == 7
    assert lib.similar(query_id, Query(k=3, threshold=cut)) == matches[:3]


def test_exclude_self_and_combine(corpus: Corpus, lib: Library) -> None:
    a, b = _id(corpus, "a/img03.jpg"), _id(corpus, "b/c/img05.jpg")
    alone = lib.similar(a, Query(k=4, exclude_self=True))
    assert a not in {m.image_id for m in alone}
    assert_top_k(alone, reference(corpus, _vector(corpus, a), lambda p: True, frozenset({a})), 4)

    separate = lib.similar([a, b], Query(k=3))
    assert [rows[0].image_id for rows in separate] == [a, b]

    [combined] = lib.similar([a, b], Query(k=5, exclude_self=True, combine=True))
    mean = _vector(corpus, a) + _vector(corpus, b)
    mean /= np.linalg.norm(mean)
    assert_top_k(combined, reference(corpus, mean, lambda p: True, frozenset({a, b})), 5)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_query_expansion_searches_again_with_the_first_results_mixed_in(
    corpus: Corpus, lib: Library, exclude_self: bool
) -> None:
    query_id = _id(corpus, "a/img06.jpg")
    own = _vector(corpus, query_id)
    first = reference(corpus, own, lambda p: True, frozenset({query_id}))[:2]
    mixed = own.astype(np.float64).copy()
    for image_id, score in first:  # alpha-QE: each neighbour weighs its score cubed
        mixed += max(score, 0) ** 3 * _vector(corpus, image_id)
    mixed /= np.linalg.norm(mixed)
    kept = frozenset({query_id}) if exclude_self else frozenset()
    expected = reference(corpus, mixed.astype(np.float32), lambda p: True, kept)
    matches = lib.similar(query_id, Query(k=6, expand=2, exclude_self=exclude_self))
    assert_top_k(matches, expected, 6)
    plain = lib.similar(query_id, Query(k=6, exclude_self=exclude_self))
    assert [m.score for m in plain] != pytest.approx([m.score for m in matches])
    with pytest.raises(ConfigError, match="expand"):
        Query(expand=-1)


@pytest.mark.parametrize("under", [None, "a"])
def test_database_side_augmentation_scores_results_mixed_with_their_neighbours(
    corpus: Corpus, lib: Library, under: str | None
) -> None:
    query_id = _id(corpus, "a/img06.jpg")
    own = _vector(corpus, query_id)

    def augmented(image_id: int) -> np.ndarray:
        # its 2 nearest stored images, any folder, neither itself nor the query image
        around = reference(corpus, _vector(corpus, image_id), lambda p: True)
        around = [(i, s) for i, s in around if i not in (image_id, query_id)][:2]
        mixed = _vector(corpus, image_id).astype(np.float64)
        for i, s in around:  # each neighbour weighs its score cubed, as alpha-QE does
            mixed += max(s, 0) ** 3 * _vector(corpus, i)
        return mixed / np.linalg.norm(mixed)

    def allowed(path: str) -> bool:
        return under is None or Path(path).is_relative_to(corpus.root / under)

    expected = sorted(
        (
            (int(i), float(augmented(int(i)) @ own))
            for i in corpus.ids
            if int(i) != query_id and allowed(corpus.paths[int(i)])
        ),
        key=lambda pair: -pair[1],
    )
    filters = Filters(under=str(corpus.root / under)) if under else Filters()
    matches = lib.similar(query_id, Query(k=6, augment=2, exclude_self=True, filters=filters))
    assert_top_k(matches, expected, 6)
    plain = lib.similar(query_id, Query(k=6, exclude_self=True, filters=filters))
    assert [m.score for m in plain] != pytest.approx([m.score for m in matches])
    cut = (expected[2][1] + expected[3][1]) / 2  # the threshold applies to the new scores
    query = Query(k=6, augment=2, exclude_self=True, threshold=cut, filters=filters)
    assert lib.similar(query_id, query) == matches[:3]
    with pytest.raises(ConfigError, match="augment"):
        Query(augment=-1)


def test_search_with_filters_and_exclude_self(corpus: Corpus, lib: Library) -> None:
    query = corpus.root / "b" / "img04.png"
    plain = lib.search(query, Query(k=2))
    assert plain[0].path == str(query) and plain[0].score > 0.999
    filtered = lib.search(query, Query(k=4, filters=Filters(under=str(corpus.root / "a"))))
    assert len(filtered) == 4 and all("/a/" in m.path for m in filtered)
    assert str(query) not in {m.path for m in lib.search(query, Query(k=N, exclude_self=True))}
    [together] = lib.search([query, corpus.root / "a" / "img03.jpg"], Query(k=3, combine=True))
    assert len(together) == 3


def test_a_filter_that_matches_nothing_returns_nothing(lib: Library, corpus: Corpus) -> None:
    assert lib.similar(_id(corpus, "a/img03.jpg"), Query(filters=Filters(glob="*.gif"))) == []


def test_bad_query_arguments_are_clear(lib: Library, corpus: Corpus, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="after 'last week' is not a date") as err:
        parse_date("last week", "after")
    assert err.value.param == "after"
    with pytest.raises(ConfigError, match="is not before"):
        Filters(after=datetime(2022, 1, 1), before=datetime(2021, 1, 1))
    with pytest.raises(ConfigError, match="no such folder"):
        lib.similar(
            _id(corpus, "a/img03.jpg"), Query(filters=Filters(under=str(tmp_path / "nope")))
        )
    with pytest.raises(ConfigError, match="threshold must be") as bad:
        lib.similar(_id(corpus, "a/img03.jpg"), Query(threshold=1.5))
    assert bad.value.param == "threshold"
    with pytest.raises(ImageError, match="image id 999999 is not indexed"):
        lib.similar([_id(corpus, "a/img03.jpg"), 999999])
    assert parse_date("2020-02-03T04:05") == datetime(2020, 2, 3, 4, 5)
    assert parse_date("2020-02") == datetime(2020, 2, 1)


def test_query_options_import_neither_torch_nor_sqlalchemy(corpus: Corpus) -> None:
    if is_server(corpus.db):
        pytest.skip("a server library is read through SQLAlchemy; SQLite's path is the lean one")
    target = str(corpus.root / "a" / "img03.jpg")
    code = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from featx_search.cli import cli\n"
        f"db = {str(corpus.db)!r}\n"
        f"args = ['--db', db, 'similar', {target!r}, '3', '-k', '4', '--json', '--exclude-self',"
        " '--combine', '--threshold', '-1', '--glob', '*.jpg', '--after', '2000-01-01',"
        f" '--under', {str(corpus.root)!r}]\n"
        "r = CliRunner().invoke(cli, args)\n"
        "assert r.exit_code == 0, r.output\n"
        "d = CliRunner().invoke(cli, ['--db', db, 'dups', '--json', '--threshold', '0.999'])\n"
        "assert d.exit_code == 0, d.output\n"
        "print(len(r.stdout.splitlines()), 'torch' in sys.modules,"
        " 'sqlalchemy' in sys.modules or 'alembic' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["4", "False", "False"]
