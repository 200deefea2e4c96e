"""The README's Quickstart gets a new user from `make run` to a working CLI and dashboard."""

from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

from packaging.utils import canonicalize_name

from tests.make_run import make_run_extras, modules_make_run_lacks

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


def _python_blocks() -> list[tuple[int, str]]:
    """The README's Python blocks, each with its offset in the text."""
    return [(m.start(), m.group(1)) for m in re.finditer(r"```python\n(.*?)```", README, re.S)]


def _imported_modules(code: str) -> set[str]:
    """The top-level modules a block of code imports."""
    modules = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            modules |= {alias.name.partition(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.partition(".")[0])
    return modules


def _installs_in_section(offset: int) -> set[str]:
    """Distributions (canonical names) that `pip install` lines name in the README section
    (a `##` or deeper heading) holding `offset`."""
    start = README.rindex("\n##", 0, offset)
    end = README.find("\n##", offset)
    named = set()
    for line in re.findall(r"pip install ([^`\n]+)", README[start:end]):
        named |= {canonicalize_name(word.strip("'\"")) for word in line.split()}
    return named


def test_each_python_example_says_how_to_install_what_make_run_lacks() -> None:
    # The OpenAI SDK example imported `openai` with no word on installing it.
    lacking = modules_make_run_lacks()
    providers = importlib.metadata.packages_distributions()
    for offset, code in _python_blocks():
        for module in _imported_modules(code) & lacking:
            distributions = {canonicalize_name(name) for name in providers[module]}
            assert distributions & _installs_in_section(offset), (
                f"README line {README.count(chr(10), 0, offset) + 1} imports {module} "
                "without a `pip install` of it"
            )


def test_the_tei_example_says_feature_extraction_needs_numpy() -> None:
    # `huggingface_hub` does not require numpy, and `feature_extraction` fails without it.
    requires = importlib.metadata.requires("huggingface-hub") or []
    assert not [r for r in requires if canonicalize_name(r.split()[0]) == "numpy"]
    example = README.index("client.feature_extraction(", README.index("\n### TEI API\n"))
    assert {"huggingface-hub", "numpy"} <= _installs_in_section(example)


def test_the_quickstart_names_the_extras_make_run_installs() -> None:
    named = re.search(r"installs torch and then\s+`embedserve\[([\w,-]+)\]`", README)
    assert named, "the Quickstart no longer says what `make run` installs"
    assert set(named.group(1).split(",")) == make_run_extras()
