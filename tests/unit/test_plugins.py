"""Plugin discovery through the `embedserve.backends` entry-point group.

Entry points are faked by monkeypatching `importlib.metadata.entry_points` with
distributions whose metadata lives in `tmp_path`: nothing is installed. Every broken
plugin must fail at start-up with a message naming the plugin and its distribution.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel

import embedserve.plugins.hash_backend
from embedserve import (
    Backend,
    BackendCapabilities,
    BackendRegistry,
    EmbeddingBatch,
    EmbedInput,
    PluginError,
    PluginSource,
    default_registry,
    hookimpl,
)
from embedserve._plugins import DISABLE_AUTOLOAD_ENV, ENTRY_POINT_GROUP
from tests.unit.readme_plugin import install_readme_plugin

VERSION = "1.2.3"


# -- fake backends --------------------------------------------------------------------------


class _TinyBackend(Backend):
    """A complete backend: constant two-dimensional vectors."""

    kind = "fake-tiny"

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(dimensions=2, semantic=False)

    def space_identity(self) -> dict:
        return {"kind": self.kind, "model": "tiny"}

    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        return EmbeddingBatch(dense=np.ones((len(inputs), 2), dtype=np.float32))


class _OtherTinyBackend(_TinyBackend):
    kind = "fake-other"


class _AbstractBackend(Backend):
    """Forgets `embed_batch`."""

    kind = "fake-abstract"

    @property
    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities()

    def space_identity(self) -> dict:
        return {"kind": self.kind}


class _NotOptionsBackend(_TinyBackend):
    kind = "fake-not-options"
    Options = dict  # type: ignore[assignment]


def _kind_backend(kind: object) -> type:
    """A complete backend class whose `kind` is `kind`."""
    return type("_KindBackend", (_TinyBackend,), {"kind": kind})


# -- fake plugins and distributions ---------------------------------------------------------


def _registering(*classes: object) -> Callable:
    """A `register_backends` hookimpl registering `classes`."""

    @hookimpl
    def register_backends(register):
        for backend_class in classes:
            register(backend_class)

    return register_backends


def _module(name: str, **attributes: object) -> types.ModuleType:
    module = types.ModuleType(name)
    for attribute, value in attributes.items():
        setattr(module, attribute, value)
    return module


class FakeEntryPoints:
    """Plugin modules and the distributions that declare them, nothing installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self._monkeypatch = monkeypatch
        self._tmp_path = tmp_path
        self._distributions: list[importlib.metadata.Distribution] = []
        monkeypatch.setattr(importlib.metadata, "entry_points", self._entry_points)

    def _entry_points(self, **selection: str) -> importlib.metadata.EntryPoints:
        found = [ep for dist in self._distributions for ep in dist.entry_points]
        return importlib.metadata.EntryPoints(found).select(**selection)

    def module(self, module_name: str, **attributes: object) -> None:
        """Make `module_name` importable as a module holding `attributes`."""
        self._monkeypatch.setitem(sys.modules, module_name, _module(module_name, **attributes))

    def source_module(self, module_name: str, source: str) -> None:
        """Write `module_name.py` with `source` to an importable folder."""
        folder = self._tmp_path / "site"
        folder.mkdir(exist_ok=True)
        (folder / f"{module_name}.py").write_text(textwrap.dedent(source))
        self._monkeypatch.syspath_prepend(str(folder))
        self._monkeypatch.delitem(sys.modules, module_name, raising=False)

    def distribution(
        self,
        name: str,
        plugins: dict[str, str],
        version: str = VERSION,
        group: str = ENTRY_POINT_GROUP,
    ) -> None:
        """Declare a distribution whose entry points in `group` map names to modules."""
        info = self._tmp_path / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "".join(f"{plugin} = {module}\n" for plugin, module in plugins.items())
        (info / "entry_points.txt").write_text(f"[{group}]\n{lines}")
        self._distributions.append(importlib.metadata.PathDistribution(info))

    def plugin(self, name: str, *classes: object, dist: str = "fake-dist") -> None:
        """One plugin module registering `classes`, in its own distribution."""
        module_name = f"fake_plugin_{name.replace('-', '_')}"
        self.module(module_name, register_backends=_registering(*classes))
        self.distribution(dist, {name: module_name})


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeEntryPoints:
    return FakeEntryPoints(monkeypatch, tmp_path)


@pytest.fixture
def fresh_default_registry() -> Iterator[None]:
    """Forget the cached process-wide registry before and after the test."""
    default_registry.cache_clear()
    yield
    default_registry.cache_clear()


