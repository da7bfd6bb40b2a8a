"""What operations report: plain frozen values with ``to_dict`` for ``--json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .activity import Activity


@dataclass
class IndexReport:
    """What a sync did (or, for a plan, would do: ``dry_run``).

    ``changes`` lists (action, path) for every file added, updated, moved ("old -> new") or
    removed; ``held`` counts stored files kept because their folder could not be read or
    looked unmounted; ``interrupted`` is set when the run was asked to stop after a batch.
    ``seconds`` is the whole run; ``embed_seconds`` the part from handing the first file to
    the decoders to committing the last batch, i.e. without start-up (loading, converting or
    freezing the model) and without publishing the index file. ``to_dict`` gives the
    ``--json`` summary.
    """

    space: str
    label: str
    added: int = 0
    updated: int = 0
    moved: int = 0
    unchanged: int = 0
    failed: int = 0
    removed: int = 0
    held: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    dry_run: bool = False
    interrupted: bool = False
    remaining: int = 0
    precision: str = ""  # what the space's model computes in ("" for a plan)
    missing: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    changes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def indexed(self) -> int:
        """Files embedded in this run (added + updated)."""
        return self.added + self.updated

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "space": self.space,
            "label": self.label,
            "added": self.added,
            "updated": self.updated,
            "moved": self.moved,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "held": self.held,
            "missing": list(self.missing),
            "warnings": list(self.warnings),
            "interrupted": self.interrupted,
            "remaining": self.remaining,
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
            "embed_seconds": round(self.embed_seconds, 3),
        }
        if self.precision:
            out["precision"] = self.precision
        if self.dry_run:
            out["changes"] = [{"action": a, "path": p} for a, p in self.changes]
        return out


@dataclass(frozen=True)
class SpaceInfo:
    """An embedding space of a library, as shown by ``info``."""

    id: int
    fingerprint: str
    label: str
    model: str
    weights: str
    layers: tuple[str, ...]
    pool: str
    dim: int
    count: int
    generation: int
    index_generation: int | None
    whitened: int | None = None  # the index's vector size when PCA-whitening is on
    # the requested index spec ("auto" or a FAISS factory string) and the built one
    index_spec: str = "auto"
    index_kind: str | None = None
    precision: str = "fp32"  # the number format the space's model computes in

    @property
    def index_current(self) -> bool:
        """True when the published index file matches the stored vectors."""
        return self.index_generation == self.generation

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fingerprint": self.fingerprint,
            "label": self.label,
            "model": self.model,
            "weights": self.weights,
            "layers": list(self.layers),
            "pool": self.pool,
            "dim": self.dim,
            "precision": self.precision,
            "count": self.count,
            "generation": self.generation,
            "index_generation": self.index_generation,
            "index_current": self.index_current,
            "whitened": self.whitened,
            "index_spec": self.index_spec,
            "index_kind": self.index_kind,
        }


@dataclass(frozen=True)
class CheckReport:
    """What :meth:`Library.check` found: ``problems`` (damage) and ``notes`` (harmless)."""

    problems: list[str]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class LibraryInfo:
    """Summary of a library: where it is, schema revision, images by state, spaces, and the
    index run going on (if any)."""

    path: str
    revision: str | None
    images: dict[str, int]
    spaces: list[SpaceInfo]
    indexing: Activity | None = None  # an index run going on now, in any process

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "revision": self.revision,
            "images": dict(self.images),
            "spaces": [s.to_dict() for s in self.spaces],
            "indexing": None if self.indexing is None else self.indexing.to_dict(),
        }


@dataclass(frozen=True)
class WhitenReport:
    """What :meth:`Space.whiten` did: the space, the whitened size (0: off) and how many
    stored vectors it was learned from."""

    space: str
    label: str
    dims: int
    learned_from: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RecallReport:
    """What :meth:`Space.recall` measured: recall@k of a space's index against exact
    search over ``queries`` stored vectors, with the params it ran with."""

    space: str
    spec: str
    count: int
    k: int
    queries: int
    recall: float
    params: dict[str, int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space,
            "spec": self.spec,
            "count": self.count,
            "k": self.k,
            "queries": self.queries,
            "recall": round(self.recall, 4),
            "params": dict(self.params),
            "seconds": round(self.seconds, 3),
        }
