"""Discovering backend plugins through the `embedserve.backends` entry-point group.

Every problem with a plugin (it fails to import, a hook has a wrong signature, it
registers something that is not a backend, two plugins claim one kind) raises
:class:`PluginError` naming the plugin and its distribution, at start-up.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType

import pluggy
from pydantic import BaseModel

from embedserve import _hookspecs
from embedserve.backend import Backend

ENTRY_POINT_GROUP = "embedserve.backends"
DISABLE_AUTOLOAD_ENV = "EMBEDSERVE_DISABLE_PLUGIN_AUTOLOAD"
_KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]*$")


class PluginError(Exception):
    """A plugin is broken; the message names the plugin and its distribution."""


@dataclass(frozen=True)
class PluginSource:
    """Where a plugin comes from, for error messages and `embedserve plugins`."""

    name: str
    distribution: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        if self.distribution is None:
            return f"plugin {self.name!r}"
        return f"plugin {self.name!r} (distribution {self.distribution} {self.version})"


@dataclass(frozen=True)
class RegisteredBackend:
    """A backend kind and the plugin that registered it."""

    kind: str
    backend_class: type[Backend]
    source: PluginSource


class BackendRegistry:
    """Backend kinds registered by plugins, keyed by kind."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager("embedserve")
        self._pm.add_hookspecs(_hookspecs)
        self._sources: dict[str, PluginSource] = {}
        self._backends: dict[str, RegisteredBackend] = {}

    def load_entry_points(self) -> None:
        """Import and register every plugin of the entry-point group."""
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = entry_point.dist
            source = PluginSource(
                entry_point.name,
                dist.metadata["Name"] if dist else None,
                dist.version if dist else None,
            )
            try:
                module = entry_point.load()
            except Exception as exc:
                raise PluginError(
                    f"{source} failed to import {entry_point.value!r}: {type(exc).__name__}: {exc}"
                ) from exc
            self.add_plugin(module, source)

    def add_plugin(self, plugin: ModuleType | object, source: PluginSource) -> None:
        """Register one plugin object (a module or an instance with hookimpls)."""
        if source.name in self._sources:
            raise PluginError(
                f"{source}: a plugin named {source.name!r} is already registered by "
                f"{self._sources[source.name]}"
            )
        other = self._pm.get_name(plugin)
        if other is not None:
            raise PluginError(f"{source} loads the same plugin object as {self._sources[other]}")
        try:
            self._pm.register(plugin, name=source.name)
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self._pm.unregister(name=source.name)
            raise PluginError(f"{source} breaks the hook contract: {exc}") from exc
        self._sources[source.name] = source
        for impl in self._pm.hook.register_backends.get_hookimpls():
            if impl.plugin_name == source.name:
                self._call_register_hook(impl, source)

    def _call_register_hook(self, impl: pluggy.HookImpl, source: PluginSource) -> None:
        def register(backend_class: type) -> None:
            self._add_backend(backend_class, source)

        try:
            impl.function(**{name: register for name in impl.argnames})
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"{source} raised in register_backends: {type(exc).__name__}: {exc}"
            ) from exc

    def _add_backend(self, backend_class: type, source: PluginSource) -> None:
        check_backend_class(backend_class, source)
        kind = backend_class.kind
        if kind in self._backends:
            other = self._backends[kind].source
            raise PluginError(
                f"{source} registers backend kind {kind!r}, already registered by {other}"
            )
        self._backends[kind] = RegisteredBackend(kind, backend_class, source)

    def get(self, kind: str) -> RegisteredBackend:
        """The registered backend of `kind`; KeyError lists the known kinds."""
        try:
            return self._backends[kind]
        except KeyError:
            known = ", ".join(sorted(self._backends)) or "none"
            raise KeyError(f"unknown backend kind {kind!r} (registered kinds: {known})") from None

    def __iter__(self) -> Iterator[RegisteredBackend]:
        return iter(sorted(self._backends.values(), key=lambda b: b.kind))

    @property
    def plugins(self) -> list[PluginSource]:
        """Every registered plugin, in registration order."""
        return list(self._sources.values())


def check_backend_class(backend_class: type, source: PluginSource) -> None:
    """Raise PluginError unless `backend_class` honours the backend contract."""
    what = getattr(backend_class, "__qualname__", repr(backend_class))
    if not (inspect.isclass(backend_class) and issubclass(backend_class, Backend)):
        raise PluginError(f"{source} registered {what}, which is not a subclass of Backend")
    kind = getattr(backend_class, "kind", None)
    if not isinstance(kind, str) or not _KIND_PATTERN.match(kind):
        raise PluginError(
            f"{source} registered {what} with kind {kind!r}: a kind must be a lowercase "
            "name such as 'my-backend'"
        )
    if inspect.isabstract(backend_class):
        missing = ", ".join(sorted(backend_class.__abstractmethods__))
        raise PluginError(f"{source} registered {what}, which does not implement: {missing}")
    if not (
        inspect.isclass(backend_class.Options) and issubclass(backend_class.Options, BaseModel)
    ):
        raise PluginError(f"{source} registered {what} whose Options is not a pydantic model")


def autoload_disabled() -> bool:
    """Whether `EMBEDSERVE_DISABLE_PLUGIN_AUTOLOAD` turns entry-point loading off."""
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").lower() in {"1", "true", "yes"}


@lru_cache(maxsize=1)
def default_registry() -> BackendRegistry:
    """The process-wide registry, loaded from entry points unless autoload is disabled."""
    registry = BackendRegistry()
    if not autoload_disabled():
        registry.load_entry_points()
    return registry
