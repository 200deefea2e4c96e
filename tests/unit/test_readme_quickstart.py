"""The README's Quickstart gets a new user from `make run` to a working CLI and dashboard."""

from __future__ import annotations

from pathlib import Path

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.index("\n## ", start + 1)
    return README[start:end]


def _first_command_line(program: str) -> int:
    """Where the README first runs `program` in a shell block (its offset in the text)."""
    offset, shell = 0, None
    for line in README.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            shell = None if shell is not None else line.strip() == "```sh"
        elif shell and line.lstrip().startswith(f"{program} "):
            return offset
        offset += len(line)
    raise AssertionError(f"no {program} command in the README")


def test_quickstart_activates_the_venv_before_any_cli_command() -> None:
    # `make run` installs into .venv: without activating it, `embedserve` and `ray` are
    # "command not found".
    quickstart = _section("Quickstart")
    assert "source .venv/bin/activate" in quickstart
    activate = README.index("source .venv/bin/activate")
    assert activate < _first_command_line("embedserve")
    assert activate < _first_command_line("ray")


def test_quickstart_says_how_to_sign_in_to_the_dashboard() -> None:
    # Ray 2.60 starts its local cluster with token authentication: the dashboard opens on
    # a token dialog.
    quickstart = _section("Quickstart")
    assert "ray get-auth-token" in quickstart
    assert "~/.ray/auth_token" in quickstart
