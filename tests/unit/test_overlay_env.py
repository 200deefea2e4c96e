"""Overlay environments (`embedserve.runtime.overlay_env`), built for real from local wheels
(no index is asked): the overlay's packages win over the node's, the node's environment
is left as it was, a second use reuses the overlay without rebuilding it, concurrent
builders build once, a dead build is redone, a failed one leaves nothing, and the least
recently used overlays beyond the bound are removed (never one being built)."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import os
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import pytest
from ray._private.runtime_env.context import RuntimeEnvContext

from embedserve.runtime.overlay_env import (
    CACHE_ENV_VAR,
    COMPLETE,
    IN_USE,
    LAST_USED,
    PLUGIN_CLASS,
    PLUGIN_NAME,
    OverlayBuildError,
    OverlayPlugin,
    OverlaySpec,
    ensure_overlay,
    plugin_registration,
    prune,
    requirements_of,
)


def build_wheel(folder: Path, name: str, module: str, text: str) -> Path:
    """A pure-Python wheel of one module `module` whose `WHO` is `text`."""
    dist_info = f"{name}-1.0.dist-info"
    files = {
        f"{module}/__init__.py": f"WHO = {text!r}\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist_info}/RECORD"] = "".join(
        f"{path},,\n" for path in [*files, f"{dist_info}/RECORD"]
    )
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, content in files.items():
            archive.writestr(path, content)
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel whose module is named `yaml`: in an overlay it shadows the node's PyYAML."""
    return build_wheel(tmp_path_factory.mktemp("wheels"), "yaml_shadow", "yaml", "overlay")