def _load_error(message_part: str | None = None) -> PluginError:
    with pytest.raises(PluginError, match=message_part) as caught:
        BackendRegistry().load_entry_points()
    return caught.value


def assert_names_plugin(error: Exception, plugin: str, distribution: str) -> None:
    message = str(error)
    assert repr(plugin) in message, message
    assert f"{distribution} {VERSION}" in message, message


# -- the happy path -------------------------------------------------------------------------


def test_entry_points_register_kinds_with_their_source(entry_points: FakeEntryPoints) -> None:
    entry_points.plugin("tiny", _TinyBackend, _OtherTinyBackend, dist="fake-tiny-dist")
    registry = BackendRegistry()
    registry.load_entry_points()

    expected = PluginSource("tiny", "fake-tiny-dist", VERSION)
    assert registry.plugins == [expected]
    assert [b.kind for b in registry] == ["fake-other", "fake-tiny"]
    assert registry.get("fake-tiny").backend_class is _TinyBackend
    assert registry.get("fake-tiny").source == expected
    assert registry.get("fake-other").source == expected


def test_plugins_of_several_distributions_keep_their_own_source(
    entry_points: FakeEntryPoints,
) -> None:
    entry_points.plugin("tiny", _TinyBackend, dist="dist-a")
    entry_points.plugin("other", _OtherTinyBackend, dist="dist-b")
    registry = BackendRegistry()
    registry.load_entry_points()

    assert [p.distribution for p in registry.plugins] == ["dist-a", "dist-b"]
    assert registry.get("fake-other").source.distribution == "dist-b"


def test_only_the_embedserve_group_is_loaded(entry_points: FakeEntryPoints) -> None:
    entry_points.plugin("tiny", _TinyBackend)
    entry_points.distribution("elsewhere", {"tool": "no_such_module"}, group="console_scripts")

    registry = BackendRegistry()
    registry.load_entry_points()
    assert [p.name for p in registry.plugins] == ["tiny"]


def test_entry_point_without_distribution_is_named_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(
        sys.modules, "fake_loose_plugin", _module("m", register_backends=_registering())
    )
    loose = importlib.metadata.EntryPoint("loose", "fake_loose_plugin", ENTRY_POINT_GROUP)
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda **_: importlib.metadata.EntryPoints([loose])
    )
    registry = BackendRegistry()
    registry.load_entry_points()
    assert registry.plugins == [PluginSource("loose")]
    assert str(registry.plugins[0]) == "plugin 'loose'"


def test_unknown_kind_lists_registered_kinds(registry: BackendRegistry) -> None:
    with pytest.raises(KeyError, match=r"'nope'.*hash, sentence-transformers"):
        registry.get("nope")


def test_unknown_kind_in_empty_registry_says_none() -> None:
    with pytest.raises(KeyError, match="registered kinds: none"):
        BackendRegistry().get("hash")


# -- every broken plugin names itself and its distribution ----------------------------------


def test_plugin_that_fails_to_import(entry_points: FakeEntryPoints) -> None:
    entry_points.source_module(
        "fake_plugin_needs_driver", 'raise RuntimeError("libcuda.so.1 not found")\n'
    )
    entry_points.distribution("fake-gpu-dist", {"gpu": "fake_plugin_needs_driver"})

    error = _load_error("failed to import")
    assert_names_plugin(error, "gpu", "fake-gpu-dist")
    assert "'fake_plugin_needs_driver'" in str(error)
    assert "RuntimeError: libcuda.so.1 not found" in str(error)
    assert isinstance(error.__cause__, RuntimeError), "the original traceback is kept"


def test_plugin_whose_module_is_missing(entry_points: FakeEntryPoints) -> None:
    entry_points.distribution("fake-gone-dist", {"gone": "fake_plugin_not_there"})

    error = _load_error("ModuleNotFoundError")
    assert_names_plugin(error, "gone", "fake-gone-dist")


def test_hookimpl_with_wrong_signature(entry_points: FakeEntryPoints) -> None:
    @hookimpl
    def register_backends(register, bogus):
        raise AssertionError("a hook breaking the contract must never be called")

    entry_points.module("fake_plugin_bogus", register_backends=register_backends)
    entry_points.distribution("fake-bogus-dist", {"bogus-plugin": "fake_plugin_bogus"})

    error = _load_error("breaks the hook contract")
    assert_names_plugin(error, "bogus-plugin", "fake-bogus-dist")
    assert "bogus" in str(error).split("contract", 1)[1]


