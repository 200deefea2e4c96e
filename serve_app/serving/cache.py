"""An optional per-model cache of dense vectors, so a repeated input never reaches a
replica while it is cached.

Entries are keyed by the vector space of the backend that made them and by a hash of the
input (text or image pixels, and its input type), so a fallback of another space never
gets another space's vectors. Bounded by bytes (least recently used out first) and by age.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from embedserve.backend import EmbedInput


class CacheConfig(BaseModel):
    """A model's embedding cache; off unless enabled."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    max_megabytes: float = Field(
        default=256, gt=0, description="Memory for vectors, per router replica."
    )
    ttl_s: float = Field(default=3600, gt=0, description="How long a vector stays cached.")


@dataclass(frozen=True)
class CachedVector:
    """A cached dense vector and the tokens its input cost."""

    vector: np.ndarray
    tokens: int
    expires: float


def cache_key(space_id: str, item: EmbedInput) -> str:
    """The key of an input's vector in a space: the content, never the text itself."""
    digest = hashlib.sha256(space_id.encode())
    digest.update(f"\0{item.input_type.value if item.input_type else ''}\0".encode())
    if item.image is None:
        digest.update(b"text\0" + item.text.encode())
    else:
        digest.update(f"image\0{item.image.shape}\0".encode() + item.image.tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """Least-recently-used vectors within a byte budget, each for at most `ttl_s`."""

    def __init__(self, config: CacheConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_bytes = int(config.max_megabytes * 2**20)
        self._ttl_s = config.ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, CachedVector] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedVector | None:
        """The live entry of a key, marked as recently used."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires <= self._clock():
                self._remove(key)
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: str, vector: np.ndarray, tokens: int) -> None:
        """Cache a vector, evicting the least recently used beyond the byte budget."""
        vector = np.array(vector, dtype=np.float32)  # a copy: the caller's array may change
        if vector.nbytes > self._max_bytes:
            return
        with self._lock:
            if key in self._entries:
                self._remove(key)
            self._entries[key] = CachedVector(vector, tokens, self._clock() + self._ttl_s)
            self._bytes += vector.nbytes
            while self._bytes > self._max_bytes:
                self._remove(next(iter(self._entries)))

    def __len__(self) -> int:
        return len(self._entries)

    def _remove(self, key: str) -> None:
        self._bytes -= self._entries.pop(key).vector.nbytes
