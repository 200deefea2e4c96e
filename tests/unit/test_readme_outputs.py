"""The README's examples whose output the code determines are that output: every space id
it shows is one of the real space ids of the configs it shows, and the `config validate`,
cross-space error and `embedserve status` examples are what the code prints.

A placeholder is written so that it cannot be taken for a real id (`<space_id>`,
`hash-...`); anything that looks like a space id must be a real one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from embedserve import BackendRegistry
from embedserve.cli.main import main
from embedserve.cli.ray_auth import choose_cluster
from embedserve.config import DEFAULT_TOKEN_BUDGET, EmbedServeConfig, load_config, parse_config
from embedserve.deployments.status import (
    ApplicationInfo,
    BackendDescription,
    ClusterStatus,
    DeploymentInfo,
    NodeInfo,
    ReplicaInfo,
    format_status,
)

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# `<slug>-<12 hex digits>` as embedserve.space builds it, not inside a longer word or path.
SPACE_ID = re.compile(r"(?<![\w./-])[a-z0-9][a-z0-9-]*-[0-9a-f]{12}(?![\w-])")


def _readme_configs() -> list[EmbedServeConfig]:
    """Every complete config (backends and models) in the README's YAML blocks, read where
    the README's plugin is installed (one of them serves it)."""
    registry = BackendRegistry()
    registry.load_entry_points()
    configs = []
    for block in re.findall(r"```ya?ml\n(.*?)```", README, re.DOTALL):
        data = yaml.safe_load(block)
        if isinstance(data, dict) and {"backends", "models"} <= set(data):
            configs.append(parse_config(data, registry))
    return configs


def _real_space_ids() -> set[str]:
    """The space ids of the bundled config, the cluster config the README links, and the
    configs the README shows."""
    configs = [load_config(None), load_config(ROOT / "cluster" / "embedserve-cluster.yaml")]
    configs += _readme_configs()
    return {config.space_id(name) for config in configs for name in config.backends}


def _code_block_after(marker: str) -> list[str]:
    """The lines of the first code block after `marker` in the README."""
    start = README.index(marker)
    block = re.compile(r"```[a-z]*\n(.*?)```", re.DOTALL).search(README, start)
    assert block, f"no code block after {marker!r}"
    return [line.strip() for line in block.group(1).strip().splitlines()]


def test_the_readme_shows_configs_to_check(readme_plugin_installed: None) -> None:
    assert _readme_configs(), "the README's annotated config example is gone"


def test_every_space_id_in_the_readme_is_real(readme_plugin_installed: None) -> None:
    shown = set(SPACE_ID.findall(README))
    assert shown, "the README shows no space id: is the pattern stale?"
    assert shown - _real_space_ids() == set(), "stale space ids: compute them from the config"


def test_config_validate_prints_what_the_readme_shows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config", "validate"]) == 0
    printed = [line.strip() for line in capsys.readouterr().out.strip().splitlines()]
    assert printed == _code_block_after("prints each model with its primary and fallback")


def test_the_cross_space_error_is_the_one_the_readme_shows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bundled = yaml.safe_load((ROOT / "serve_app" / "default_config.yaml").read_text())
    config = {"backends": bundled["backends"], "models": {"m": {"chain": ["minilm", "hash"]}}}
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    assert main(["config", "validate", "my.yaml"]) == 2
    shown = _code_block_after("Config validation refuses such a chain otherwise")
    # The README wraps the one-line message: compare the words.
    assert capsys.readouterr().err.split() == " ".join(shown).split()


def test_the_status_example_is_what_format_status_prints() -> None:
    head = NodeInfo(node_id="cd0600f6" * 7, address="10.0.0.5", alive=True, gpus=0, head=True)
    worker = NodeInfo(node_id="b04e660a" * 7, address="10.0.0.6", alive=True, gpus=1, head=False)
    replicas = [
        ReplicaInfo(
            replica_id=replica_id,
            state="RUNNING",
            node_id=node.node_id,
            node_address=node.address,
            pid=1,
        )
        for replica_id, node in (("b3biafyu", worker), ("k7d2ympq", head))
    ]
    bundled = load_config(None)
    hash_backend = DeploymentInfo(
        name="hash",
        status="HEALTHY",
        message="",
        replica_states={"RUNNING": 2},
        replicas=replicas,
        backend=BackendDescription(
            replica="b3biafyu",
            kind="hash",
            space_id=bundled.space_id("hash"),
            dimensions=bundled.backend("hash").capabilities.dimensions,
            max_batch_tokens=DEFAULT_TOKEN_BUDGET,  # the bundled hash backend's `auto`
            available=True,
            reason=None,
        ),
    )
    app = ApplicationInfo(
        name="embedserve",
        status="RUNNING",
        message="",
        route_prefix="/",
        deployments=[hash_backend],
    )
    joined = choose_cluster("10.0.0.5:6379").describe("10.0.0.5:6379")
    printed = format_status(ClusterStatus(nodes=[head, worker], applications=[app]))
    shown = _code_block_after("goes to standard error):\n\n```")
    assert [line.strip() for line in f"{joined}\n{printed}".splitlines()] == shown
