"""Layers point one way: the core (`embedserve`) never imports the Serve layer
(`embedserve.deployments`) outside the CLI, the bulk job reaches neither Serve nor the
CLI, and no embedserve module imports itself through others.

The import graph is read from the source with `ast`, imports inside functions included
(they run too, only later) and `if TYPE_CHECKING:` imports left out (they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The repository's folders and the names they install under (pyproject's package-dir).
PACKAGES = {
    "embedserve": REPO / "serve_app",
    "embedserve.deployments": REPO / "deployments",
    "embedserve.plugins": REPO / "plugins",
}
SERVE_LAYER = "embedserve.deployments"
# The top layer: its `serve`, `status` and `build-config` verbs start or inspect Serve.
CLI = {
    "embedserve.cli.main",
    "embedserve.cli.serve",
    "embedserve.cli.serve_console",
    "embedserve.cli.ops",
}
# What a bulk job runs: the job's entry point and the Ray Data encoder actors' module.
BULK_JOB = ("embedserve.bulk.job", "embedserve.bulk.pipeline")


@cache
def modules() -> dict[str, Path]:
    """Every embedserve module, by import name."""
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """`node`'s descendants, without the bodies of `if TYPE_CHECKING:` blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and ast.unparse(child.test).endswith("TYPE_CHECKING"):
            for other in child.orelse:
                yield other
                yield from _runtime_nodes(other)
        else:
            yield child
            yield from _runtime_nodes(child)


def _imported(node: ast.AST) -> Iterator[str]:
    """The embedserve modules an import statement imports."""
    known = modules()
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names if alias.name in known)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        # `from package import submodule` imports the submodule; any other name comes
        # from the package's own module.
        names = [f"{node.module}.{alias.name}" for alias in node.names]
        yield from (name for name in names if name in known)
        if node.module in known and not all(name in known for name in names):
            yield node.module


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Each embedserve module and the embedserve modules it imports."""
    graph = {}
    for name, path in modules().items():
        tree = ast.parse(path.read_text(), str(path))
        imported = {target for node in _runtime_nodes(tree) for target in _imported(node)}
        graph[name] = frozenset(imported - {name})
    return graph


def reachable(start: str) -> set[str]:
    """The modules importing `start` imports, directly or through others."""
    graph, seen, todo = import_graph(), set(), [start]
    while todo:
        for target in graph[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def in_serve_layer(name: str) -> bool:
    """Whether `name` is `embedserve.deployments` or one of its modules."""
    return name == SERVE_LAYER or name.startswith(SERVE_LAYER + ".")


def test_the_graph_sees_the_modules_it_checks() -> None:
    graph = import_graph()
    assert {*BULK_JOB, *CLI, "embedserve.deployments.app"} <= set(graph)
    assert "embedserve.deployments.app" in reachable("embedserve.deployments.serve_config")


def test_only_the_cli_imports_the_serve_layer() -> None:
    importers = {
        name
        for name, imported in import_graph().items()
        if not in_serve_layer(name) and any(in_serve_layer(target) for target in imported)
    }
    assert importers <= CLI


def test_the_bulk_job_reaches_neither_serve_nor_the_cli() -> None:
    for start in BULK_JOB:
        reached = reachable(start)
        assert not {name for name in reached if in_serve_layer(name)}, start
        assert not reached & CLI, start


def test_ray_auth_imports_nothing_of_embedserve() -> None:
    """Every command that connects to Ray calls it first, so it must be a leaf."""
    assert import_graph()["embedserve.cli.ray_auth"] == frozenset()


def test_no_import_cycles() -> None:
    cycles = [name for name in import_graph() if name in reachable(name)]
    assert cycles == [], f"these modules import themselves through others: {cycles}"


def _loaded_modules(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running `code`."""
    script = f"import sys\n{code}\nprint('\\n'.join(sys.modules))\n"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return set(result.stdout.split())


def test_the_bulk_job_loads_no_ray_serve_or_web_framework() -> None:
    """What the job and its encoder actors import, and the helpers they share with the
    replicas, load none of Ray (the job imports it when it runs), Serve or FastAPI."""
    loaded = _loaded_modules(
        "import embedserve.bulk.job, embedserve.bulk.pipeline\n"
        "from embedserve import EmbedInput\n"
        "from embedserve.runtime.batch_plan import plan_chunks\n"
        "from embedserve.config import load_config\n"
        "from embedserve.runtime.placement import actor_options, replica_env_vars\n"
        "config = load_config(None)\n"
        "for backend in config.backends.values():\n"
        "    actor_options(backend, replica_env_vars(config))\n"
        "    plan_chunks([EmbedInput('a')], [1], backend.batching.resolved(512))\n"
    )
    heavy = {"ray", "fastapi", "starlette"}
    assert not {name for name in loaded if name.split(".")[0] in heavy or in_serve_layer(name)}


def test_the_serve_layer_modules_said_to_be_pure_import_no_ray() -> None:
    """The promise of `embedserve.deployments`' docstring."""
    loaded = _loaded_modules(
        "import embedserve.deployments.batching, embedserve.deployments.grafana, "
        "embedserve.deployments.status, embedserve.deployments.replica_description"
    )
    assert not {name for name in loaded if name.split(".")[0] == "ray"}


def test_the_help_loads_no_ray() -> None:
    """`embedserve --help` pays for no Ray: the verbs that need it import it."""
    loaded = _loaded_modules(
        "from embedserve.cli.main import build_parser\nbuild_parser().format_help()\n"
    )
    assert not {name for name in loaded if name.split(".")[0] == "ray" or in_serve_layer(name)}