def test_hookimpl_matching_no_spec(entry_points: FakeEntryPoints) -> None:
    @hookimpl
    def register_backend(register):  # singular: a typo of register_backends
        register(_TinyBackend)

    entry_points.module("fake_plugin_typo", register_backend=register_backend)
    entry_points.distribution("fake-typo-dist", {"typo": "fake_plugin_typo"})

    error = _load_error("unknown hook 'register_backend'")
    assert_names_plugin(error, "typo", "fake-typo-dist")


@hookimpl
def _register_backends_bogus(register, bogus):
    pass


@hookimpl
def _register_backend_typo(register):
    pass


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"register_backends": _register_backends_bogus}, id="wrong-signature"),
        pytest.param({"register_backend": _register_backend_typo}, id="unknown-hook"),
    ],
)
def test_plugin_rejected_by_pluggy_leaves_no_trace(broken: dict[str, object]) -> None:
    """After a contract error, a fixed plugin of the same name registers cleanly."""
    registry = BackendRegistry()
    source = PluginSource("fixed-later", "fake-dist", VERSION)
    with pytest.raises(PluginError):
        registry.add_plugin(_module("broken", **broken), source)
    assert registry.plugins == []

    registry.add_plugin(_module("fixed", register_backends=_registering(_TinyBackend)), source)
    assert registry.get("fake-tiny").source == source


@pytest.mark.parametrize(
    "registered",
    [
        pytest.param(type("NotABackend", (), {"kind": "plain"}), id="plain-class"),
        pytest.param(BaseModel, id="pydantic-model"),
        pytest.param(_TinyBackend(), id="backend-instance"),
        pytest.param(lambda: None, id="function"),
    ],
)
def test_registering_something_that_is_not_a_backend(
    entry_points: FakeEntryPoints, registered: object
) -> None:
    entry_points.plugin("notbackend", registered, dist="fake-nb-dist")

    error = _load_error("not a subclass of Backend")
    assert_names_plugin(error, "notbackend", "fake-nb-dist")


def test_registering_an_abstract_backend(entry_points: FakeEntryPoints) -> None:
    entry_points.plugin("abstract", _AbstractBackend, dist="fake-abstract-dist")

    error = _load_error("does not implement: embed_batch")
    assert_names_plugin(error, "abstract", "fake-abstract-dist")
    assert "_AbstractBackend" in str(error)


@pytest.mark.parametrize("kind", ["My Backend", "UPPER", "1st", "", "has space", None, 7])
def test_registering_a_bad_kind_name(entry_points: FakeEntryPoints, kind: object) -> None:
    entry_points.plugin("badkind", _kind_backend(kind), dist="fake-kind-dist")

    error = _load_error("a kind must be a lowercase name")
    assert_names_plugin(error, "badkind", "fake-kind-dist")
    assert f"kind {kind!r}" in str(error)


def test_registering_a_backend_without_kind(entry_points: FakeEntryPoints) -> None:
    class NoKind(Backend):
        capabilities = _TinyBackend.capabilities
        space_identity = _TinyBackend.space_identity
        embed_batch = _TinyBackend.embed_batch

    entry_points.plugin("nokind", NoKind, dist="fake-nokind-dist")

    error = _load_error("kind None")
    assert_names_plugin(error, "nokind", "fake-nokind-dist")


def test_registering_options_that_are_not_a_pydantic_model(
    entry_points: FakeEntryPoints,
) -> None:
    entry_points.plugin("opts", _NotOptionsBackend, dist="fake-opts-dist")

    error = _load_error("Options is not a pydantic model")
    assert_names_plugin(error, "opts", "fake-opts-dist")


def test_two_plugins_registering_one_kind(entry_points: FakeEntryPoints) -> None:
    entry_points.plugin("first", _TinyBackend, dist="fake-first-dist")
    entry_points.plugin("second", _kind_backend("fake-tiny"), dist="fake-second-dist")

    error = _load_error("registers backend kind 'fake-tiny', already registered by")
    assert_names_plugin(error, "first", "fake-first-dist")
    assert_names_plugin(error, "second", "fake-second-dist")


def test_third_party_plugin_claiming_a_builtin_kind(entry_points: FakeEntryPoints) -> None:
    entry_points.distribution("embedserve", {"hash": "embedserve.plugins.hash_backend"})
    impostor = type("Impostor", (_TinyBackend,), {"kind": "hash"})
    entry_points.plugin("impostor", impostor, dist="fake-impostor-dist")

    error = _load_error("'hash'")
    assert_names_plugin(error, "impostor", "fake-impostor-dist")
    assert_names_plugin(error, "hash", "embedserve")


