"""The hooks an embedserve plugin can implement."""

from __future__ import annotations

from collections.abc import Callable

import pluggy

hookspec = pluggy.HookspecMarker("embedserve")
hookimpl = pluggy.HookimplMarker("embedserve")


@hookspec
def register_backends(register: Callable[[type], None]) -> None:
    """Register backend classes by calling `register(BackendClass)` once per kind.

    Example::

        from embedserve import Backend, hookimpl

        @hookimpl
        def register_backends(register):
            register(MyBackend)
    """
