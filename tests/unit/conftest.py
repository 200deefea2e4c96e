"""Unit tests provably need no Ray: starting one fails the test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("unit tests must not start or join Ray")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(autouse=True)
def _no_api_keys_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys in the developer's environment must not switch authentication on in tests."""
    monkeypatch.delenv("EMBEDSERVE_API_KEYS", raising=False)
