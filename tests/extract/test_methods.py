"""The four extraction methods of the source article agree: FX, forward hooks, nn.Identity
replacement and nn.Sequential truncation give the same vectors at every node where each
applies (random-init torchvision models); ``--method auto`` falls back to hooks on a model
that FX cannot trace."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from featx_search.config import ExtractorSpec
from featx_search.errors import LayerError, ModelError
from featx_search.extract import cut, list_layers, load_extractor, registry, weights
from tests import reference_methods

ATOL = 1e-5
MODELS = ["resnet18", "mobilenet_v3_small", "efficientnet_b0"]


def _unit(x: torch.Tensor) -> np.ndarray:
    flat = x.detach().reshape(len(x), -1).double().numpy()
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Many small forward passes: on a busy machine, two threads waiting on each other cost
    # several times more than they save.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    # Small inputs keep three models at every node fast; all three pool adaptively.
    return torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 96, 96)).astype("f4"))


@pytest.fixture(scope="module", params=MODELS)
def case(
    request: pytest.FixtureRequest, batch: torch.Tensor
) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """A seeded random-init model and its FX features at every node and module name."""
    with weights.seeded():
        model = torchvision.models.get_model(request.param, weights=None).eval()
    nodes = cut.node_names(model, request.param)
    # Every node at once: without this, nodes that a later in-place ReLU overwrites would be
    # returned overwritten (the copy keeps the model itself as torchvision builds it).
    fx_model = copy.deepcopy(model)
    registry.no_inplace(fx_model)
    with cut.quiet_fx(), torch.no_grad():
        graph = create_feature_extractor(fx_model, return_nodes={n: n for n in nodes}).eval()
        outputs = graph(batch)
    fx = {name: _unit(out) for name, out in outputs.items() if isinstance(out, torch.Tensor)}
    for module, node in cut.module_outputs(nodes).items():
        if node in fx:
            fx[module] = fx[node]
    return model, fx


def test_forward_hooks_equal_fx_at_every_module(
    case: tuple[nn.Module, dict[str, np.ndarray]], batch: torch.Tensor
) -> None:
    model, fx = case
    seen: dict[str, list[torch.Tensor]] = {}

    def keeper(name: str) -> Callable[..., None]:
        def keep(_m: nn.Module, _a: object, out: object) -> None:
            if isinstance(out, torch.Tensor):
                seen.setdefault(name, []).append(out.detach().clone())

        return keep

    handles = [m.register_forward_hook(keeper(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    once = {name: outs[0] for name, outs in seen.items() if len(outs) == 1}
    # Both apply where a module runs once and FX names it (FX keeps torchvision's ops, such as
    # Conv2dNormActivation, whole, so their inner modules are no FX nodes).
    compared = [name for name in once if name in fx]
    assert len(compared) > 40 and set(reference_methods.Chain(model).points) & set(fx) <= set(
        compared
    )
    for name in compared:
        np.testing.assert_allclose(_unit(once[name]), fx[name], atol=ATOL, err_msg=name)


def test_sequential_truncation_equals_fx_at_every_chain_point(
    case: tuple[nn.Module, dict[str, np.ndarray]], batch: torch.Tensor
) -> None:
    model, fx = case
    chain = reference_methods.Chain(model)
    # FX keeps torchvision's Conv2dNormActivation whole: compare where FX names the point.
    points = [p for p in chain.points if p in fx]
    assert "avgpool" in points and len(points) >= 10
    for point in points:
        with torch.no_grad():
            out = chain.truncate(point)(batch)
        np.testing.assert_allclose(_unit(out), fx[point], atol=ATOL, err_msg=point)


def test_identity_replacement_equals_fx_at_every_chain_point(
    case: tuple[nn.Module, dict[str, np.ndarray]], batch: torch.Tensor
) -> None:
    model, fx = case
    chain = reference_methods.Chain(model)
    points = [p for p in chain.points if p in fx]
    assert "avgpool" in points and len(points) >= 10
    for point in points:
        with torch.no_grad():
            out = chain.identity_tail(point)(batch)
        assert out.dim() == 2  # forward flattened what is left of the chain
        np.testing.assert_allclose(_unit(out), fx[point], atol=ATOL, err_msg=point)


def test_reference_methods_refuse_points_off_the_chain() -> None:
    with weights.seeded():
        model = torchvision.models.resnet18().eval()
    # fc follows a flatten in forward: slicing children() would silently skip that flatten.
    chain = reference_methods.Chain(model)
    assert "fc" not in chain.points and chain.points[-1] == "avgpool"
    with pytest.raises(LayerError, match="'fc' is not a point"):
        chain.truncate("fc")
    with pytest.raises(LayerError, match=r"'layer3\.0\.conv1' is not a point"):
        chain.identity_tail("layer3.0.conv1")


@pytest.mark.parametrize(
    ("model", "layers"),
    [("resnet18", ("layer2", "layer4.0.conv2", "avgpool")), ("mobilenet_v3_small", ())],
)
def test_extractor_hook_method_equals_fx(model: str, layers: tuple[str, ...]) -> None:
    spec = ExtractorSpec(model=model, weights="none", layers=layers, pool="gem")
    fx = load_extractor(spec)
    hook = load_extractor(ExtractorSpec(**{**spec.to_dict(), "layers": layers, "method": "hook"}))
    assert hook.space.fingerprint == fx.space.fingerprint  # the method is not in the space
    batch = np.random.default_rng(1).normal(size=(2, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(hook.embed(batch), fx.embed(batch), atol=ATOL)


UNTRACEABLE = "tests.models:untraceable_cnn"


def test_auto_falls_back_to_hooks_on_an_untraceable_model(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with pytest.raises(ModelError, match=r"cannot be traced with torch\.fx") as info:
        load_extractor(ExtractorSpec(model=UNTRACEABLE, weights="none", method="fx"))
    assert info.value.hint is not None and "method auto or hook" in info.value.hint
    with caplog.at_level(logging.WARNING, logger="featx_search"):
        auto = load_extractor(ExtractorSpec(model=UNTRACEABLE, weights="none"))
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "whole network runs" in notices[0]
    assert auto.space.layers == ("pool",) and auto.space.dim == 32
    # Same vectors as reading the module by hand on an identically seeded model.
    with weights.seeded():
        from tests.models import untraceable_cnn

        model = untraceable_cnn().eval()
    batch = np.random.default_rng(2).normal(size=(3, 3, 64, 64)).astype(np.float32)
    got: list[torch.Tensor] = []
    model.pool.register_forward_hook(lambda _m, _a, out: got.append(out))
    with torch.no_grad():
        model(torch.from_numpy(batch))
    np.testing.assert_allclose(auto.embed(batch), _unit(got[0]), atol=ATOL)
    conv = load_extractor(ExtractorSpec(model=UNTRACEABLE, weights="none", layers=("conv1",)))
    assert conv.space.dim == 16


def test_hook_layer_errors_name_modules() -> None:
    with pytest.raises(LayerError, match=r"no module 'pol'.*closest: pool"):
        load_extractor(ExtractorSpec(model=UNTRACEABLE, weights="none", layers=("pol",)))
    # An FX node name that is no module cannot be hooked.
    spec = ExtractorSpec(model="resnet18", weights="none", layers=("flatten",), method="hook")
    with pytest.raises(LayerError, match="no module 'flatten'"):
        load_extractor(spec)
    # resnet's block relu runs twice per image: a hook could not tell the outputs apart.
    spec = ExtractorSpec(model="resnet18", weights="none", layers=("layer1.0.relu",), method="hook")
    with pytest.raises(LayerError, match="runs 2 times"):
        load_extractor(spec)


def test_layer_costs_follow_depth() -> None:
    rows = {r.name: r for r in list_layers(ExtractorSpec(model="resnet18", weights="none"))}
    costs = [rows[n].cost for n in ("conv1", "layer1", "layer2", "layer3", "layer4", "fc")]
    assert all(c is not None for c in costs)
    assert costs == sorted(costs) and costs[-1] == pytest.approx(1.0)
    assert costs[0] is not None and costs[0] < 0.1
    # A downsample branch skips its block's convolutions: cheaper than the block's output.
    down, block = rows["layer4.0.downsample"].cost, rows["layer4.0"].cost
    assert down is not None and block is not None and down < block
    assert rows["layer3"].channels == 256 and rows["layer3"].spatial == "14x14"
    assert rows["fc"].channels == 1000 and rows["fc"].spatial == "-"
    hooked = list_layers(ExtractorSpec(model=UNTRACEABLE, weights="none"))
    assert [r.name for r in hooked] == ["conv1", "conv2", "pool", "fc"]
    assert all(r.cost == 1.0 for r in hooked) and [r.is_default for r in hooked][2]


def test_layers_read_together_are_not_overwritten_by_inplace_activations() -> None:
    # resnet's bn1 feeds relu(inplace=True): read together with a later layer, the extractor
    # must return bn1 as it was, negative values included.
    spec = ExtractorSpec(model="resnet18", weights="none", layers=("bn1", "layer1"), pool="avg")
    both = load_extractor(spec)
    alone = load_extractor(ExtractorSpec(model="resnet18", weights="none", layers=("bn1",)))
    batch = np.random.default_rng(3).normal(size=(2, 3, 64, 64)).astype(np.float32)
    first = both.embed(batch)[:, :64] * np.sqrt(2.0)  # each layer holds half the norm
    np.testing.assert_allclose(first, alone.embed(batch), atol=ATOL)


def test_cli_indexes_an_untraceable_model_with_hooks(db: Path, photos: Path) -> None:
    from click.testing import CliRunner

    from featx_search.cli import cli

    args = ["--db", str(db), "index", str(photos), "-m", UNTRACEABLE, "-w", "none"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    notices = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(notices) == 1 and "forward hooks" in notices[0] and "whole network" in notices[0]
    assert "indexed 12" in result.stdout and "/pool/avg" in result.stdout
    query = str(next(photos.rglob("img01.jpg")))
    found = CliRunner().invoke(cli, ["--db", str(db), "search", query, "-k", "1", "--json"])
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)["path"] == query
    refused = CliRunner().invoke(cli, [*args, "--method", "fx"])
    assert refused.exit_code == 1 and "cannot be traced with torch.fx" in refused.output


def test_layers_filter_through_the_cli() -> None:
    from click.testing import CliRunner

    from featx_search.cli import cli

    def names(*args: str) -> list[str]:
        result = CliRunner().invoke(cli, ["layers", *args, "--json"])
        assert result.exit_code == 0, result.output
        return [json.loads(line)["name"] for line in result.stdout.splitlines()]

    glob = names("resnet18", "--filter", "layer4.?.conv*")
    assert glob == ["layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]
    assert names("tests.models:tiny_cnn", "--filter", "5") == ["5"]
    missing = CliRunner().invoke(cli, ["layers", "tests.models:tiny_cnn", "--filter", "conv"])
    assert missing.exit_code == 1 and "no layer of tests.models:tiny_cnn matches" in missing.output
