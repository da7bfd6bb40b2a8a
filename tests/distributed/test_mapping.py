"""--map FROM=TO: whole folders only, the longest FROM first, malformed values refused."""

from __future__ import annotations

import pytest

from featx_search.errors import ConfigError
from featx_search.shards import parse_mapping, remap


def test_remap_replaces_whole_leading_folders_longest_first() -> None:
    mapping = parse_mapping(["/mnt/a=/home/me/A", "/mnt/a/deep/=/srv/deep", "/=/root"])
    assert remap("/mnt/a/x.jpg", mapping) == "/home/me/A/x.jpg"
    assert remap("/mnt/a/deep/y.jpg", mapping) == "/srv/deep/y.jpg"
    assert remap("/mnt/ab/z.jpg", mapping) == "/root/mnt/ab/z.jpg"  # not under /mnt/a
    assert remap("/mnt/a", mapping) == "/home/me/A"
    assert remap("rel/z.jpg", parse_mapping(["/mnt=/x"])) == "rel/z.jpg"


@pytest.mark.parametrize("bad", ["/mnt/a", "=/x", "/mnt/a=", ""])
def test_malformed_mapping_names_the_flag(bad: str) -> None:
    with pytest.raises(ConfigError, match="map must be FROM=TO") as err:
        parse_mapping([bad])
    assert err.value.param == "map"
