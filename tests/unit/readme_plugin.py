"""The README's complete plugin (`## Writing a backend plugin`), read from the README:
its code, its `pyproject.toml`, and the plugin laid out as `pip install .` installs it."""

from __future__ import annotations

import re
import types
from pathlib import Path

from embedserve._plugins import ENTRY_POINT_GROUP

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _plugin_section() -> str:
    start = README.index("\n## Writing a backend plugin\n")
    return README[start : README.index("\n## ", start + 1)]


def _readme_block(file_name: str, language: str) -> str:
    """The README's code block that follows the line naming `file_name`."""
    match = re.search(
        rf"`{re.escape(file_name)}`:\n\n```{language}\n(.*?)\n```",
        _plugin_section(),
        re.DOTALL,
    )
    assert match, f"the README's {file_name} block is gone"
    return match.group(1)


def readme_pyproject() -> str:
    """The README plugin's `pyproject.toml`."""
    return _readme_block("pyproject.toml", "toml")


def toml_string(toml: str, key: str) -> str:
    """A `key = "value"` string of a TOML text (tomllib is Python 3.11+)."""
    match = re.search(rf'^{re.escape(key)} = "(.*)"$', toml, re.MULTILINE)
    assert match, f"no {key} in {toml}"
    return match.group(1)


def readme_entry_point() -> tuple[str, str]:
    """The README plugin's entry-point name and module."""
    group = readme_pyproject().split('[project.entry-points."embedserve.backends"]\n', 1)[1]
    name, module = group.splitlines()[0].split(" = ")
    return name, module.strip('"')


def readme_plugin() -> str:
    """The code of the README's complete plugin."""
    return _readme_block(f"{readme_entry_point()[1]}/__init__.py", "python")


def readme_plugin_module() -> types.ModuleType:
    """The README plugin's code run as a module (nothing installed)."""
    plugin = types.ModuleType(readme_entry_point()[1])
    exec(compile(readme_plugin(), "README.md", "exec"), plugin.__dict__)
    return plugin


def install_readme_plugin(site: Path) -> None:
    """Lay the README's plugin out in `site` as `pip install .` would: the package and its
    `.dist-info` with the entry point. On `sys.path`, it is an installed distribution."""
    project = readme_pyproject()
    name, module = readme_entry_point()
    distribution, version = toml_string(project, "name"), toml_string(project, "version")
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(readme_plugin() + "\n")
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n"
    )
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{name} = {module}\n")
