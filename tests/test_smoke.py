from pathlib import Path

from featx_search import Library
from tests.conftest import TINY


def test_index_and_find_self(library: Library, photos: Path) -> None:
    report = library.index([photos], spec=TINY)
    assert report.added == 12 and report.failed == 0
    for path in sorted(photos.rglob("*.*")):
        top = library.search(path, k=1)[0]
        assert top.path == str(path) and top.score > 0.999
