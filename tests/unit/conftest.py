"""Unit tests provably need no Ray: starting one fails the test. And the README's plugin,
installed on demand."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.readme_plugin import install_readme_plugin, readme_entry_point


@pytest.fixture(autouse=True)
def _environment_restored() -> Iterator[None]:
    """The environment as it was before each test. The CLI code under test selects Ray's
    auth mode in `os.environ` (as it must, before Ray is imported); left set, a later
    tier's Ray inherits `RAY_AUTH_MODE=token` in its GCS while its driver, which read the
    mode when Ray was first imported, does not: "Failed to start GCS ... InvalidAuthToken"."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


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


@pytest.fixture
def readme_plugin_installed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The README's plugin installed next to everything the venv holds. Installed already
    (as a user of the README does), this copy shadows it: a distribution counts once."""
    install_readme_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, readme_entry_point()[1], raising=False)
