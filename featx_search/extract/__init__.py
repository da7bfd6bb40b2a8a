"""Models, weights and feature extraction (the only user of torchvision's FX tools).

Models are built-in (:mod:`.registry`: ``efficientnet_lite0``, pretrained weights shipped in
the ``lite`` extra), torchvision classification models by name, or ``package.module:factory``.
Features are read with :func:`torchvision.models.feature_extraction.create_feature_extractor`
(:mod:`.cut`), which rewrites the graph to end at the chosen nodes, so nothing after the
deepest node is computed. A model that FX cannot trace falls back to forward hooks on the named
modules (:mod:`.hooks`, ``method="auto"``), which run the whole network for every image.

Modules: ``registry`` (built-in models, building by name), ``weights`` (seeded init, files,
downloads, checksums), ``cut`` (FX cut and the process-wide model lock), ``hooks`` (forward-hook
fallback), ``runtimes`` (frozen TorchScript, OpenVINO), ``extractor`` (:class:`Extractor`,
:func:`load_extractor`), ``layers`` (:func:`list_layers`).
"""

from __future__ import annotations

from .cut import default_layer
from .extractor import Extractor, extractor_for, load_extractor, reproduces
from .layers import Layer, list_layers
from .registry import BUILTIN, IMAGENET, LITE0, LITE0_PREPROCESS, ModelEntry, model_defaults
from .weights import SEED

__all__ = [
    "BUILTIN",
    "IMAGENET",
    "LITE0",
    "LITE0_PREPROCESS",
    "SEED",
    "Extractor",
    "Layer",
    "ModelEntry",
    "default_layer",
    "extractor_for",
    "list_layers",
    "load_extractor",
    "model_defaults",
    "reproduces",
]
