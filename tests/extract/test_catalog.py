"""`featx-search models`: the built-in models' cards."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from featx_search.extract.catalog import model_card
from featx_search.extract.registry import BUILTIN
from tests.support import run_cli


def test_models_lists_every_builtin_with_its_vector_size() -> None:
    result = run_cli("models", "--json")
    cards = [json.loads(line) for line in result.output.splitlines()]
    assert [c["name"] for c in cards] == list(BUILTIN)
    by_name = {c["name"]: c for c in cards}
    assert by_name["efficientnet_lite0"]["default"] is True
    assert sum(c["default"] for c in cards) == 1
    assert by_name["efficientnet_lite2"]["dim"] == 208 + 1280
    assert [by_name[f"efficientnet_lite{n}"]["input_px"] for n in range(3)] == [224, 240, 260]
    table = run_cli("models").output
    assert "efficientnet_lite1" in table and "1472" in table


def test_a_model_card_times_the_forward_pass() -> None:
    card = model_card(BUILTIN["efficientnet_lite0"], speed=True, seconds=0.2)
    assert card.images_per_s is not None and card.images_per_s > 0
    assert model_card(BUILTIN["efficientnet_lite0"]).images_per_s is None


def test_a_model_whose_package_is_missing_says_which_extra_installs_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def absent() -> object:
        raise ModuleNotFoundError("No module named 'efficientnet_lite_pytorch'", name="x")

    entry = replace(BUILTIN["efficientnet_lite1"], create=absent)
    monkeypatch.setitem(BUILTIN, entry.name, entry)
    card = model_card(entry)
    assert card.dim is None
    assert card.missing is not None and "featx-search[lite]" in card.missing
