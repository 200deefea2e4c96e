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
