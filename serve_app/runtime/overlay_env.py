"""A backend's own packages over the node's Python environment, built once per node and kept.

`resources.runtime_env: {embedserve_overlay: ["transformers>=4.44,<5", "einops"]}` runs a
backend's replicas and bulk encoders in an *overlay*: a virtual environment that holds only
those packages (and the dependencies pip must add for them) and reads everything else
(Ray, torch, embedserve) from the node's environment through a `.pth` file. Its own
site-packages come first on `sys.path`, so its packages win over the node's.

Ray's `pip` and `uv` runtime_envs cannot do this: inside a virtualenv, both clone the whole
running environment into the session's folder (`create_or_get_virtualenv`), 6.9 GB under
`/tmp/ray` per Ray session for this project's, rebuilt after every restart. The overlay
for Nomic's list is 136 MB, and it lives outside `/tmp/ray`, in `EMBEDSERVE_ENV_CACHE`
(default `~/.cache/embedserve/envs`), so later sessions reuse it.

It is built by a Ray runtime_env plugin (`OverlayPlugin`), in each node's runtime-env
agent, when the first replica that asks for it lands on that node: every node of a
multi-node cluster builds its own, for its own Python. The agent loads the plugin when
the node starts with `RAY_RUNTIME_ENV_PLUGINS` naming it (`plugin_registration`):
`embedserve serve` and `encode` set it on the Ray they start; `cluster/local.sh` and the
KubeRay image (`cluster/kuberay/Dockerfile`) set it on their nodes.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import site
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ray._private.runtime_env.plugin import RuntimeEnvPlugin

from embedserve.runtime.locations import user_cache

PLUGIN_NAME = "embedserve_overlay"
PLUGIN_CLASS = f"{__name__}.OverlayPlugin"
PLUGINS_ENV_VAR = "RAY_RUNTIME_ENV_PLUGINS"
CACHE_ENV_VAR = "EMBEDSERVE_ENV_CACHE"
# Overlays kept per node besides those in use (the least recently used go when a new one
# is built): a restart, or a config change and back, reuses one. Nomic's is 136 MB.
KEEP_OVERLAYS = 3
COMPLETE = "embedserve-overlay.json"  # written last: the overlay is whole
LAST_USED = "embedserve-overlay.used"  # touched at each use: the pruning order
IN_USE = "embedserve-overlay.in-use"  # share-locked by every process the overlay runs
BASE_PTH = "embedserve_base_environment.pth"
IN_USE_PTH = "embedserve_overlay_in_use.pth"
# Ray's own runtime_env fields that choose the worker's Python: one chooser per backend.
PYTHON_CHOOSERS = ("pip", "uv", "conda", "py_executable", "container", "image_uri")


@dataclass(frozen=True)
class OverlaySpec:
    """What an overlay is built from; its `key` names its folder.

    The node's installed distributions are part of it: pip chose the overlay's packages
    against them, so an upgrade of the node's environment builds a new overlay.
    """

    requirements: tuple[str, ...]
    python: str
    base_prefix: str
    base_site_dirs: tuple[str, ...]
    base_distributions: tuple[str, ...]

    @classmethod
    def of_this_python(cls, requirements: Sequence[str]) -> OverlaySpec:
        """The overlay of `requirements` over the Python environment running this code."""
        site_dirs = tuple(base_site_dirs())
        return cls(
            requirements=tuple(requirements),
            python=f"{sys.base_prefix} {sys.version}",
            base_prefix=sys.prefix,
            base_site_dirs=site_dirs,
            base_distributions=_installed_distributions(site_dirs),
        )

    @property
    def key(self) -> str:
        """A stable name for the overlay's folder."""
        document = json.dumps(asdict(self), sort_keys=True).encode()
        return "overlay-" + hashlib.sha256(document).hexdigest()[:20]


@dataclass(frozen=True)
class Overlay:
    """A built overlay: its folder, and whether this call built it (and in how long)."""

    path: Path
    built: bool
    seconds: float

    @property
    def python(self) -> Path:
        """The overlay's interpreter: what the backend's processes run."""
        return overlay_python(self.path)


def overlay_python(path: Path) -> Path:
    """The interpreter of the overlay in `path`."""
    return path / "bin" / "python"


