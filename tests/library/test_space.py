"""The Space handle: selectors, cached state, queries by image, id and vector, and threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from featx_search import (
    ConfigError,
    ExtractorSpec,
    ImageError,
    Library,
    Progress,
    Query,
    SpaceError,
    SyncOptions,
)
from tests.support import RESNET18, TINY, make_photo

OTHER = ExtractorSpec(model="tests.models:tiny_cnn", weights="none", layers=("1",))


@pytest.fixture
def two_spaces(library: Library, photos: Path) -> Library:
    library.index([photos], TINY)
    library.index([photos / "a"], OTHER)
    return library


def test_selectors_pick_one_space_by_id_label_or_fingerprint(two_spaces: Library) -> None:
    first, second = two_spaces.spaces()
    assert two_spaces.space() is second  # the newest when there are several
    assert two_spaces.space(first.id) is first
    assert two_spaces.space(first.fingerprint[:6]) is first
    assert two_spaces.space(first.fingerprint[:6].upper()) is first
    assert (first.count, second.count) == (12, 6)
    with pytest.raises(SpaceError, match="matches no space"):
        two_spaces.space("zzzz")
    with pytest.raises(SpaceError, match="matches no space"):
        two_spaces.space(first.id + second.id + 1)


def test_a_library_without_spaces_says_how_to_make_one(library: Library) -> None:
    with pytest.raises(SpaceError, match="has no images yet") as err:
        library.space()
    assert err.value.hint is not None and "index" in err.value.hint


def test_create_space_records_the_index_setting(library: Library, photos: Path) -> None:
    space = library.create_space(TINY, index="Flat")
    assert library.spaces() == [space] and space.count == 0
    space.sync([photos])
    assert space.info().index_spec == "Flat"
    assert library.create_space(TINY) is space  # the same spec names the same space


def test_single_image_gives_one_list_and_a_list_gives_one_per_image(
    library: Library, photos: Path
) -> None:
    library.index([photos], TINY)
    space = library.space()
    query_image = photos / "a" / "img01.jpg"
    single = space.search(query_image, Query(k=3))
    assert single[0].path == str(query_image.resolve())
    rows = space.search([query_image, photos / "b" / "img02.jpg"], Query(k=3))
    assert len(rows) == 2 and [m.path for m in rows[0]] == [m.path for m in single]
    by_path = space.similar(query_image, Query(k=3))
    assert [m.path for m in by_path] == [m.path for m in single]
    by_id = space.similar(single[0].image_id, Query(k=3, exclude_self=True))
    assert single[0].image_id not in {m.image_id for m in by_id} and len(by_id) == 3


def test_search_vectors_takes_embeddings_and_checks_their_shape(
    library: Library, photos: Path
) -> None:
    library.index([photos], TINY)
    space = library.space()
    image = photos / "b" / "img06.png"
    vector = space.embed([image])[0]
    assert vector.shape == (space.dim,)
    [from_vector] = space.search_vectors(vector, Query(k=4))
    assert [m.image_id for m in from_vector] == [
        m.image_id for m in space.search(image, Query(k=4))
    ]
    assert len(space.search_vectors(np.stack([vector, vector]), Query(k=2))) == 2
    with pytest.raises(ConfigError, match=rf"vectors must have shape \(N, {space.dim}\)") as err:
        space.search_vectors(np.zeros((1, space.dim + 1), np.float32))
    assert err.value.param == "vectors"


def test_the_index_is_loaded_once_and_reloaded_when_its_generation_moves(
    library: Library, photos: Path, tmp_path: Path
) -> None:
    library.index([photos], TINY)
    space = library.space()
    index = space.index()
    space.similar(photos / "a" / "img01.jpg")
    assert space.index() is index and space.whitening() is space.whitening()
    generation = space.generation
    extra = make_photo(tmp_path / "more" / "new.jpg", seed=99)
    # Another handle on the same file (as another process would) moves the generation on.
    with Library.open(library.location) as other:
        other.index([tmp_path / "more"], TINY)
    assert space.generation > generation
    assert space.index() is not index and len(space.index()) == 13
    assert space.similar(extra, Query(k=1))[0].path == str(extra.resolve())


def test_plan_loads_no_model_and_writes_nothing(
    library: Library, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    library.index([photos / "a"], TINY)
    (photos / "a" / "img01.jpg").unlink()
    make_photo(photos / "a" / "new.jpg", seed=50)

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("plan loaded a model")

    monkeypatch.setattr("featx_search.extract.load_extractor", no_model)
    monkeypatch.setattr("featx_search.extract.extractor.load_extractor", no_model)
    with Library.open(library.location) as fresh:
        report = fresh.plan([photos / "a"], TINY)
        assert (report.added, report.removed, report.unchanged) == (1, 1, 5)
        above = fresh.plan([photos], TINY)  # a folder above the stored one sees its files
        assert (above.added, above.removed, above.unchanged) == (7, 1, 5)
        assert fresh.space().count == 6
        new_space = fresh.plan([photos], RESNET18)
        assert new_space.added == 12 and len(fresh.spaces()) == 1


def test_remove_by_id_file_and_folder(library: Library, photos: Path) -> None:
    library.index([photos], TINY)
    space = library.space()
    one = space.similar(photos / "a" / "img01.jpg", Query(k=1))[0].image_id
    assert library.remove([one]) == 1
    assert library.remove([photos / "b" / "img02.jpg"]) == 1
    assert library.remove([photos / "a"]) == 5
    assert space.count == 5 and len(space.index()) == 5
    assert photos.joinpath("a", "img03.png").exists()  # files are never touched
    with pytest.raises(ImageError, match="holds no stored image"):
        library.remove([photos / "a"])
    with pytest.raises(ImageError, match="1234567 holds no stored image"):
        library.remove([1234567])


def test_sync_reports_progress_through_one_callback_type(library: Library, photos: Path) -> None:
    seen: list[Progress] = []
    library.index([photos], TINY, options=SyncOptions(batch_size=5), progress=seen.append)
    assert [p.done for p in seen] == [5, 10, 12] and {p.total for p in seen} == {12}
    dup_progress: list[Progress] = []
    library.duplicates(0.99, progress=dup_progress.append)
    assert dup_progress and dup_progress[-1].done == dup_progress[-1].total


def test_options_check_their_values_and_name_the_parameter() -> None:
    for make, param in [
        (lambda: Query(k=0), "k"),
        (lambda: Query(threshold=2.0), "threshold"),
        (lambda: SyncOptions(batch_size=0), "batch_size"),
        (lambda: SyncOptions(workers=0), "workers"),
    ]:
        with pytest.raises(ConfigError) as err:
            make()
        assert err.value.param == param and str(err.value).startswith(param)


def test_cold_library_shared_by_threads_builds_one_extractor(
    library: Library, photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 point 10: 16 first searches on 8 threads, nothing searched before."""
    library.index([photos], RESNET18)
    library.close()
    import featx_search.extract.extractor as extract_module

    real = extract_module.load_extractor
    builds: list[int] = []

    def counting(*args: object, **kwargs: object) -> object:
        builds.append(threading.get_ident())
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(extract_module, "load_extractor", counting)
    with Library.open(library.location) as cold:
        queries = sorted(photos.rglob("*.*"))[:16] * 2
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda p: cold.search(p, Query(k=1)), queries[:16]))
        assert [r[0].path for r in results] == [str(p.resolve()) for p in queries[:16]]
        assert len(builds) == 1
