"""Decisions on duplicate groups: recorded in the library, taken over by newer decisions,
dropped with their images, exported by the CLI; files are never touched."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from featx_search import ConfigError, ImageError, Library, ReadOnlyError
from tests.support import run_cli


def _ids(lib: Library) -> dict[str, int]:
    return {Path(f.path).name: f.id for f in lib.space().image_facts()}


def test_decisions_are_recorded_and_taken_over(indexed: Path, photos: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in photos.rglob("*") if p.is_file()}
    with Library.open(indexed) as lib:
        ids = _ids(lib)
        a, b, c = ids["img01.jpg"], ids["img02.jpg"], ids["img04.jpg"]
        first = lib.decide([a, b, c], "keep", keep=b)
        assert first.keep == b and set(first.image_ids) == {a, b, c}
        assert {i.image_id: i.role for i in first.images} == {
            a: "duplicate",
            b: "keep",
            c: "duplicate",
        }
        # A newer decision takes its images out of the older one.
        second = lib.decide([a, c], "distinct")
        assert second.keep is None
        recorded = lib.decisions()
        assert [d.id for d in recorded] == [second.id]  # the first was left with one image
        assert {i.role for i in recorded[0].images} == {"distinct"}
        lib.forget_decision(second.id)
        assert lib.decisions() == []
        with pytest.raises(ConfigError) as err:
            lib.forget_decision(second.id)
        assert err.value.param == "decision_id"
    # Nothing on disk changed.
    assert {p: p.stat().st_mtime_ns for p in photos.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("image_ids", "decision", "keep", "param"),
    [
        ([1], "keep", 1, "image_ids"),
        ([1, 2], "delete", None, "decision"),
        ([1, 2], "keep", 3, "keep"),
        ([1, 2], "keep", None, "keep"),
        ([1, 2], "distinct", 1, "keep"),
    ],
)
def test_bad_decisions_name_the_argument(
    indexed: Path, image_ids: list[int], decision: str, keep: int | None, param: str
) -> None:
    with Library.open(indexed) as lib, pytest.raises(ConfigError) as err:
        lib.decide(image_ids, decision, keep=keep)  # type: ignore[arg-type]
    assert err.value.param == param


def test_unknown_images_and_read_only_libraries_are_refused(indexed: Path) -> None:
    with Library.open(indexed) as lib:
        known = sorted(_ids(lib).values())
        with pytest.raises(ImageError, match="999999"):
            lib.decide([known[0], 999999], "distinct")
        assert lib.decisions() == []
    with Library.open(indexed, read_only=True) as lib, pytest.raises(ReadOnlyError):
        lib.decide(known[:2], "distinct")


def test_a_removed_image_leaves_its_decision(indexed: Path, photos: Path) -> None:
    with Library.open(indexed) as lib:
        ids = _ids(lib)
        lib.decide(
            [ids["img01.jpg"], ids["img02.jpg"], ids["img04.jpg"]], "keep", keep=ids["img01.jpg"]
        )
        lib.remove([ids["img01.jpg"]])
        (decision,) = lib.decisions()
        assert decision.keep is None and set(decision.image_ids) == {
            ids["img02.jpg"],
            ids["img04.jpg"],
        }


def test_cli_exports_decisions(indexed: Path, photos: Path) -> None:
    shutil.copy(photos / "a" / "img01.jpg", photos / "b" / "copy.jpg")
    run_cli("--db", indexed, "index", photos, "-q")
    empty = run_cli("--db", indexed, "dups", "--decisions").stdout
    assert "no decisions recorded" in empty
    with Library.open(indexed) as lib:
        (group,) = lib.duplicates(0.999)
        keeper, other = group.members
        lib.decide([keeper.image_id, other.image_id], "keep", keep=other.image_id)
    rows = list(
        csv.DictReader(io.StringIO(run_cli("--db", indexed, "dups", "--decisions", "--csv").stdout))
    )
    assert {(r["role"], r["path"]) for r in rows} == {
        ("keep", other.path),
        ("duplicate", keeper.path),
    }
    assert {r["decision"] for r in rows} == {"keep"}
    lines = run_cli("--db", indexed, "dups", "--decisions", "--json").stdout.splitlines()
    assert {json.loads(line)["image_id"] for line in lines} == {keeper.image_id, other.image_id}
    table = run_cli("--db", indexed, "dups", "--decisions").stdout
    assert f"keep image {other.image_id}" in table and "duplicate" in table