@pytest.fixture(scope="module")
def built(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[OverlaySpec, Path]:
    """One overlay of the wheel over this venv, built once for the module."""
    cache = tmp_path_factory.mktemp("envs")
    spec = OverlaySpec.of_this_python([str(wheel)])
    overlay = ensure_overlay(spec, cache)
    assert overlay.built and overlay.path == cache / spec.key
    return spec, cache


def run_in(python: Path, code: str) -> str:
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()


def test_the_overlays_packages_win_and_the_rest_comes_from_the_node(built) -> None:
    spec, cache = built
    python = cache / spec.key / "bin" / "python"
    found = json.loads(
        run_in(
            python,
            "import json, yaml; from importlib.util import find_spec as f; "
            "print(json.dumps([yaml.WHO, yaml.__file__, f('ray').origin, "
            "f('embedserve').origin]))",
        )
    )
    who, yaml_file, ray_file, embedserve_file = found
    assert who == "overlay" and yaml_file.startswith(str(cache / spec.key))
    import ray
    import yaml

    assert ray_file == ray.__file__  # Ray (and torch, embedserve) are the node's
    assert Path(embedserve_file).name == "__init__.py"
    assert not hasattr(yaml, "WHO")  # the node's PyYAML is untouched


def test_a_second_use_reuses_the_overlay_without_building(built) -> None:
    spec, cache = built
    complete = cache / spec.key / COMPLETE
    before = complete.stat()
    started = time.monotonic()
    overlay = ensure_overlay(spec, cache)
    assert not overlay.built and time.monotonic() - started < 1
    after = complete.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    record = json.loads(complete.read_text())
    assert record["requirements"] == list(spec.requirements) and record["bytes"] > 0


def test_concurrent_builders_build_once_and_a_dead_build_is_redone(built) -> None:
    spec, cache = built
    other = dataclasses.replace(spec, base_distributions=("another-node-env==1",))
    leftover = cache / other.key / "half-written"
    leftover.parent.mkdir()
    leftover.write_text("a build that died here")
    results = []
    builders = [
        threading.Thread(target=lambda: results.append(ensure_overlay(other, cache)))
        for _ in range(2)
    ]
    for builder in builders:
        builder.start()
    for builder in builders:
        builder.join(timeout=120)
    assert sorted(r.built for r in results) == [False, True]
    assert not leftover.exists() and (cache / other.key / COMPLETE).exists()


def test_a_failed_build_raises_and_leaves_nothing(built, tmp_path: Path) -> None:
    spec, _ = built
    broken = dataclasses.replace(
        spec, requirements=(str(tmp_path / "missing-1.0-py3-none-any.whl"),)
    )
    with pytest.raises(OverlayBuildError, match="exited"):
        ensure_overlay(broken, tmp_path)
    assert not (tmp_path / broken.key).exists()


def fake_overlay(cache: Path, name: str, used_at: float) -> Path:
    path = cache / name
    path.mkdir(parents=True)
    (path / COMPLETE).write_text("{}")
    (path / LAST_USED).touch()
    os.utime(path / LAST_USED, (used_at, used_at))
    return path


def test_prune_keeps_the_most_recently_used_and_never_one_being_built(tmp_path: Path) -> None:
    now = time.time()
    paths = [fake_overlay(tmp_path, f"overlay-{age}", now - age * 60) for age in range(4)]
    with open(tmp_path / "overlay-3.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process builds overlay-3
        removed = prune(tmp_path, keep=2)
    assert removed == [paths[2]]
    assert [p.exists() for p in paths] == [True, True, False, True]


def test_prune_never_removes_an_overlay_a_process_runs(built) -> None:
    spec, cache = built
    path = cache / spec.key
    (path / LAST_USED).touch()
    os.utime(path / LAST_USED, (0, 0))  # the least recently used of the cache
    running = subprocess.Popen(
        [str(path / "bin" / "python"), "-c", "input()"], stdin=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while not in_use(path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert in_use(path)
        assert path not in prune(cache, keep=0)
    finally:
        running.communicate(b"\n", timeout=30)
    assert path.exists() and not in_use(path)


def in_use(path: Path) -> bool:
    """Whether a process holds the overlay's in-use lock."""
    with open(path / IN_USE, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def test_the_key_follows_requirements_python_and_the_nodes_packages(built) -> None:
    spec, _ = built
    assert OverlaySpec.of_this_python(spec.requirements).key == spec.key
    variants = [
        dataclasses.replace(spec, requirements=("einops",)),
        dataclasses.replace(spec, python="/usr/bin/python3 3.12.1"),
        dataclasses.replace(spec, base_distributions=(*spec.base_distributions, "x==1")),
    ]
    assert len({v.key for v in variants} | {spec.key}) == 4


@pytest.mark.parametrize(
    ("runtime_env", "why"),
    [
        ({PLUGIN_NAME: []}, "non-empty list"),
        ({PLUGIN_NAME: "einops"}, "non-empty list"),
        ({PLUGIN_NAME: ["einops", ""]}, "non-empty list"),
        ({PLUGIN_NAME: ["einops"], "pip": ["torch"]}, "cannot be combined with pip"),
        ({PLUGIN_NAME: ["einops"], "py_executable": "python3"}, "with py_executable"),
    ],
)
def test_bad_requirements_are_refused(runtime_env: dict, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        OverlayPlugin.validate(runtime_env)


def test_requirements_pass_with_ray_fields_that_do_not_choose_python() -> None:
    runtime_env = {PLUGIN_NAME: ["einops"], "env_vars": {"A": "1"}}
    assert requirements_of(runtime_env) == ["einops"]


def test_the_registration_adds_the_plugin_once_to_others() -> None:
    other = json.dumps([{"class": "somewhere.Plugin", "priority": 5}])
    registered = plugin_registration(other)
    assert json.loads(registered) == [
        {"class": "somewhere.Plugin", "priority": 5},
        {"class": PLUGIN_CLASS},
    ]
    assert plugin_registration(registered) == registered
    assert json.loads(plugin_registration(None)) == [{"class": PLUGIN_CLASS}]


def test_the_plugin_starts_workers_with_the_overlays_python(
    built, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, cache = built
    monkeypatch.setenv(CACHE_ENV_VAR, str(cache))
    plugin, runtime_env = OverlayPlugin(), {PLUGIN_NAME: list(spec.requirements)}
    assert plugin.get_uris(runtime_env) == [f"{PLUGIN_NAME}://{spec.key}"]
    assert plugin.get_uris({"env_vars": {}}) == []
    context = RuntimeEnvContext()
    # Reported as no disk to Ray's per-session cache, which would otherwise delete it.
    assert asyncio.run(plugin.create(None, runtime_env, context, plugin_logger())) == 0
    plugin.modify_context([], runtime_env, context, plugin_logger())
    assert context.py_executable == str(cache / spec.key / "bin" / "python")


def plugin_logger():
    import logging

    return logging.getLogger("test-overlay-plugin")
