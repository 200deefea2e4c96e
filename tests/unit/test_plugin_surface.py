"""The plugin surface: every public `Backend` member and hook is in the README, the README's
plugin is the example plugin under names no installed plugin uses, and works next to every
installed plugin, and the transformers backends count tokens alike.

Like datasette's `test_plugin_hooks_are_documented`: adding a member or a hook without
documenting it fails here.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from embedserve import (
    Backend,
    BackendRegistry,
    EmbedInput,
    InputType,
    PluginSource,
    _hookspecs,
)
from embedserve.config import parse_config
from embedserve.plugins.bge_m3_backend import BgeM3Backend
from embedserve.plugins.clip_backend import ClipBackend
from embedserve.plugins.hf_common import TransformersBackend
from embedserve.plugins.nomic_backend import NomicBackend
from embedserve.plugins.sentence_transformers_backend import SentenceTransformersBackend
from tests.unit.readme_plugin import (
    readme_entry_point,
    readme_plugin,
    readme_plugin_module,
    readme_pyproject,
)

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
EXAMPLE_PLUGIN = ROOT / "tests" / "example_plugin" / "embedserve_example" / "__init__.py"


def _section(heading: str) -> str:
    """The README's text under the heading that starts with `heading`, up to the next
    heading of its level or above."""
    level = len(heading.split(" ", 1)[0])
    start = re.search(rf"^{re.escape(heading)}.*\n", README, re.MULTILINE)
    assert start, f"the README has no {heading!r} section"
    end = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(README, start.end())
    return README[start.end() : end.start() if end else len(README)]


def _documented_members() -> set[str]:
    """The names in the first column of the README's `Backend` contract table."""
    rows = [line for line in _section("### The `Backend` contract").splitlines() if line[:1] == "|"]
    return {name for row in rows for name in re.findall(r"`(\w+)", row.split("|")[1])}


def _public_members() -> set[str]:
    """What a plugin sees of `Backend`: attributes, annotated or set, and methods."""
    return {name for name in {*dir(Backend), *Backend.__annotations__} if name[0] != "_"}


def test_every_public_backend_member_is_in_the_contract_table() -> None:
    assert _public_members() - _documented_members() == set()


def test_the_contract_table_names_only_backend_members() -> None:
    stale = {name for name in _documented_members() - _public_members() if name != "__init__"}
    assert stale == set()


def test_every_hook_is_documented_with_its_signature() -> None:
    hooks = [
        function
        for _, function in inspect.getmembers(_hookspecs, inspect.isfunction)
        if hasattr(function, "embedserve_spec")
    ]
    assert hooks, "no hookspecs found"
    section = _section("## Writing a backend plugin")
    for hook in hooks:
        parameters = ", ".join(inspect.signature(hook).parameters)
        assert f"def {hook.__name__}({parameters}):" in section


# -- the README's plugin --------------------------------------------------------------------

# The README's plugin is the example plugin under names of its own: pasted into the venv
# that `make test` built (which installs the example plugin), it must not clash with it.
README_NAMES = {
    "my-letter-frequency": "letter-frequency",
    "my_embedserve_plugin": "embedserve_example",
    "my-embedserve-plugin": "embedserve-example-plugin",
}


def _as_example(readme_text: str) -> str:
    """README text with the README plugin's names replaced by the example plugin's."""
    for readme_name, example_name in README_NAMES.items():
        readme_text = readme_text.replace(readme_name, example_name)
    return readme_text


def _trimmed(statement: ast.stmt) -> bool:
    """Whether the README may leave `statement` out: a docstring or a `__future__` import."""
    if isinstance(statement, ast.ImportFrom):
        return statement.module == "__future__"
    return isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)


