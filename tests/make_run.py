"""What `make run` installs, and a prelude that makes everything else unimportable.

The test venv holds every extra; a README example that runs there may still fail in the
venv of `make run` (it did: `No module named 'faiss'`). Running the example after
`blocking_prelude()` imports only what the Makefile's `install` target installs.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def make_run_extras() -> set[str]:
    """The extras of embedserve that the Makefile's `install` target (`make run`) installs."""
    target = (ROOT / "Makefile").read_text().split("\ninstall:", 1)[1].split("\n\n", 1)[0]
    match = re.search(r'-e "\.\[([\w,-]+)\]"', target)
    assert match, "the install target no longer installs embedserve with extras"
    return set(match.group(1).split(","))


def _closure(name: str, extras: frozenset[str], seen: set[tuple[str, frozenset[str]]]) -> None:
    """Add the distribution `name` with `extras`, and what it requires, to `seen`."""
    key = (canonicalize_name(name), extras)
    if key in seen:
        return
    try:
        distribution = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return  # required only on other platforms or Pythons
    seen.add(key)
    environments = [{"extra": extra} for extra in extras | {""}]
    for line in distribution.requires or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate(env) for env in environments):
            _closure(requirement.name, frozenset(requirement.extras), seen)


def make_run_distributions() -> set[str]:
    """Every distribution (canonical name) that `make run` installs."""
    seen: set[tuple[str, frozenset[str]]] = set()
    _closure("embedserve", frozenset(make_run_extras()), seen)
    return {name for name, _ in seen}


def modules_make_run_lacks() -> set[str]:
    """Top-level modules of this venv that no distribution of `make run` provides."""
    installed = make_run_distributions()
    return {
        module
        for module, distributions in importlib.metadata.packages_distributions().items()
        if not {canonicalize_name(d) for d in distributions} & installed
    }


def blocking_prelude() -> str:
    """Python code that makes the modules `make run` lacks fail to import, as there."""
    return (
        "import sys\n"
        "class _NotInMakeRun:\n"
        f"    lacking = {sorted(modules_make_run_lacks())!r}\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in self.lacking:\n"
        "            raise ModuleNotFoundError(\n"
        "                f'No module named {name!r} (not installed by make run)', name=name\n"
        "            )\n"
        "sys.meta_path.insert(0, _NotInMakeRun())\n"
    )
