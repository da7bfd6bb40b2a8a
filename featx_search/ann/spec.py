"""Index specs and search params: FAISS factory strings, the ``auto`` rule, memory estimates
(imports no faiss).

A space's index spec is a FAISS factory string (``Flat``, ``HNSW32``, ``IVF4096,Flat``,
``IVF4096,PQ64``, ``OPQ64,IVF4096,PQ64``, ...), an IVF one behind :data:`ONDISK`
(``ondisk:IVF4096,Flat``: its inverted lists in a file beside the index, memory-mapped), or
``auto``. ``auto`` is resolved from the number of stored vectors, their size and the memory
budget (the space's, else :func:`default_budget`) by :func:`choose_spec`; docs/how-it-works.md
explains the rule; ``scripts/bench_ann.py`` measures it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError

AUTO = "auto"
# The prefix of specs whose inverted lists live on disk (faiss's OnDiskInvertedLists).
ONDISK = "ondisk:"
# Without a budget of its own, a space plans its index for this share of physical memory.
BUDGET_FRACTION = 0.5
# Below this many vectors exact search costs about a millisecond per query: keep it exact.
FLAT_MAX = 20_000
# Defaults of nprobe / efSearch are tuned at build time until recall@10 reaches this.
RECALL_TARGET = 0.95
# HNSW cannot delete: removed vectors stay as tombstones until they pass this share of the
# live ones, then the index is rebuilt from the store.
TOMBSTONE_FRACTION = 0.2
# Lossy codes (PQ, SQ) are re-ranked by default: k x this many candidates are re-scored
# exactly against the stored float32 vectors.
DEFAULT_RERANK = 10
# Index files at least this large are memory-mapped by queries instead of read into RAM.
MMAP_BYTES = 64 * 2**20

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_FORBIDDEN = ("IDMap", "BFlat", "BHNSW", "BIVF", "Binary")


@dataclass(frozen=True, kw_only=True)
class SearchParams:
    """Per-query knobs of approximate indexes; None means the index's (tuned) default.

    ``nprobe``: inverted lists visited by IVF indexes (more: slower, better recall).
    ``ef_search``: candidate list size of HNSW (more: slower, better recall).
    ``rerank``: for lossy codes (PQ, SQ), re-score ``k * rerank`` candidates exactly with the
    stored vectors; 0 turns it off.
    """

    nprobe: int | None = None
    ef_search: int | None = None
    rerank: int | None = None

    def __post_init__(self) -> None:
        for name in ("nprobe", "ef_search"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}", param=name)
        if self.rerank is not None and self.rerank < 0:
            raise ConfigError(f"rerank must be 0 (off) or more, got {self.rerank}", param="rerank")

    def merged(self, override: SearchParams | None) -> SearchParams:
        """These params with every value that ``override`` sets replaced."""
        if override is None:
            return self
        return SearchParams(
            nprobe=override.nprobe if override.nprobe is not None else self.nprobe,
            ef_search=override.ef_search if override.ef_search is not None else self.ef_search,
            rerank=override.rerank if override.rerank is not None else self.rerank,
        )

    def to_dict(self) -> dict[str, int]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SearchParams:
        data = data or {}
        return cls(**{key: data.get(key) for key in ("nprobe", "ef_search", "rerank")})


def parse_memory(value: str | int | None) -> int | None:
    """Bytes from ``512M``, ``2G``, ``1.5GiB`` or a plain number of bytes (units are binary:
    K = 1024). None stays None (no budget). Raises :class:`ConfigError`."""
    if value is None or isinstance(value, int):
        if isinstance(value, int) and value <= 0:
            raise ConfigError(f"max_memory must be positive, got {value}", param="max_memory")
        return value
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", value.upper())
    if match is None:
        raise ConfigError(
            f"max_memory {value!r} is not a size",
            hint="use e.g. 512M, 2G or 1.5GiB",
            param="max_memory",
        )
    number = float(match.group(1)) * _UNITS[match.group(2)]
    if number < 1:
        raise ConfigError(f"max_memory must be positive, got {value!r}", param="max_memory")
    return int(number)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def is_ondisk(spec: str) -> bool:
    """True for specs whose inverted lists live on disk (``ondisk:IVF...``)."""
    return spec.startswith(ONDISK)


def faiss_spec(spec: str) -> str:
    """The FAISS factory string of ``spec`` (without :data:`ONDISK`)."""
    return spec[len(ONDISK) :] if is_ondisk(spec) else spec


def default_budget() -> int | None:
    """The memory budget of a space that sets none: :data:`BUDGET_FRACTION` of this machine's
    physical memory (None where it cannot be read)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # e.g. Windows
        return None
    return int(total * BUDGET_FRACTION) if total > 0 else None


