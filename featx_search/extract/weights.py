"""Weights: seeded random initialisation, state-dict files, torchvision downloads, checksums."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Preprocess
from ..errors import ConfigError, WeightsError

if TYPE_CHECKING:
    import torch
    from torch import nn

SEED = 0
# Weights names that mean "the model's recommended pretrained weights".
DEFAULT_NAMES = ("DEFAULT",)


@contextmanager
def seeded() -> Iterator[None]:
    """Draw random initial weights from a fixed seed, leaving the global RNG as it was."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        yield


def state_sha256(model: nn.Module) -> str:
    """SHA-256 over every entry of the state dict (names, shapes and bytes), in its order."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def is_path(weights: str) -> bool:
    """Whether ``weights`` names a file rather than a weights name."""
    return (
        os.sep in weights
        or weights.endswith((".pt", ".pth", ".bin", ".ckpt"))
        or (os.altsep is not None and os.altsep in weights)
        or Path(weights).exists()
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict saved in ``path`` (also unwrapped from ``{"state_dict": ...}`` or
    ``{"model": ...}``). Raises :class:`WeightsError` when it is missing or unreadable."""
    import torch

    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path}",
            hint="give DEFAULT, a weights name, none, or an existing file",
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for bad files
        raise WeightsError(
            f"cannot read weights file {path}: {err}",
            hint="expected a PyTorch state dict saved with torch.save",
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict):
        raise WeightsError(f"weights file {path} does not hold a state dict")
    return data


def load_state(model: nn.Module, path: Path, model_name: str) -> None:
    """Load the state dict in ``path`` into ``model``; it must fit exactly."""
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise WeightsError(
            f"weights file {path} does not fit model {model_name}: {first}",
            hint="the file must be a state dict of exactly this model",
        ) from err


def torchvision_weights(name: str, weights: str) -> Any:
    """The torchvision weights enum member ``weights`` names for model ``name`` (``DEFAULT``,
    ``IMAGENET1K_V2`` or ``ResNet50_Weights.IMAGENET1K_V2``). Raises :class:`ConfigError`
    listing the choices."""
    from torchvision.models import get_model_weights

    enum = get_model_weights(name)
    available = [*DEFAULT_NAMES, *(w.name for w in enum)]
    short = weights.rsplit(".", 1)[-1]
    try:
        return enum.DEFAULT if short.upper() in DEFAULT_NAMES else enum[short]
    except KeyError:
        raise ConfigError(
            f"unknown weights {weights!r} for {name}",
            hint=f"choose one of {', '.join(available)}, none, or a file",
            param="weights",
        ) from None


def download_torchvision(name: str, chosen: Any, offline_models: Sequence[str]) -> nn.Module:
    """Model ``name`` with the pretrained weights ``chosen`` (a torchvision weights member),
    downloaded into torch's hub cache unless they are there already.

    Raises :class:`WeightsError` when they cannot be had (no network, a proxy, a bad file),
    saying where to put a file by hand and naming ``offline_models``, whose pretrained
    weights come with an installed package.
    """
    from torch.hub import get_dir
    from torchvision.models import get_model

    try:
        with seeded():
            model: nn.Module = get_model(name, weights=chosen)
    except Exception as err:  # urllib, ssl, http and hash errors all mean "not available here"
        cache = Path(get_dir()) / "checkpoints" / Path(chosen.url).name
        packaged = ", ".join(f'model="{m}"' for m in offline_models)
        hint = (
            f'without network access use weights="none" (random init), weights=PATH '
            f"(a state-dict file; {chosen.url} saved as {cache} is found automatically)"
        )
        if packaged:
            hint += f", or {packaged} (pretrained weights installed with a package)"
        raise WeightsError(
            f"cannot get weights {type(chosen).__name__}.{chosen.name} for {name}: "
            f"{type(err).__name__}: {err}",
            hint=hint,
        ) from err
    return model


def torchvision_preprocess(chosen: Any) -> Preprocess:
    """The input handling that torchvision weights ``chosen`` were trained with."""
    import torchvision

    transforms = chosen.transforms()
    interpolation = getattr(transforms, "interpolation", None)
    bicubic = interpolation == torchvision.transforms.InterpolationMode.BICUBIC
    return Preprocess(
        resize=int(transforms.resize_size[0]),
        crop=int(transforms.crop_size[0]),
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        interpolation="bicubic" if bicubic else "bilinear",
    )
