"""Unit tests provably need no Ray: starting one fails the test. And the README's plugin,
installed on demand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.unit.readme_plugin import install_readme_plugin, readme_entry_point


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
