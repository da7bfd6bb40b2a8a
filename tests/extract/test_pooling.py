"""Pooling and normalisation, checked against numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from featx_search.errors import ConfigError
from featx_search.pooling import GEM_P, combine, l2_normalize, pool

EPS = 1e-6  # GeM clamps below this before the power


def _reference(x: np.ndarray, method: str, axes: tuple[int, ...]) -> np.ndarray:
    x = x.astype(np.float64)
    if method == "avg":
        return x.mean(axis=axes)
    if method == "max":
        return x.max(axis=axes)
    return (np.maximum(x, EPS) ** GEM_P).mean(axis=axes) ** (1.0 / GEM_P)


def _features(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("method", ["avg", "max", "gem"])
def test_pool_4d_reduces_height_and_width(method: str) -> None:
    x = _features((3, 5, 4, 6))
    out = pool(torch.from_numpy(x), method)
    assert out.shape == (3, 5)
    np.testing.assert_allclose(out.numpy(), _reference(x, method, (2, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["avg", "max", "gem"])
def test_pool_3d_reduces_tokens(method: str) -> None:
    # (B, N, C): 7 tokens of 5 channels; the result keeps the channel axis.
    x = _features((2, 7, 5), seed=1)
    out = pool(torch.from_numpy(x), method)
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out.numpy(), _reference(x, method, (1,)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["avg", "max", "gem"])
def test_pool_2d_is_passthrough(method: str) -> None:
    x = _features((4, 9), seed=2)  # includes negative values: GeM must not clamp them here
    out = pool(torch.from_numpy(x), method)
    np.testing.assert_array_equal(out.numpy(), x)


def test_gem_clamps_negative_inputs() -> None:
    x = np.full((1, 2, 3, 3), -4.0, dtype=np.float32)
    x[0, 1, 0, 0] = 3.0  # channel 1: one positive cell among negatives
    out = pool(torch.from_numpy(x), "gem").numpy()
    # Channel 0 is all negative: every cell clamps to EPS, and so does their power mean.
    assert out[0, 0] == pytest.approx(EPS, rel=1e-4)
    # Channel 1: (3**3 / 9) ** (1/3), the negatives contributing (almost) nothing.
    assert out[0, 1] == pytest.approx((27.0 / 9.0) ** (1.0 / 3.0), rel=1e-5)
    assert np.all(np.isfinite(out))


def test_gem_lies_between_avg_and_max_for_positive_maps() -> None:
    x = torch.from_numpy(np.abs(_features((2, 4, 5, 5), seed=3)) + 0.1)
    avg, gem, top = pool(x, "avg"), pool(x, "gem"), pool(x, "max")
    assert torch.all(avg < gem) and torch.all(gem < top)


def test_pool_rejects_unknown_method() -> None:
    with pytest.raises(ConfigError, match="unknown pooling 'median'") as info:
        pool(torch.zeros(1, 2, 3, 3), "median")
    assert "avg, max, gem" in str(info.value)


@pytest.mark.parametrize("shape", [(1, 2, 3, 4, 5), (4,)])
def test_pool_rejects_unpoolable_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError, match=r"cannot pool a layer output of shape"):
        pool(torch.zeros(shape), "avg")


def test_l2_normalize_keeps_zero_rows_zero() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    out = l2_normalize(x)
    np.testing.assert_allclose(out.numpy(), [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_combine_single_layer_is_float32_unit_norm(dtype: torch.dtype) -> None:
    x = _features((3, 6, 4, 4), seed=4)
    out = combine([torch.from_numpy(x).to(dtype)], "avg")
    assert out.dtype == torch.float32 and out.shape == (3, 6)
    np.testing.assert_allclose(torch.linalg.norm(out, dim=1).numpy(), 1.0, rtol=1e-6)
    expected = x.astype(np.float64).mean(axis=(2, 3))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    atol = 2e-3 if dtype == torch.float16 else 1e-6
    np.testing.assert_allclose(out.numpy(), expected, atol=atol)


def test_combine_weighs_layers_equally() -> None:
    # A 4-D map and a 3-D token sequence of very different scales and widths: each part is
    # normalised before the concatenation, so each holds half the squared norm.
    big = _features((2, 8, 3, 3), seed=5) * 1000.0
    small = _features((2, 5, 3), seed=6) * 0.001
    out = combine([torch.from_numpy(big), torch.from_numpy(small)], "max").numpy()
    assert out.dtype == np.float32 and out.shape == (2, 8 + 3)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out[:, :8], axis=1), np.sqrt(0.5), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out[:, 8:], axis=1), np.sqrt(0.5), rtol=1e-5)
    part = big.max(axis=(2, 3))
    part /= np.linalg.norm(part, axis=1, keepdims=True)
    np.testing.assert_allclose(out[:, :8], part * np.sqrt(0.5), rtol=1e-5, atol=1e-7)
