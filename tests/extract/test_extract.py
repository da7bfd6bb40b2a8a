"""FX extraction: equal to hand-made extraction on the same weights, default layers, weights
handling, errors with hints, and layer listing. Random-init models only, except the
efficientnet_lite0 weights shipped offline in the `lite` extra."""

from __future__ import annotations

import copy
import io
import threading
import urllib.error
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import torchvision.models._api
from PIL import Image
from torch import nn

from featx_search.config import ExtractorSpec
from featx_search.errors import ConfigError, LayerError, ModelError, WeightsError
from featx_search.extract import Extractor, list_layers, load_extractor, weights
from featx_search.images import load_input
from tests.models import tiny_cnn
from tests.support import RESNET18, make_photo

ATOL = 1e-5


def _unit(x: np.ndarray) -> np.ndarray:
    """Flatten each row and scale it to unit length (float64), as pooling.combine does."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


def _hooked(model: nn.Module, names: Sequence[str], batch: np.ndarray) -> dict[str, np.ndarray]:
    """Run ``model`` on ``batch`` and return the outputs of the named submodules."""
    seen: dict[str, np.ndarray] = {}

    def keep(name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
            seen[name] = output.detach().numpy().copy()

        return hook

    handles = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    try:
        with torch.no_grad():
            model(torch.from_numpy(batch))
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(seen) == sorted(names)
    return seen


def _run(model: nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(batch)).numpy()


@pytest.fixture(scope="module")
def resnet18() -> Extractor:
    return load_extractor(RESNET18)


@pytest.fixture(scope="module")
def reference() -> nn.Module:
    """torchvision's resnet18 initialised exactly as the extractor's (same seed)."""
    with weights.seeded():
        model = torchvision.models.resnet18()
    return model.eval()


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory, resnet18: Extractor) -> np.ndarray:
    """Two preprocessed synthetic photos: float32 (2, 3, 224, 224)."""
    root = tmp_path_factory.mktemp("batch")
    paths = [make_photo(root / f"p{i}.png", seed=i) for i in range(2)]
    return np.stack([load_input(p, resnet18.space.preprocess) for p in paths])


@pytest.fixture(scope="module")
def vectors(resnet18: Extractor, batch: np.ndarray) -> np.ndarray:
    return resnet18.embed(batch)


@pytest.fixture(scope="module")
def maps(reference: nn.Module, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of layer3, layer4 and avgpool on ``batch``, read with forward hooks."""
    return _hooked(reference, ["layer3", "layer4", "avgpool"], batch)


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    """A resnet18 state dict initialised under another seed, saved with torch.save."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(weights.SEED + 1)
        model = torchvision.models.resnet18().eval()
    path = tmp_path_factory.mktemp("weights") / "resnet18-other.pt"
    torch.save(model.state_dict(), path)
    return path, model


# FX equivalence ---------------------------------------------------------------------------


def test_reference_has_the_extractor_weights(resnet18: Extractor, reference: nn.Module) -> None:
    # Without this the equivalence tests below could compare two unrelated random models.
    assert resnet18.space.weights_sha256 == weights.state_sha256(reference)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(weights.SEED + 1)
        unrelated = torchvision.models.resnet18()
    assert weights.state_sha256(unrelated) != resnet18.space.weights_sha256


def test_embed_equals_forward_hook_on_avgpool(
    vectors: np.ndarray, maps: dict[str, np.ndarray]
) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == (2, 512)
    np.testing.assert_allclose(vectors, _unit(maps["avgpool"]), atol=ATOL)
    # The two photos must give different vectors, or equality above proves little.
    assert float(vectors[0] @ vectors[1]) < 0.9999


def test_embed_equals_truncated_sequential(
    vectors: np.ndarray, reference: nn.Module, batch: np.ndarray
) -> None:
    trunk = nn.Sequential(*list(reference.children())[:-1]).eval()
    out = _run(trunk, batch)
    assert out.shape == (2, 512, 1, 1)
    np.testing.assert_allclose(vectors, _unit(out), atol=ATOL)


def test_embed_equals_model_with_identity_head(
    vectors: np.ndarray, reference: nn.Module, batch: np.ndarray
) -> None:
    headless = copy.deepcopy(reference)
    headless.fc = nn.Identity()
    out = _run(headless, batch)
    assert out.shape == (2, 512)
    np.testing.assert_allclose(vectors, _unit(out), atol=ATOL)


@pytest.mark.parametrize("pool", ["gem", "max"])
def test_intermediate_layer_equals_hook_and_reference_pooling(
    pool: str, maps: dict[str, np.ndarray], batch: np.ndarray
) -> None:
    extractor = load_extractor(
        ExtractorSpec(model="resnet18", weights="none", layers=("layer3",), pool=pool)
    )
    assert extractor.space.layers == ("layer3",) and extractor.space.dim == 256
    fmap = maps["layer3"].astype(np.float64)
    assert fmap.shape == (2, 256, 14, 14)
    if pool == "max":
        pooled = fmap.max(axis=(2, 3))
    else:
        pooled = (np.maximum(fmap, 1e-6) ** 3).mean(axis=(2, 3)) ** (1 / 3)
    np.testing.assert_allclose(extractor.embed(batch), _unit(pooled), atol=ATOL)


def test_two_layers_concatenate_normalised_parts(
    maps: dict[str, np.ndarray], batch: np.ndarray
) -> None:
    extractor = load_extractor(
        ExtractorSpec(model="resnet18", weights="none", layers=("layer3", "layer4"))
    )
    assert extractor.space.dim == 256 + 512
    both = extractor.embed(batch)
    assert both.shape == (2, 768)
    np.testing.assert_allclose(np.linalg.norm(both, axis=1), 1.0, atol=1e-6)
    parts = [_unit(maps[name].mean(axis=(2, 3))) for name in ("layer3", "layer4")]
    np.testing.assert_allclose(both, _unit(np.concatenate(parts, axis=1)), atol=ATOL)
    # Each layer carries half the squared norm, whatever its raw scale.
    np.testing.assert_allclose(np.linalg.norm(both[:, :256], axis=1), np.sqrt(0.5), atol=1e-5)


# Default layers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "weights", "layer", "dim"),
    [
        ("resnet18", "none", "avgpool", 512),
        ("mobilenet_v3_small", "none", "avgpool", 576),
        ("efficientnet_b0", "none", "avgpool", 1280),
        # Chosen with eval (docs/benchmarks.md), not the classifier's input.
        ("efficientnet_lite0", "DEFAULT", "_blocks.12+_swish_1", 192 + 1280),
        ("efficientnet_lite1", "DEFAULT", "_blocks.16+_swish_1", 192 + 1280),
        ("efficientnet_lite2", "DEFAULT", "_blocks.16+_swish_1", 208 + 1280),
        ("tests.models:tiny_cnn", "none", "4", 32),
    ],
)
def test_default_layer_feeds_the_classifier(model: str, weights: str, layer: str, dim: int) -> None:
    extractor = load_extractor(ExtractorSpec(model=model, weights=weights))
    assert extractor.space.layers == tuple(layer.split("+"))
    assert extractor.space.dim == dim
    size = extractor.space.preprocess.crop
    batch = np.random.default_rng(0).normal(size=(1, 3, size, size)).astype(np.float32)
    vectors = extractor.embed(batch)
    assert vectors.shape == (1, dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


# Errors -----------------------------------------------------------------------------------


def test_unknown_layer_names_close_nodes_and_the_layers_command() -> None:
    with pytest.raises(LayerError) as info:
        load_extractor(ExtractorSpec(model="resnet18", weights="none", layers=("avgpol",)))
    message = str(info.value)
    assert "'avgpol'" in message
    assert "closest: avgpool" in message
    assert "featx-search layers resnet18" in message


def test_layers_resolving_to_one_node_are_refused() -> None:
    # torchvision would silently hand one of them an earlier node.
    spec = ExtractorSpec(model="resnet18", weights="none", layers=("layer4", "layer4.1"))
    with pytest.raises(LayerError, match=r"'layer4' and 'layer4\.1' are the same node"):
        load_extractor(spec)


def test_unknown_model_suggests_a_close_name() -> None:
    with pytest.raises(ModelError, match="unknown model 'resnet81'") as info:
        load_extractor(ExtractorSpec(model="resnet81", weights="none"))
    assert info.value.hint is not None and "did you mean resnet18" in info.value.hint


def test_unknown_weights_name_lists_choices() -> None:
    with pytest.raises(ConfigError, match="unknown weights 'IMAGENET1K_V9' for resnet18") as info:
        load_extractor(ExtractorSpec(model="resnet18", weights="IMAGENET1K_V9"))
    assert info.value.hint is not None
    assert "DEFAULT" in info.value.hint and "IMAGENET1K_V1" in info.value.hint


def test_weights_file_of_another_model(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny_cnn().state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit model resnet18"):
        load_extractor(ExtractorSpec(model="resnet18", weights=str(path)))


def test_missing_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.pt"
    with pytest.raises(WeightsError, match="weights file not found"):
        load_extractor(ExtractorSpec(model="resnet18", weights=str(path)))


def test_unreadable_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        load_extractor(ExtractorSpec(model="resnet18", weights=str(path)))


def test_offline_download_failure_names_alternatives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    urls: list[str] = []

    def offline(url: str, *args: object, **kwargs: object) -> None:
        urls.append(url)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError) as info:
        load_extractor(ExtractorSpec(model="resnet18", weights="DEFAULT"))
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    assert urls == [url]
    assert isinstance(info.value.__cause__, urllib.error.URLError)
    text = str(info.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in text and "no network in tests" in text
    assert 'weights="none"' in text and "weights=PATH" in text
    assert "efficientnet_lite0" in text
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / Path(url).name) in text


# Weights ----------------------------------------------------------------------------------


def test_random_init_is_reproducible_and_leaves_global_rng_untouched(
    resnet18: Extractor, vectors: np.ndarray, batch: np.ndarray
) -> None:
    state = torch.get_rng_state()
    again = load_extractor(RESNET18)
    assert torch.equal(torch.get_rng_state(), state)
    assert again.space.weights == "none"
    assert again.space.fingerprint == resnet18.space.fingerprint
    np.testing.assert_array_equal(again.embed(batch), vectors)
    # The check means something: building the model unseeded does draw from the global RNG.
    torchvision.models.resnet18()
    assert not torch.equal(torch.get_rng_state(), state)


def test_state_dict_file_gives_its_own_space(
    resnet18: Extractor,
    vectors: np.ndarray,
    batch: np.ndarray,
    other_weights: tuple[Path, nn.Module],
) -> None:
    path, model = other_weights
    extractor = load_extractor(ExtractorSpec(model="resnet18", weights=str(path)))
    space = extractor.space
    assert space.weights == "file"
    assert space.weights_sha256 == weights.state_sha256(model)
    assert space.weights_sha256 != resnet18.space.weights_sha256
    assert space.fingerprint != resnet18.space.fingerprint
    loaded = extractor.embed(batch)
    # The file's weights are the ones used: equal to a hook on that model, not the seeded one.
    np.testing.assert_allclose(
        loaded, _unit(_hooked(model, ["avgpool"], batch)["avgpool"]), atol=ATOL
    )
    assert np.abs(loaded - vectors).max() > 1e-3


# Layer listing ----------------------------------------------------------------------------


def test_list_layers_resnet18() -> None:
    rows = list_layers(RESNET18)
    names = [row.name for row in rows]
    shapes = {row.name: row.shape for row in rows}
    assert len(names) == len(set(names))
    assert [row.name for row in rows if row.is_default] == ["avgpool"]
    assert shapes["x"] == (1, 3, 224, 224)
    assert shapes["layer3"] == (1, 256, 14, 14)
    assert shapes["layer4"] == (1, 512, 7, 7)
    assert shapes["avgpool"] == (1, 512, 1, 1)
    assert shapes["fc"] == (1, 1000)
    order = [names.index(n) for n in ("x", "layer1", "layer4.1.relu_1", "layer4", "avgpool", "fc")]
    assert order == sorted(order)


# Pretrained EfficientNet-Lite -------------------------------------------------------------


def _recompressed(path: Path, size: tuple[int, int]) -> Image.Image:
    with Image.open(path) as img:
        small = img.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=85)
    buffer.seek(0)
    return Image.open(buffer)


@pytest.mark.parametrize(
    ("model", "side"),
    [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)],
)
def test_lite_near_duplicates_are_nearest(tmp_path: Path, model: str, side: int) -> None:
    extractor = load_extractor(ExtractorSpec(model=model, weights="DEFAULT"))
    assert extractor.space.weights == "IMAGENET1K"
    assert extractor.space.preprocess.crop == side
    seeds = (0, 1, 2)
    photos = [make_photo(tmp_path / f"p{s}.png", seed=s, size=(640, 480)) for s in seeds]
    copies = [_recompressed(p, (400, 300)) for p in photos]
    spec = extractor.space.preprocess
    vectors = extractor.embed(np.stack([load_input(x, spec) for x in [*photos, *copies]]))
    n = len(seeds)
    sims = vectors[:n] @ vectors.T  # each photo against every photo and copy
    for i in range(n):
        own = sims[i, n + i]
        others = np.delete(sims[i], [i, n + i])
        assert own > others.max() + 0.05, (i, own, others)


# Threads ----------------------------------------------------------------------------------

THREADS = 8


def test_threads_build_the_same_model_at_once() -> None:
    # torch.fx patches nn.Module process-wide while it traces: unserialised, concurrent
    # builds fail with "CURRENT_PATCHER is None" or layers that "return Proxy".
    start = threading.Barrier(THREADS)

    def build(_: int) -> str:
        start.wait()
        return load_extractor(RESNET18).space.fingerprint

    with ThreadPoolExecutor(THREADS) as pool:
        fingerprints = list(pool.map(build, range(THREADS)))
    assert len(fingerprints) == THREADS
    assert set(fingerprints) == {load_extractor(RESNET18).space.fingerprint}


def test_models_run_while_others_are_traced(
    resnet18: Extractor, batch: np.ndarray, vectors: np.ndarray
) -> None:
    hooked = load_extractor(ExtractorSpec(model="tests.models:untraceable_cnn", weights="none"))
    alone = hooked.embed(batch)
    start = threading.Barrier(THREADS)

    def work(i: int) -> list[np.ndarray]:
        start.wait()
        if i % 2:
            return [load_extractor(ExtractorSpec(model="resnet18", weights="none")).embed(batch)]
        # Forward hooks of one model called from several threads keep each call's outputs.
        return [hooked.embed(batch), *(resnet18.embed(batch) for _ in range(3))]

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(work, range(THREADS)))
    for i, got in enumerate(results):
        want = [vectors] if i % 2 else [alone, vectors, vectors, vectors]
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, atol=ATOL)


def test_one_hooked_model_embeds_from_threads_at_once(batch: np.ndarray) -> None:
    # Forward hooks fire in the calling thread; each call must keep its own outputs.
    hooked = load_extractor(
        ExtractorSpec(model="tests.models:untraceable_cnn", weights="none", method="hook")
    )
    alone = hooked.embed(batch)
    start = threading.Barrier(THREADS)

    def work(_: int) -> list[np.ndarray]:
        start.wait()
        return [hooked.embed(batch) for _ in range(10)]

    with ThreadPoolExecutor(THREADS) as pool:
        results = [got for run in pool.map(work, range(THREADS)) for got in run]
    assert len(results) == 10 * THREADS
    for got in results:
        np.testing.assert_allclose(got, alone, atol=ATOL)
