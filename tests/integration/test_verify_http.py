"""`embedserve verify` over HTTP against the served app: the default app's MiniLM agrees
with sentence-transformers, and an answer that a fallback gave is not taken for the
primary's."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml

from embedserve.cli.main import main
from embedserve.config import DEFAULT_CONFIG_RESOURCE

pytestmark = [pytest.mark.integration, pytest.mark.models]


def test_the_default_apps_minilm_agrees_with_sentence_transformers(deploy, capsys) -> None:
    url = deploy(None)
    assert main(["verify", "--url", url]) == 0
    out = capsys.readouterr().out
    assert (
        f"model all-minilm-l6-v2: minilm (sentence-transformers) at {url}: passed against "
        "sentence-transformers 6." in out
    )
    assert "  dense        min 1.0000" in out or "  dense        min 0.9999" in out
    assert f"model hash: hash (hash) at {url}: no reference library, skipped" in out


def test_an_answer_from_a_fallback_does_not_pass_for_the_primary(
    deploy, capsys, tmp_path: Path
) -> None:
    # MiniLM limited to 128 tokens is a space of its own, of which the strict canary
    # references here (none) and this Ray (earlier tests) hold no reference: its replica
    # refuses to serve until one is recorded, and the cross-space fallback answers.
    bundled = resources.files("embedserve").joinpath(DEFAULT_CONFIG_RESOURCE).read_text()
    config = yaml.safe_load(bundled)
    (tmp_path / "references").mkdir()
    config["server"]["canary"] = {"references": str(tmp_path / "references"), "strict": True}
    config["backends"]["minilm"]["options"]["max_seq_length"] = 128
    config["backends"]["hash"]["canary"] = {"enabled": False}
    config["models"]["minilm-or-hash"] = {"chain": ["minilm", "hash"], "allow_cross_space": True}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    url = deploy(config)
    assert main(["verify", "--url", url, "--config", str(path), "--model", "minilm-or-hash"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: the fallback hash answered, not minilm" in out
    assert "no canary reference" in out  # the primary's reason, as the server gave it