def check_spec_text(spec: str) -> str:
    """``spec`` stripped, or :class:`ConfigError` for what featx-search never accepts here.

    Whether FAISS understands the string is checked by :func:`featx_search.ann.raw.check_spec`.
    """
    spec = spec.strip()
    if not spec:
        raise ConfigError(
            "index is empty", hint="use auto, Flat, HNSW32, IVF1024,Flat, ...", param="index"
        )
    if spec.lower() == AUTO:
        return AUTO
    if spec.lower().startswith(ONDISK):
        body = spec[len(ONDISK) :].strip()
        if ivf_lists(body) is None or "IVFPQR" in body:
            raise ConfigError(
                f"index {spec!r}: only IVF indexes keep their lists on disk",
                hint="use e.g. ondisk:IVF4096,Flat or ondisk:IVF4096,PQ64",
                param="index",
            )
        return ONDISK + check_spec_text(body)
    for word in _FORBIDDEN:
        if word.lower() in spec.lower():
            raise ConfigError(
                f"index {spec!r}: {word} is not supported here",
                param="index",
                hint="featx-search adds ids itself and stores float vectors; "
                "use e.g. Flat, HNSW32, IVF1024,Flat or IVF1024,PQ64",
            )
    return spec


def ivf_lists(spec: str) -> int | None:
    """The number of inverted lists of an IVF spec, else None."""
    match = re.search(r"IVF(\d+)", spec)
    return int(match.group(1)) if match else None


def is_lossy(spec: str) -> bool:
    """True when the spec stores compressed codes instead of the float32 vectors."""
    body = spec.split(",")[-1]
    return bool(re.search(r"(^|[^O])PQ\d|SQ|LSH|RQ|LSQ", body)) and "RFlat" not in spec


def min_train(spec: str) -> int:
    """The fewest vectors the spec can be trained on (1 for those that need no training)."""
    need = ivf_lists(spec) or 1
    pq = re.search(r"PQ\d+(?:x(\d+))?", spec)
    if pq:  # a b-bit codebook needs 2**b training points (8 bits unless PQ<m>x<b>)
        need = max(need, 2 ** int(pq.group(1) or 8))
    elif re.search(r"RQ|LSQ", spec):
        need = max(need, 256)
    return need


def ivf_size(n: int) -> int:
    """nlist for ``n`` vectors: the power of two nearest 4 * sqrt(n), with at least 39
    training points per list (FAISS's own minimum), between 16 and 65536."""
    if n <= 0:
        return 16
    target = 4 * math.sqrt(n)
    nlist = int(2 ** round(math.log2(target)))
    while nlist > 16 and nlist * 39 > n:
        nlist //= 2
    return int(max(16, min(nlist, 65536)))


def estimate_bytes(spec: str, n: int, dim: int) -> int:
    """Approximate RAM of an index of ``n`` vectors of ``dim`` floats (ids included); for an
    on-disk spec what stays in memory: the coarse quantizer and the lists' directory."""
    nlist = ivf_lists(spec)
    quantizer = 4 * dim * nlist if nlist else 0
    if is_ondisk(spec):
        return quantizer + 24 * (nlist or 0)
    ids = 8 * n
    body = spec.split(",")[-1]
    pq = re.search(r"PQ(\d+)", body)
    sq = re.search(r"SQ(\d+)", body)
    hnsw = re.match(r"HNSW(\d+)", spec)
    if pq:
        codes = int(pq.group(1)) * n + 256 * 4 * dim
    elif sq:
        codes = n * dim * int(sq.group(1)) // 8
    else:
        codes = 4 * dim * n
    if hnsw:
        links = int(hnsw.group(1))
        # level 0 keeps 2M int32 neighbours; upper levels add about one link per node on
        # average; plus offsets and levels (12 bytes)
        codes += n * (4 * 2 * links + 4 + 12)
    return int(ids + quantizer + codes)


def choose_spec(n: int, dim: int, max_memory: int | None = None) -> str:
    """The ``auto`` rule: which index to build for ``n`` vectors of ``dim`` floats.

    - fewer than :data:`FLAT_MAX` vectors (and the floats fit the budget): ``Flat``, exact;
    - otherwise, if the float vectors fit the budget: ``IVF<nlist>,Flat`` with nlist from
      :func:`ivf_size` (about 4 * sqrt(n));
    - otherwise ``ondisk:IVF<nlist>,Flat``: the same index with its inverted lists (the
      float vectors and ids) in a file that queries memory-map, built by streaming the store
      in chunks (its memory does not grow with n).
    """
    if n < 256 or (
        n < FLAT_MAX and (max_memory is None or estimate_bytes("Flat", n, dim) <= max_memory)
    ):
        return "Flat"
    nlist = ivf_size(n)
    ivf_flat = f"IVF{nlist},Flat"
    if max_memory is None or estimate_bytes(ivf_flat, n, dim) <= max_memory:
        return ivf_flat
    return ONDISK + ivf_flat


def resolve_spec(requested: str | None, n: int, dim: int, max_memory: int | None) -> str:
    """The spec to build now: ``auto`` (None) resolved by :func:`choose_spec`; a spec that
    cannot be trained on ``n`` vectors yet falls back to ``Flat`` until the space grows."""
    if requested is None or requested == AUTO:
        return choose_spec(n, dim, max_memory)
    if n < min_train(requested):
        return "Flat"
    return requested
