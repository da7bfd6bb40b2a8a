"""Duplicate groups: identical files by content hash, near-duplicates by a range search."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from .query import image_date
from .store import ImageFacts, SpaceRecord, Store

if TYPE_CHECKING:
    from .index import VectorIndex

log = logging.getLogger(__name__)

# Cosine score from which two images count as near-duplicates. With efficientnet_lite0,
# resized, re-encoded and mildly cropped copies of a photo score about 0.9 and above, while
# different photos (even of one scene) stay below 0.85 (see README, "Duplicates").
DEFAULT_DUP_THRESHOLD = 0.9
# Query rows per range search: bounds the memory of one batch's hits.
BATCH = 512


@dataclass(frozen=True)
class DupMember:
    """One image of a duplicate group; ``score`` is its cosine similarity to the keeper."""

    image_id: int
    path: str
    score: float
    keeper: bool
    identical: bool  # same bytes (SHA-256) as the keeper
    width: int | None
    height: int | None
    date: datetime  # taken (EXIF), else file modification time

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_id": self.image_id,
            "path": self.path,
            "score": self.score,
            "keeper": self.keeper,
            "identical": self.identical,
            "width": self.width,
            "height": self.height,
            "date": self.date.isoformat(timespec="seconds"),
        }


@dataclass(frozen=True)
class DupGroup:
    """Images that duplicate each other; the suggested keeper comes first, then the others
    by decreasing score. ``rank`` counts groups from 1, largest first."""

    rank: int
    members: tuple[DupMember, ...]

    @property
    def keeper(self) -> DupMember:
        return self.members[0]

    def __len__(self) -> int:
        return len(self.members)


class _Components:
    """Union-find over positions 0..n-1 (path halving, union by size)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def groups(self) -> list[list[int]]:
        """Components of two or more positions."""
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            root = self.find(i)
            if self.size[root] > 1:
                out.setdefault(root, []).append(i)
        return list(out.values())


def _keeper_key(fact: ImageFacts) -> tuple[int, float, int]:
    """Sorts the suggested keeper first: most pixels, then oldest, then lowest id."""
    pixels = (fact.width or 0) * (fact.height or 0)
    return (-pixels, image_date(fact).timestamp(), fact.id)


def _link_identical(facts: Sequence[ImageFacts], components: _Components) -> None:
    first: dict[str, int] = {}
    for pos, fact in enumerate(facts):
        if fact.content_hash is None:
            continue
        seen = first.setdefault(fact.content_hash, pos)
        if seen != pos:
            components.union(seen, pos)


def _make_groups(
    facts: Sequence[ImageFacts],
    components: Iterable[list[int]],
    score: Callable[[int, int], float],
) -> list[DupGroup]:
    made = []
    for positions in components:
        ordered = sorted(positions, key=lambda p: _keeper_key(facts[p]))
        keep = ordered[0]
        keeper = facts[keep]
        members = [
            DupMember(
                image_id=facts[p].id,
                path=facts[p].path,
                score=1.0 if p == keep else score(keep, p),
                keeper=p == keep,
                identical=keeper.content_hash is not None
                and facts[p].content_hash == keeper.content_hash,
                width=facts[p].width,
                height=facts[p].height,
                date=image_date(facts[p]),
            )
            for p in ordered
        ]
        members[1:] = sorted(members[1:], key=lambda m: (-m.score, m.path))
        made.append(members)
    made.sort(key=lambda ms: (-len(ms), ms[0].path))
    return [DupGroup(rank, tuple(ms)) for rank, ms in enumerate(made, start=1)]


def exact_duplicates(store: Store) -> list[DupGroup]:
    """Groups of stored files with identical bytes (same SHA-256), largest first."""
    facts = store.image_facts(None)
    components = _Components(len(facts))
    _link_identical(facts, components)
    return _make_groups(facts, components.groups(), lambda a, b: 1.0)


def near_duplicates(
    store: Store,
    record: SpaceRecord,
    index: VectorIndex,
    threshold: float,
    *,
    progress: Callable[[int, int], None] | None = None,
    batch: int = BATCH,
) -> list[DupGroup]:
    """Groups of images in a space linked by a score of at least ``threshold`` (or identical
    bytes), as connected components, largest first.

    Memory: the stored vectors (N, dim) plus one batch of range-search hits; no N x N matrix.
    """
    generation, ids, vectors = store.vectors(record.id)
    facts = store.image_facts(record.id)
    if [f.id for f in facts] != ids.tolist():  # changed between the two reads: read again
        generation, ids, vectors = store.vectors(record.id)
        facts = store.image_facts(record.id, ids.tolist())
    components = _Components(len(ids))
    _link_identical(facts, components)
    total = len(ids)
    for start in range(0, total, batch):
        lims, _scores, hits = index.range_search(vectors[start : start + batch], threshold)
        positions = np.searchsorted(ids, hits)
        positions = np.minimum(positions, max(total - 1, 0))
        known = ids[positions] == hits if total else np.zeros(0, bool)
        for row in range(len(lims) - 1):
            a = start + row
            for b in positions[lims[row] : lims[row + 1]][known[lims[row] : lims[row + 1]]]:
                if b > a:  # each pair is found from both ends; one is enough
                    components.union(a, int(b))
        if progress is not None:
            progress(min(start + batch, total), total)
    log.info("near-duplicates: %d vectors at generation %d searched", total, generation)
    return _make_groups(
        facts, components.groups(), lambda a, b: float(np.dot(vectors[a], vectors[b]))
    )
