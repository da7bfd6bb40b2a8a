"""featx-search: image similarity search over features from any layer of a vision model.

Importing this package does not import torch, torchvision or faiss; they load when first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ann.publish import BuildInfo
    from .ann.spec import SearchParams, choose_spec
    from .compute import Compute
    from .config import ExtractorSpec, Preprocess, SpaceSpec
    from .decisions import Decision
    from .dups import DupGroup, DupMember
    from .errors import (
        ConfigError,
        FeatxError,
        ImageError,
        LayerError,
        LibraryError,
        LibraryVersionError,
        ModelError,
        ReadOnlyError,
        SpaceError,
        WeightsError,
    )
    from .evaluation import EvalResult, evaluate
    from .extract import Layer
    from .extract.layers import list_layers
    from .library import Library, SpaceSelector, default_db_path
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
    from .transfer import CopyReport, copy_library
    from .upgrade import SchemaStatus, schema_status, upgrade_schema

# Public name -> the module that defines it. Names load on first use (PEP 562), so importing
# featx_search (or running one command) imports only the modules that are needed.
_EXPORTS = {
    "BuildInfo": "ann.publish",
    "CheckReport": "reports",
    "Compute": "compute",
    "ConfigError": "errors",
    "CopyReport": "transfer",
    "Decision": "decisions",
    "DupGroup": "dups",
    "DupMember": "dups",
    "EvalResult": "evaluation",
    "ExtractorSpec": "config",
    "FeatxError": "errors",
    "Filters": "query",
    "ImageError": "errors",
    "IndexReport": "reports",
    "Layer": "extract",
    "LayerError": "errors",
    "Library": "library",
    "LibraryError": "errors",
    "LibraryInfo": "reports",
    "LibraryVersionError": "errors",
    "Match": "query",
    "ModelError": "errors",
    "ReadOnlyError": "errors",
    "Preprocess": "config",
    "Progress": "options",
    "ProgressCallback": "options",
    "Query": "options",
    "RecallReport": "reports",
    "SchemaStatus": "upgrade",
    "SearchParams": "ann.spec",
    "Space": "space",
    "SpaceError": "errors",
    "SpaceInfo": "reports",
    "SpaceSelector": "library",
    "SpaceSpec": "config",
    "StoredImage": "space",
    "SyncOptions": "options",
    "WeightsError": "errors",
    "WhitenReport": "reports",
    "choose_spec": "ann.spec",
    "copy_library": "transfer",
    "default_db_path": "library",
    "evaluate": "evaluation",
    "list_layers": "extract.layers",
    "parse_date": "query",
    "schema_status": "upgrade",
    "upgrade_schema": "upgrade",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__version__ = "0.1.0"  # the only place the version is written (see pyproject.toml)

__all__ = [
    "BuildInfo",
    "CheckReport",
    "Compute",
    "ConfigError",
    "CopyReport",
    "Decision",
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
    "ReadOnlyError",
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
    "copy_library",
    "default_db_path",
    "evaluate",
    "list_layers",
    "parse_date",
    "schema_status",
    "upgrade_schema",
]
