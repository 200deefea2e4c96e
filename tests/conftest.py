"""Fixtures shared by every test tier."""

from __future__ import annotations

import pytest

import embedserve.plugins.hash_backend
import embedserve.plugins.sentence_transformers_backend
from embedserve import BackendRegistry, PluginSource


@pytest.fixture
def registry() -> BackendRegistry:
    """A registry holding the built-in plugins, registered explicitly (no entry points)."""
    registry = BackendRegistry()
    registry.add_plugin(embedserve.plugins.hash_backend, PluginSource("hash"))
    registry.add_plugin(
        embedserve.plugins.sentence_transformers_backend, PluginSource("sentence-transformers")
    )
    return registry