def _without_docstrings(source: str) -> str:
    """The syntax tree of `source` without what the README may leave out."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(getattr(node, "body", None), list):
            node.body = [statement for statement in node.body if not _trimmed(statement)]
    return ast.dump(tree)


def test_the_readme_plugin_is_the_example_plugin_under_its_own_names() -> None:
    example = EXAMPLE_PLUGIN.read_text()
    assert _without_docstrings(_as_example(readme_plugin())) == _without_docstrings(example)
    example_project = EXAMPLE_PLUGIN.parents[1].joinpath("pyproject.toml").read_text()
    # The README's pyproject.toml is the example's without its description.
    example_project = re.sub(r"^description = .*\n", "", example_project, flags=re.MULTILINE)
    assert _as_example(readme_pyproject()) + "\n" == example_project


def test_the_readme_plugin_registers_next_to_every_installed_plugin(
    readme_plugin_installed: None,
) -> None:
    # What a user gets who installs the README's plugin into the venv `make test` built:
    # the installed plugins (built-ins, the example and fault plugins) and the README's,
    # loaded as the default registry loads them, in a registry of its own.
    registry = BackendRegistry()
    registry.load_entry_points()
    readme_backend = registry.get("my-letter-frequency")
    assert readme_backend.source.distribution == "my-embedserve-plugin"
    assert readme_backend.source.name == readme_entry_point()[0]


def test_the_readme_config_serves_the_readme_plugin(readme_plugin_installed: None) -> None:
    registry = BackendRegistry()
    registry.load_entry_points()
    block = README.split("<!-- readme-plugin-config -->\n```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(yaml.safe_load(block), registry)
    [backend_name] = config.models["letters"].chain
    backend = config.backend(backend_name)
    assert backend.kind == "my-letter-frequency"
    assert backend.capabilities.dimensions == len(backend.options.alphabet)


def test_the_readme_plugin_registers_and_embeds() -> None:
    registry = BackendRegistry()
    registry.add_plugin(readme_plugin_module(), PluginSource("readme-plugin"))
    (registered,) = registry
    backend = registered.backend_class({"alphabet": "ab"})

    dense = backend.embed_batch([EmbedInput("abba"), EmbedInput("bbb"), EmbedInput("")]).dense
    assert backend.capabilities.dimensions == 2
    assert backend.capabilities.semantic is False
    assert np.allclose(dense, [[2**-0.5, 2**-0.5], [0, 1], [0, 0]])


# -- token counts of the transformers backends ----------------------------------------------


class _WordTokenizer:
    """Stands in for a transformers tokenizer: one id per word and two special tokens."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def __call__(self, texts: list[str], **kwargs: Any) -> dict[str, list[list[int]]]:
        assert kwargs == {"truncation": False, "verbose": False}
        self.texts += texts
        return {"input_ids": [[0] * (len(text.split()) + 2) for text in texts]}


IMAGE = np.zeros((4, 4, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("backend", "image_tokens", "texts"),
    [
        (
            SentenceTransformersBackend({"model": "m", "prompts": {"query": "query: "}}),
            None,
            ["query: cats purr", "cats purr"],
        ),
        (
            ClipBackend({"model": "m", "prompts": {"query": "a photo of {text}."}}),
            196,
            ["a photo of cats purr.", "cats purr"],
        ),
        (NomicBackend(), 1, ["search_query: cats purr", "search_document: cats purr"]),
        (BgeM3Backend({"model": "m"}), None, ["cats purr", "cats purr"]),
    ],
    ids=lambda value: getattr(value, "kind", None),
)
def test_tokens_are_counted_on_the_prompted_texts(
    backend: TransformersBackend, image_tokens: int | None, texts: list[str]
) -> None:
    backend._counter = _WordTokenizer()
    if image_tokens is not None:
        backend._image_tokens = image_tokens
    inputs = [EmbedInput("cats purr", InputType.QUERY), EmbedInput("cats purr")]

    assert backend.count_tokens(inputs) == [len(text.split()) + 2 for text in texts]
    assert backend._counter.texts == texts
    assert backend.count_tokens([]) == []
    if image_tokens is not None:  # an image is never tokenised: it costs its patches
        counts = backend.count_tokens([EmbedInput(image=IMAGE), inputs[1]])
        assert counts == [image_tokens, len(texts[1].split()) + 2]
