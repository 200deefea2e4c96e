"""Vector-space ids: vectors are comparable only within one space.

A space id is derived from everything that determines a backend's vectors (its
`space_identity`): two backends with the same identity, say the same pinned weights on
a GPU pool and a CPU pool, share a space; anything else gets another id.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_SLUG_UNSAFE = re.compile(r"[^a-z0-9]+")


def space_id(identity: Mapping[str, Any]) -> str:
    """A stable, readable id such as `all-minilm-l6-v2-3f9a0c1b2d4e` for a space identity.

    The readable part comes from `identity["model"]` (its last path segment); the hash
    covers the whole identity, so any change in weights, pooling, normalisation, prompts
    or output dimension gives another id.
    """
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    model = str(identity.get("model", identity.get("kind", "space")))
    slug = _SLUG_UNSAFE.sub("-", model.rstrip("/").rsplit("/", 1)[-1].lower()).strip("-")
    return f"{slug or 'space'}-{digest}"


def truncated_space_id(base_space_id: str, dimensions: int) -> str:
    """The space of vectors truncated to `dimensions` (Matryoshka): not comparable with
    the full-length vectors of `base_space_id`."""
    return f"{base_space_id}/d{dimensions}"


def normalized_space_id(base_space_id: str) -> str:
    """The space of a non-normalising backend's vectors scaled to unit length (TEI's
    `normalize: true`): not comparable with the unscaled vectors under L2 or dot product."""
    return f"{base_space_id}/normalized"


class SpaceMismatch(ValueError):
    """Vectors of one space were about to be written where another space's vectors are."""


@dataclass(frozen=True)
class SpaceGuard:
    """Keeps an index in one vector space: bound to the index's `space_id`, it refuses
    vectors of any other space before anything is written.

    A model's fallback chain may be allowed to answer from another space
    (`allow_cross_space`); its vectors are stamped with that space and, written into an
    index of the primary's space, would silently poison every search. The guard is where
    that is caught. `allow_cross_space=True` is the explicit opt-out, for an index that is
    meant to be re-encoded later (`embedserve reencode`).
    """

    space_id: str
    allow_cross_space: bool = False

    def check(self, space_id: str, what: str = "vectors") -> None:
        """Refuse `what` of `space_id` unless it is this guard's space (or opted out).

        Raises:
            SpaceMismatch: naming both spaces and how to proceed.
        """
        if space_id == self.space_id or self.allow_cross_space:
            return
        raise SpaceMismatch(
            f"{what} of space {space_id} cannot go into an index of space {self.space_id}: "
            "vectors of two spaces are not comparable (a fallback of another model may have "
            "served them); retry when the primary serves, re-encode them, or bind the guard "
            "with allow_cross_space=True to store them knowingly"
        )
