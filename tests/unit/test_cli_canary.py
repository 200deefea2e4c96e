"""`embedserve canary record|check`: references re-recorded on purpose, checks that fail."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from embedserve.cli.main import main


def write_config(tmp_path: Path, fault: str) -> str:
    config = {
        "server": {"state_dir": str(tmp_path / "state")},
        "backends": {
            "hash": {"kind": "hash"},
            "suspect": {"kind": "faulty-hash", "options": {"fault": fault}},
        },
        "models": {"m": {"chain": ["hash", "suspect"]}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_check_without_reference_records_nothing(tmp_path: Path, capsys) -> None:
    assert main(["canary", "check", "--config", write_config(tmp_path, "none")]) == 0
    assert "no reference" in capsys.readouterr().out
    assert not (tmp_path / "state").exists()


def test_record_then_check_passes_and_a_perturbed_backend_fails(tmp_path: Path, capsys) -> None:
    healthy = write_config(tmp_path, "none")
    assert main(["canary", "record", "--config", healthy, "--backend", "hash"]) == 0
    assert main(["canary", "check", "--config", healthy]) == 0
    assert capsys.readouterr().out.count("passed") == 2
    corrupted = write_config(tmp_path, "perturb")
    assert main(["canary", "check", "--config", corrupted]) == 1
    assert "suspect: FAILED: probe" in capsys.readouterr().out


def test_non_finite_probes_are_never_recorded(tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path, "nan")
    assert main(["canary", "record", "--config", config, "--backend", "suspect"]) == 1
    assert "NOT recorded" in capsys.readouterr().out


@pytest.mark.parametrize("verb", ["record", "check"])
def test_unknown_backend_is_a_clear_error(tmp_path: Path, verb: str, capsys) -> None:
    config = write_config(tmp_path, "none")
    assert main(["canary", verb, "--config", config, "--backend", "nope"]) == 2
    assert "unknown backend nope (configured: hash, suspect)" in capsys.readouterr().err
