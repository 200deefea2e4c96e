"""The distribution installs one import name: `embedserve`, with its plugins and Serve layer.

The repository keeps its fixed folders (`serve_app/`, `plugins/`, `deployments/`); the
wheel maps them under `embedserve`, so nothing generic (`plugins`, `deployments`) lands
in a user's site-packages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("serve_app", "plugins", "deployments", "pyproject.toml", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """embedserve's wheel, built from a copy of the sources (the checkout stays clean)."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    out = tmp_path_factory.mktemp("wheel")
    build = ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)]
    subprocess.run(
        [sys.executable, "-m", "pip", *build],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("embedserve-*.whl")
    return built


def test_the_wheel_installs_one_top_level_name(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
    assert top == {"embedserve", "embedserve-0.1.0.dist-info"}
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for module in (
        "embedserve/backend.py",
        "embedserve/default_config.yaml",
        "embedserve/canaries/all-minilm-l6-v2-5e7aef57c43c.json",
        "embedserve/bulk/job.py",
        "embedserve/client/_clients.py",
        "embedserve/plugins/hash_backend.py",
        "embedserve/deployments/app.py",
    ):
        assert module in names


def test_a_fresh_venv_imports_embedserve_and_not_the_folder_names(
    wheel: Path, tmp_path: Path
) -> None:
    """Installed without the checkout on the path: `embedserve` and its subpackages import
    from the venv; `plugins`, `deployments` and `serve_app` do not exist there."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    target = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The dependencies (pydantic, pluggy, numpy, ...) come from this interpreter's
    # site-packages, appended after the venv's own: the venv's embedserve wins.
    (Path(target) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, str(wheel)],
        check=True,
        capture_output=True,
    )
    script = (
        "import importlib.util, embedserve, embedserve.plugins.hash_backend, "
        "embedserve.deployments.batching\n"
        "from embedserve import Backend, hookimpl\n"
        "print(embedserve.__file__)\n"
        "print([importlib.util.find_spec(n) for n in ('plugins', 'deployments', 'serve_app')])\n"
    )
    result = subprocess.run(
        [str(python), "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    location, missing = result.stdout.splitlines()
    assert location.startswith(target)
    assert missing == "[None, None, None]"


def test_the_editable_install_serves_the_same_names() -> None:
    script = (
        "import embedserve, embedserve.plugins, embedserve.deployments\n"
        "print(embedserve.__file__, embedserve.plugins.__file__, "
        "embedserve.deployments.__file__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd="/", capture_output=True, text=True, check=True
    )
    core, plugins, deployments = result.stdout.split()
    # Strict mode: links under build/ to the source files a person edits.
    assert Path(core).resolve().parent == REPO / "serve_app"
    assert Path(plugins).resolve().parent == REPO / "plugins"
    assert Path(deployments).resolve().parent == REPO / "deployments"


def test_a_clone_named_embedserve_does_not_shadow_the_package(tmp_path: Path) -> None:
    """Running the README's client example beside a clone named `embedserve`: the clone's
    folder (no `__init__.py`) is a namespace package to Python, which an import hook
    finder loses to; a path entry holding the real package wins."""
    clone = tmp_path / "embedserve"
    for name in ("serve_app", "plugins", "deployments"):
        (clone / name).mkdir(parents=True)
    script = "from embedserve import __version__\nimport embedserve.client\nprint(__version__)"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.1.0"