def base_site_dirs() -> list[str]:
    """The site-packages folders of the Python running this code (a venv's, or the
    interpreter's own when it runs outside one)."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    return dirs


def _installed_distributions(site_dirs: Sequence[str]) -> tuple[str, ...]:
    # Of the site folders only: what else is on this process's path (its working
    # directory, PYTHONPATH) differs between the processes that ask for the same overlay.
    found = importlib.metadata.distributions(path=list(site_dirs))
    return tuple(sorted({f"{d.metadata['Name']}=={d.version}" for d in found}))


def cache_dir() -> Path:
    """Where a node keeps its overlays: `EMBEDSERVE_ENV_CACHE`, else
    `$XDG_CACHE_HOME/embedserve/envs` (`~/.cache/embedserve/envs`)."""
    configured = os.environ.get(CACHE_ENV_VAR)
    if configured:
        return Path(configured).expanduser()
    return user_cache("envs")


def ensure_overlay(
    spec: OverlaySpec,
    cache: Path,
    keep: int = KEEP_OVERLAYS,
    logger: logging.Logger | None = None,
) -> Overlay:
    """The overlay of `spec` in `cache`: reused when whole, else built (once per node).

    Concurrent callers (two replicas starting on one node, two Ray clusters sharing the
    cache) build it once: the build holds a lock file, and the completion record is
    written last, atomically; a build that died halfway is removed and redone. The
    overlay is built in its final folder, not renamed into it: pip writes that folder's
    path into what it installs (script shebangs, the venv's own files).
    """
    path = cache / spec.key
    if (path / COMPLETE).exists():
        _mark_used(path)
        return Overlay(path, built=False, seconds=0.0)
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f"{spec.key}.lock"):
        if (path / COMPLETE).exists():  # another process built it while this one waited
            _mark_used(path)
            return Overlay(path, built=False, seconds=0.0)
        started = time.monotonic()
        shutil.rmtree(path, ignore_errors=True)  # what a dead build left
        try:
            _build(spec, path, logger or logging.getLogger(__name__))
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        seconds = time.monotonic() - started
        _complete(path, spec, seconds)
    prune(cache, keep)
    return Overlay(path, built=True, seconds=seconds)


def _build(spec: OverlaySpec, path: Path, logger: logging.Logger) -> None:
    """A venv without pip, the node's site folders after its own, then pip from the
    node's Python installing `spec.requirements` into it (what the node already has
    and satisfies them is not installed again; pip never touches the node's packages,
    which lie outside the target environment)."""
    logger.info("building the overlay %s of %s in %s", spec.key, list(spec.requirements), path)
    _run([sys.executable, "-m", "venv", "--without-pip", str(path)], logger)
    python = overlay_python(path)
    site_packages = _run([str(python), "-c", _PURELIB], logger).strip()
    # `site.addsitedir` (not a bare path line) also runs the node's own .pth files: an
    # editable install of embedserve is one.
    lines = [f"import site; site.addsitedir({folder!r})" for folder in spec.base_site_dirs]
    (Path(site_packages) / BASE_PTH).write_text("\n".join(lines) + "\n")
    # Each interpreter of the overlay holds a shared lock on IN_USE while it lives (the
    # open file is kept on `site`), so `prune` never removes an overlay a process runs.
    in_use = str(path / IN_USE)
    (Path(site_packages) / IN_USE_PTH).write_text(
        f"import fcntl, site; site.embedserve_overlay_in_use = open({in_use!r}, 'a'); "
        "fcntl.flock(site.embedserve_overlay_in_use, fcntl.LOCK_SH)\n"
    )
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install"]
    quiet = ["--disable-pip-version-check", "--no-warn-conflicts", "--no-input"]
    _run([*pip, *quiet, *spec.requirements], logger)


_PURELIB = "import sysconfig; print(sysconfig.get_path('purelib'))"


def _run(command: list[str], logger: logging.Logger) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        logger.error("overlay build step failed: %s\n%s", command, result.stderr)
        raise OverlayBuildError(
            f"`{' '.join(command[:6])} ...` exited {result.returncode}: "
            f"{result.stderr.strip()[-2000:]}"
        )
    return result.stdout


class OverlayBuildError(RuntimeError):
    """A step of an overlay's build failed (pip could not install the requirements)."""


def _complete(path: Path, spec: OverlaySpec, seconds: float) -> None:
    record = {**asdict(spec), "build_seconds": round(seconds, 1), "bytes": disk_usage(path)}
    partial = path / f"{COMPLETE}.partial"
    partial.write_text(json.dumps(record, indent=2))
    partial.rename(path / COMPLETE)
    _mark_used(path)


def _mark_used(path: Path) -> None:
    (path / LAST_USED).touch()


