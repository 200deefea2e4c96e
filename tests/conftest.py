"""Fixtures shared by every test tier."""

from __future__ import annotations

import random
from pathlib import Path

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


# -- a shuffled order: tiers, and modules within each tier -----------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--shuffle-modules",
        nargs="?",
        const="random",
        default=None,
        metavar="SEED",
        help="run the tiers, and the modules of each tier, in a shuffled order (SEED, or a "
        "random one, printed in the header); a module's tests keep their order",
    )


def _shuffle_seed(config: pytest.Config) -> int | None:
    """The seed of `--shuffle-modules`, drawn once when none is given."""
    option = config.getoption("--shuffle-modules")
    if option is None:
        return None
    if not hasattr(config, "_shuffle_seed"):
        config._shuffle_seed = random.randrange(10**6) if option == "random" else int(option)
    return config._shuffle_seed


def pytest_report_header(config: pytest.Config) -> str | None:
    seed = _shuffle_seed(config)
    return None if seed is None else f"shuffled tiers and modules: --shuffle-modules={seed}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With `--shuffle-modules`: tiers (tests/<tier>/) in a shuffled order, and each
    tier's modules in a shuffled order. Tests stay in file order within their module
    (a module may end by stopping what its fixtures started), and a tier's modules stay
    together (each tier starts and stops one Ray)."""
    seed = _shuffle_seed(config)
    if seed is None:
        return
    shuffler = random.Random(seed)
    tiers: dict[str, dict[Path, list[pytest.Item]]] = {}
    for item in items:
        tiers.setdefault(item.path.parent.name, {}).setdefault(item.path, []).append(item)
    order = list(tiers)
    shuffler.shuffle(order)
    shuffled = []
    for tier in order:
        modules = list(tiers[tier].values())
        shuffler.shuffle(modules)
        shuffled += [item for module in modules for item in module]
    items[:] = shuffled
