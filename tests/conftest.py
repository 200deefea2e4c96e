"""Fixtures shared by every test tier."""

from __future__ import annotations

import pytest

import plugins.hash_backend
import plugins.sentence_transformers_backend
from serve_app import BackendRegistry, PluginSource


@pytest.fixture
def registry() -> BackendRegistry:
    """A registry holding the built-in plugins, registered explicitly (no entry points)."""
    registry = BackendRegistry()
    registry.add_plugin(plugins.hash_backend, PluginSource("hash"))
    registry.add_plugin(
        plugins.sentence_transformers_backend, PluginSource("sentence-transformers")
    )
    return registry