def test_one_plugin_registering_one_kind_twice(entry_points: FakeEntryPoints) -> None:
    entry_points.plugin("twice", _TinyBackend, _TinyBackend, dist="fake-twice-dist")

    error = _load_error("already registered")
    assert_names_plugin(error, "twice", "fake-twice-dist")


def test_two_plugins_with_one_name(entry_points: FakeEntryPoints) -> None:
    entry_points.plugin("same", _TinyBackend, dist="fake-a-dist")
    entry_points.module("fake_plugin_same_again", register_backends=_registering())
    entry_points.distribution("fake-b-dist", {"same": "fake_plugin_same_again"})

    error = _load_error("a plugin named 'same' is already registered")
    assert_names_plugin(error, "same", "fake-b-dist")


def test_two_entry_points_loading_one_module(entry_points: FakeEntryPoints) -> None:
    """One module behind two entry points is a broken setup, not a pluggy ValueError."""
    entry_points.plugin("tiny", _TinyBackend, dist="fake-a-dist")
    entry_points.distribution("fake-b-dist", {"tiny-again": "fake_plugin_tiny"})

    error = _load_error()
    assert_names_plugin(error, "tiny-again", "fake-b-dist")
    assert_names_plugin(error, "tiny", "fake-a-dist")


def test_register_hook_that_raises(entry_points: FakeEntryPoints) -> None:
    @hookimpl
    def register_backends(register):
        raise ValueError("no GPU configured")

    entry_points.module("fake_plugin_raises", register_backends=register_backends)
    entry_points.distribution("fake-raises-dist", {"raises": "fake_plugin_raises"})

    error = _load_error("raised in register_backends: ValueError: no GPU configured")
    assert_names_plugin(error, "raises", "fake-raises-dist")
    assert isinstance(error.__cause__, ValueError)


def test_broken_plugin_stops_start_up_even_after_good_ones(
    entry_points: FakeEntryPoints,
) -> None:
    entry_points.plugin("good", _TinyBackend, dist="fake-good-dist")
    entry_points.distribution("fake-bad-dist", {"bad": "fake_plugin_missing"})

    error = _load_error()
    assert_names_plugin(error, "bad", "fake-bad-dist")
    assert "'good'" not in str(error)


# -- autoload switch and the real entry points ----------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_disable_autoload_env_loads_nothing(
    entry_points: FakeEntryPoints,
    fresh_default_registry: None,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
) -> None:
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda **_: pytest.fail("entry points were read although autoload is disabled"),
    )
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, value)

    registry = default_registry()
    assert registry.plugins == []
    assert list(registry) == []


@pytest.mark.parametrize("value", ["0", "", "no"])
def test_autoload_stays_on_for_other_values(
    entry_points: FakeEntryPoints,
    fresh_default_registry: None,
    monkeypatch: pytest.MonkeyPatch,
    value: str,
) -> None:
    entry_points.plugin("tiny", _TinyBackend)
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, value)

    assert [b.kind for b in default_registry()] == ["fake-tiny"]


def test_default_registry_is_cached(
    entry_points: FakeEntryPoints, fresh_default_registry: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    entry_points.plugin("tiny", _TinyBackend)
    assert default_registry() is default_registry()


def test_real_entry_points_find_builtins_and_example_plugin() -> None:
    registry = BackendRegistry()
    registry.load_entry_points()

    sources = {backend.kind: backend.source for backend in registry}
    assert {"hash", "sentence-transformers", "letter-frequency"} <= set(sources)
    assert sources["hash"].distribution == "embedserve"
    assert sources["sentence-transformers"].distribution == "embedserve"
    assert sources["letter-frequency"] == PluginSource(
        "letter-frequency",
        "embedserve-example-plugin",
        importlib.metadata.version("embedserve-example-plugin"),
    )
    assert registry.get("hash").backend_class is embedserve.plugins.hash_backend.HashBackend


def test_loading_plugins_imports_no_heavy_library() -> None:
    """Plugins import torch only in `load`: discovering them must stay cheap."""
    code = (
        "import sys\n"
        "from embedserve import BackendRegistry\n"
        "BackendRegistry().load_entry_points()\n"
        "heavy = {'torch', 'sentence_transformers', 'transformers', 'ray'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_the_plugin_tests_pass_with_the_readme_plugin_installed(tmp_path: Path) -> None:
    """A user who installs the README's plugin, as the README says, keeps a passing
    `make test`: the plugin tests, run where it is installed, register it once."""
    install_readme_plugin(tmp_path)
    tests = str(Path(__file__).with_name("test_plugin_surface.py"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            tests,
        ],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:]
