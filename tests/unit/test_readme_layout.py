"""The README's "Repository layout" lists every module of the three code folders, and
only modules that exist; the core's root keeps to the public contract and config.

The layout is a tree: a line whose first word ends in `/` opens a folder inside the
folder above it (by indentation); every `name.py` on a line belongs to the innermost
folder indented less than that line, or to the folder the line opens.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CODE_FOLDERS = ("serve_app", "plugins", "deployments")
_MODULE = re.compile(r"\b[A-Za-z_]\w*\.py\b")
# The core's root: the public contract (backend, hooks, registry, errors, space ids,
# indexes, Retry-After) and config; everything else lives in a subpackage.
MAX_CORE_ROOT_MODULES = 12


def layout_block() -> list[str]:
    """The lines of the code block under the README's "## Repository layout"."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Repository layout\n", 1)[1]
    return section.split("```\n", 2)[1].splitlines()


def documented_modules(lines: list[str]) -> set[str]:
    """`folder/module.py` paths the layout names, by the rules of the module docstring."""
    open_folders: list[tuple[int, str]] = []  # (indentation, path), outermost first
    found = set()
    for line in lines:
        indent = len(line) - len(line.lstrip())
        words = line.split()
        if not words:
            continue
        if words[0].endswith("/"):
            open_folders = [(i, path) for i, path in open_folders if i < indent]
            parent = open_folders[-1][1] + "/" if open_folders else ""
            open_folders.append((indent, parent + words[0].rstrip("/")))
            owner = open_folders[-1][1]
        else:
            owners = [path for i, path in open_folders if i < indent]
            owner = owners[-1] if owners else ""
        found.update(f"{owner}/{name}" for name in _MODULE.findall(line))
    return found


def tree_modules() -> set[str]:
    """Every module of the code folders, `__init__.py` files left out."""
    return {
        path.relative_to(REPO).as_posix()
        for folder in CODE_FOLDERS
        for path in (REPO / folder).rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    }


def test_the_rules_read_a_nested_tree() -> None:
    lines = [
        "serve_app/   core, see config.py",
        "  a.py       one",
        "  sub/       a folder",
        "    b.py c.py",
        "             d.py, wrapped description of sub",
        "  e.py       back in the core",
        "plugins/",
        "  f.py",
    ]
    assert documented_modules(lines) == {
        "serve_app/config.py",
        "serve_app/a.py",
        "serve_app/sub/b.py",
        "serve_app/sub/c.py",
        "serve_app/sub/d.py",
        "serve_app/e.py",
        "plugins/f.py",
    }


def test_the_readme_layout_lists_every_module() -> None:
    documented = {
        path for path in documented_modules(layout_block()) if path.startswith(CODE_FOLDERS)
    }
    tree = tree_modules()
    assert sorted(tree - documented) == [], "modules the README's layout does not list"
    assert sorted(documented - tree) == [], "modules the README's layout lists but are gone"


def test_the_core_root_keeps_to_the_contract_and_config() -> None:
    root = sorted(path.name for path in (REPO / "serve_app").glob("*.py"))
    assert len(root) <= MAX_CORE_ROOT_MODULES, root
