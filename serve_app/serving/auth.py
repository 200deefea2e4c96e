"""API keys and per-key rate limits.

Keys come from an environment variable (plain keys, comma-separated) and/or a YAML file
of *hashed* keys, so the file can be shared without exposing a key. A key is compared by
its sha256 with `hmac.compare_digest` against every stored hash, in constant time.
Rate limits are token buckets per key, per router replica.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from embedserve.errors import PayloadTooLarge, RateLimited, Unauthorized

KEY_PREFIX = "es-"


class ApiKey(BaseModel):
    """One accepted key (by hash) and its limits; `None` limits fall back to the server's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)


class KeysFile(BaseModel):
    """The hashed-keys file: `keys: [{name, sha256, requests_per_minute, ...}]`."""

    model_config = ConfigDict(extra="forbid")

    keys: list[ApiKey]


def key_sha256(key: str) -> str:
    """The hash under which a key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def load_keys(env_var: str | None, keys_file: str | None) -> list[ApiKey]:
    """Keys from `env_var` (plain, comma-separated) and from a hashed-keys YAML file.

    Raises:
        ValueError: the file cannot be read or is invalid (names the file, never a key).
    """
    keys: list[ApiKey] = []
    plain = os.environ.get(env_var, "") if env_var else ""
    for number, key in enumerate(k.strip() for k in plain.split(",") if k.strip()):
        keys.append(ApiKey(name=f"{env_var}#{number + 1}", sha256=key_sha256(key)))
    if keys_file:
        from_file = _keys_from_file(keys_file)
        if not from_file:
            # A configured but empty file must not quietly switch authentication off.
            raise ValueError(f"API keys file {keys_file} holds no keys")
        keys += from_file
    return keys


def _keys_from_file(keys_file: str) -> list[ApiKey]:
    """The keys of a hashed-keys file; errors name places, never values (a key may be
    written where its hash belongs)."""
    try:
        data = yaml.safe_load(Path(keys_file).expanduser().read_text())
        return KeysFile.model_validate(data).keys
    except OSError as exc:
        raise ValueError(f"cannot read API keys file {keys_file}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ValueError(f"API keys file {keys_file} is not valid YAML{where}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'file'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ValueError(f"invalid API keys file {keys_file}: {problems}") from None


class KeyStore:
    """Checks presented keys against the stored hashes."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = keys

    @property
    def enabled(self) -> bool:
        """Authentication is on when at least one key is configured."""
        return bool(self._keys)

    def authenticate(self, token: str | None) -> ApiKey | None:
        """The key of a Bearer token; None when auth is off.

        Raises:
            Unauthorized: no Bearer token, or an unknown one.
        """
        if not self.enabled:
            return None
        if not token:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        digest = key_sha256(token)
        match = None
        for key in self._keys:  # no early exit: the time taken does not depend on the key
            if hmac.compare_digest(digest, key.sha256):
                match = key
        if match is None:
            raise Unauthorized("invalid API key")
        return match


@dataclass
class _Bucket:
    """A token bucket refilled continuously at `capacity` per minute."""

    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60)
        self.updated = now

    def seconds_until(self, amount: float) -> float:
        return max(0.0, (amount - self.level) * 60 / self.capacity)


class RateLimiter:
    """Requests and tokens per minute, per key."""

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        self._default_rpm = requests_per_minute
        self._default_tpm = tokens_per_minute
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()

    def acquire(self, key: ApiKey | None, tokens: int) -> None:
        """Take one request and `tokens` tokens from the key's budgets.

        Raises:
            RateLimited: a budget is exhausted; Retry-After says when it will suffice.
        """
        if key is None:
            return
        limits = {
            "requests": (key.requests_per_minute or self._default_rpm, 1),
            "tokens": (key.tokens_per_minute or self._default_tpm, tokens),
        }
        with self._lock:
            now = time.monotonic()
            buckets = {}
            for kind, (capacity, amount) in limits.items():
                if capacity is None:
                    continue
                if amount > capacity:
                    raise PayloadTooLarge(
                        f"the request needs {amount} {kind}, more than key {key.name!r} may "
                        f"use in a minute ({capacity})"
                    )
                bucket = self._bucket(key.name, kind, capacity, now)
                bucket.refill(now)
                if amount > bucket.level:
                    wait = bucket.seconds_until(amount)
                    raise RateLimited(
                        f"rate limit of {capacity} {kind} per minute reached for key {key.name!r}",
                        headers={"Retry-After": str(max(1, round(wait + 0.5)))},
                    )
                buckets[kind] = (bucket, amount)
            for bucket, amount in buckets.values():
                bucket.level -= amount

    def _bucket(self, name: str, kind: str, capacity: int, now: float) -> _Bucket:
        bucket = self._buckets.get((name, kind))
        if bucket is None or bucket.capacity != capacity:
            # Created full as of `now`: a later creation time would drain it below capacity.
            bucket = self._buckets[(name, kind)] = _Bucket(capacity, capacity, now)
        return bucket