def disk_usage(path: Path) -> int:
    """Bytes of the files under `path` (links neither followed nor counted)."""
    files = (os.path.join(folder, name) for folder, _, names in os.walk(path) for name in names)
    return sum(os.lstat(file).st_size for file in files if not os.path.islink(file))


def prune(cache: Path, keep: int) -> list[Path]:
    """Remove whole overlays beyond the `keep` most recently used; returns the removed.

    An overlay being built (its lock held), or run by a live process (its IN_USE lock
    shared), is left alone: the bound is `keep` overlays plus those in use.
    """
    overlays = [p for p in cache.glob("overlay-*") if (p / COMPLETE).exists()]
    overlays.sort(key=lambda p: (p / LAST_USED).stat().st_mtime, reverse=True)
    removed = []
    for path in overlays[keep:]:
        with (
            _locked(cache / f"{path.name}.lock", wait=False) as not_building,
            _locked(path / IN_USE, wait=False) as unused,
        ):
            if not_building and unused:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


@contextmanager
def _locked(lock_file: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on `lock_file` while inside; yields whether it was acquired
    (always, when waiting). The kernel releases it when its process dies."""
    with open(lock_file, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def requirements_of(runtime_env: dict[str, Any]) -> list[str]:
    """The overlay's requirements in a runtime_env, validated.

    Raises:
        ValueError: not a non-empty list of requirement strings, or combined with a Ray
            field that chooses the worker's Python too.
    """
    requirements = runtime_env.get(PLUGIN_NAME)
    if (
        not isinstance(requirements, list)
        or not requirements
        or not all(isinstance(r, str) and r.strip() for r in requirements)
    ):
        raise ValueError(
            f"runtime_env.{PLUGIN_NAME} must be a non-empty list of pip requirements, "
            f"got {requirements!r}"
        )
    clashing = [name for name in PYTHON_CHOOSERS if runtime_env.get(name)]
    if clashing:
        raise ValueError(
            f"runtime_env.{PLUGIN_NAME} chooses the workers' Python; it cannot be combined "
            f"with {', '.join(clashing)}"
        )
    return list(requirements)


def plugin_registration(current: str | None) -> str:
    """`RAY_RUNTIME_ENV_PLUGINS` with this plugin added to what it names already."""
    plugins = json.loads(current) if current else []
    if not any(p.get("class") == PLUGIN_CLASS for p in plugins):
        plugins.append({"class": PLUGIN_CLASS})
    return json.dumps(plugins)


def registered_env() -> dict[str, str]:
    """The environment variable that makes Ray processes started from here load the
    plugin (their runtime-env agents read it when the node starts)."""
    return {PLUGINS_ENV_VAR: plugin_registration(os.environ.get(PLUGINS_ENV_VAR))}


class OverlayPlugin(RuntimeEnvPlugin):
    """Ray's runtime_env plugin for `embedserve_overlay`: builds or reuses the overlay on
    the node, then starts the workers with its Python.

    Ray's agent keeps a URI per overlay for the session; the overlay itself outlives the
    session, so it reports no disk to Ray's cache (which would delete it) and is bounded
    by `prune` instead.
    """

    name = PLUGIN_NAME

    def __init__(self) -> None:
        self._specs: dict[tuple[str, ...], OverlaySpec] = {}

    @staticmethod
    def validate(runtime_env_dict: dict) -> None:
        requirements_of(runtime_env_dict)

    def _spec(self, runtime_env: dict[str, Any]) -> OverlaySpec:
        # The node's distributions are read once per agent: it runs that environment.
        requirements = tuple(requirements_of(runtime_env))
        if requirements not in self._specs:
            self._specs[requirements] = OverlaySpec.of_this_python(requirements)
        return self._specs[requirements]

    def get_uris(self, runtime_env: Any) -> list[str]:
        if not runtime_env.get(PLUGIN_NAME):
            return []
        return [f"{PLUGIN_NAME}://{self._spec(runtime_env).key}"]

    async def create(self, uri: str | None, runtime_env: Any, context: Any, logger: Any) -> float:
        spec, cache = self._spec(runtime_env), cache_dir()
        overlay = await asyncio.to_thread(ensure_overlay, spec, cache, KEEP_OVERLAYS, logger)
        verb = f"built in {overlay.seconds:.0f} s" if overlay.built else "reused"
        logger.info("embedserve overlay %s %s", overlay.path, verb)
        return 0

    def modify_context(self, uris: Any, runtime_env: Any, context: Any, logger: Any) -> None:
        path = cache_dir() / self._spec(runtime_env).key
        _mark_used(path)
        context.py_executable = str(overlay_python(path))
