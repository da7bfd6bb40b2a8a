"""featx-search: image similarity search over features from any layer of a vision model.

Importing this package does not import torch, torchvision or faiss; they load when first used.
"""

from __future__ import annotations

from .ann.publish import BuildInfo
from .ann.spec import SearchParams, choose_spec
from .compute import Compute
from .config import ExtractorSpec, Preprocess, SpaceSpec
from .dups import DupGroup, DupMember
from .errors import (
    ConfigError,
    FeatxError,
    ImageError,
    LayerError,
    LibraryError,
    LibraryVersionError,
    ModelError,
    SpaceError,
    WeightsError,
)
from .evaluate import EvalResult, evaluate
from .extract import Layer
from .library import (
    Library,
    SchemaStatus,
    SpaceSelector,
    default_db_path,
    list_layers,
    schema_status,
    upgrade_schema,
)
from .options import Progress, ProgressCallback, Query, SyncOptions
from .query import Filters, Match, parse_date
from .reports import (
    CheckReport,
    IndexReport,
    LibraryInfo,
    RecallReport,
    SpaceInfo,
    WhitenReport,
)
from .space import Space, StoredImage

__version__ = "0.1.0"  # the only place the version is written (see pyproject.toml)

__all__ = [
    "BuildInfo",
    "CheckReport",
    "Compute",
    "ConfigError",
    "DupGroup",
    "DupMember",
    "EvalResult",
    "ExtractorSpec",
    "FeatxError",
    "Filters",
    "ImageError",
    "IndexReport",
    "Layer",
    "LayerError",
    "Library",
    "LibraryError",
    "LibraryInfo",
    "LibraryVersionError",
    "Match",
    "ModelError",
    "Preprocess",
    "Progress",
    "ProgressCallback",
    "Query",
    "RecallReport",
    "SchemaStatus",
    "SearchParams",
    "Space",
    "SpaceError",
    "SpaceInfo",
    "SpaceSelector",
    "SpaceSpec",
    "StoredImage",
    "SyncOptions",
    "WeightsError",
    "WhitenReport",
    "__version__",
    "choose_spec",
    "default_db_path",
    "evaluate",
    "list_layers",
    "parse_date",
    "schema_status",
    "upgrade_schema",
]
