"""Decisions people make about duplicate groups: keep one image of the group (the others are
its duplicates), or mark the images as not duplicates of each other.

Decisions are only recorded, in the library; featx-search never deletes or moves a file.
They are exported (``featx-search dups --decisions --csv``) for people to act on with their
own tools. An image belongs to one decision at most: deciding again about it takes it out of
the older decision (which is dropped when fewer than two images are left in it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from .errors import ConfigError

DecisionKind = Literal["keep", "distinct"]
"""``"keep"``: one image is kept, the others are its duplicates; ``"distinct"``: the images
are not duplicates of each other."""

Role = Literal["keep", "duplicate", "distinct"]


@dataclass(frozen=True)
class DecidedImage:
    """One image of a decision and its part in it."""

    image_id: int
    path: str
    role: Role


@dataclass(frozen=True)
class Decision:
    """A stored decision about a group of images."""

    id: int
    decision: DecisionKind
    decided_at: datetime
    images: tuple[DecidedImage, ...]

    @property
    def keep(self) -> int | None:
        """The id of the image kept (None for ``"distinct"``, or when the keeper was removed
        from the library since)."""
        return next((i.image_id for i in self.images if i.role == "keep"), None)

    @property
    def image_ids(self) -> tuple[int, ...]:
        return tuple(i.image_id for i in self.images)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "decision": self.decision,
            "keep": self.keep,
            "image_ids": list(self.image_ids),
            "decided_at": self.decided_at.isoformat(timespec="seconds"),
            "images": [
                {"image_id": i.image_id, "path": i.path, "role": i.role} for i in self.images
            ],
        }


def roles(image_ids: Iterable[int], decision: str, keep: int | None) -> dict[int, Role]:
    """Each image's part in a new decision, after checking the arguments. Raises
    :class:`ConfigError` naming the bad parameter."""
    ids = list(dict.fromkeys(int(i) for i in image_ids))
    if decision not in get_args(DecisionKind):
        raise ConfigError(
            f"decision must be one of {', '.join(get_args(DecisionKind))}, got {decision!r}",
            param="decision",
        )
    if len(ids) < 2:
        raise ConfigError(
            f"a decision is about two images or more, got {len(ids)}", param="image_ids"
        )
    if decision == "keep":
        if keep not in ids:
            raise ConfigError(
                "keep must be one of image_ids",
                hint="give the id of the image to keep",
                param="keep",
            )
        return {i: "keep" if i == keep else "duplicate" for i in ids}
    if keep is not None:
        raise ConfigError('keep is only for the decision "keep"', param="keep")
    return dict.fromkeys(ids, "distinct")


def covering(decisions: Sequence[Decision], image_ids: Iterable[int]) -> Decision | None:
    """The decision that holds every one of ``image_ids`` (a duplicate group is decided when
    one decision covers all of its images), or None."""
    owner = {i.image_id: d for d in decisions for i in d.images}
    found = {owner.get(i) for i in image_ids}
    if len(found) != 1:
        return None
    return found.pop()
