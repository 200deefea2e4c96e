"""The multimodal chain of cluster/multimodal-chain.yaml, end to end: SigLIP 2 (`clip`) >
Nomic Embed (`nomic`, in a replica environment of its own with transformers<5) >
`openai-compatible`, on this machine's Ray with tiny models.

- The shipped `embedserve_overlay` runtime_env really builds here: embedserve's runtime_env
  plugin, loaded by this Ray's node, makes the overlay (transformers 4 from PyPI over this
  venv) in the node's cache folder, outside Ray's. The nomic replica runs from it, passes
  the backend's real transformers<5 guard (nothing patched), and says from inside its
  process which transformers it runs, while the router runs transformers 5. Its text and
  image vectors agree with Nomic's model-card computation (`embedserve verify`, run with
  the replica's Python, in-process and over HTTP).
- The overlay stays within the disk the README states, Ray's session folders hold no
  environment, and a second Ray session reuses the overlay without rebuilding it.
- With every backend up, SigLIP 2 answers; with its weights corrupted (its canary refuses
  the replica), Nomic answers in its own space, `fallback: true`; with both corrupted, the
  remote API answers (a real OpenAI-compatible server in a thread).
- `embedserve reencode` moves the rows that the fallback wrote (a bulk job of `--backend
  nomic`) into SigLIP 2's space, and its report counts them.

It lives with the bulk tests for their Ray, the one with the job API that `embedserve
encode` and `reencode` submit to. What stands in for Nomic's remote code: see
tests/models/tiny.py (`build_nomic_text`, `build_nomic_vision`).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from embedserve.bulk.reencode import REPORT_FILE
from embedserve.cli.main import main
from embedserve.config import parse_config
from embedserve.plugins.model_files import CPU_TOKEN_BUDGET
from embedserve.runtime.overlay_env import COMPLETE, cache_dir, disk_usage, registered_env
from tests.bulk.conftest import output_vectors, write_jsonl
from tests.integration.conftest import backend_handle, free_port
from tests.models.tiny import build_clip_family, build_corrupted_copy, photo_file
from tests.unit.test_openai_compatible import Remote

pytestmark = [pytest.mark.integration, pytest.mark.models, pytest.mark.runtime_env]

REPO = Path(__file__).resolve().parents[2]
SHIPPED = yaml.safe_load((REPO / "cluster/multimodal-chain.yaml").read_text())
NOMIC_ENV = SHIPPED["backends"]["nomic"]["resources"]["runtime_env"]
# The README's figure for Nomic's overlay is 136 MB; Ray's session folder holds only
# what Ray writes there itself (no environment: Ray's pip runtime_env put 6.9 GB there).
OVERLAY_BOUND = 200 * 2**20
SESSION_RESOURCES_BOUND = 10 * 2**20
CORPUS = [f"document {i}: a short text about cats, ray serve and vector spaces" for i in range(12)]


def _build_nomic_stand_ins(folder: Path) -> dict[str, Any]:
    """In Nomic's replica environment (as Nomic's checkpoints were saved by transformers
    4): the stand-in models, and what that environment runs."""
    import sys

    import transformers

    from tests.models.tiny import build_nomic_text, build_nomic_vision

    build_nomic_text(folder / "nomic-text")
    build_nomic_vision(folder / "nomic-vision")
    return {"transformers": transformers.__version__, "python": sys.executable}


@pytest.fixture(scope="module")
def nomic_env(dashboard: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shipped nomic runtime_env, its overlay built from PyPI on first use (in the
    bulk Ray's cache folder, removed with that Ray), with the stand-in models built
    inside it."""
    import ray

    folder = tmp_path_factory.mktemp("models")
    started = time.monotonic()
    build = ray.remote(runtime_env=NOMIC_ENV)(_build_nomic_stand_ins)
    env = ray.get(build.remote(folder), timeout=600)
    seconds = time.monotonic() - started
    print(f"\nnomic overlay: first use built in {seconds:.0f} s")
    return {**env, "folder": folder, "first_use_s": seconds}


@pytest.fixture(scope="module")
def models(nomic_env: dict) -> dict[str, Path]:
    """Tiny SigLIP 2 and the Nomic stand-ins, and copies of them with corrupted weights."""
    folder = nomic_env["folder"]
    found = {
        "siglip2": build_clip_family("siglip2", folder / "siglip2"),
        "nomic-text": folder / "nomic-text",
        "nomic-vision": folder / "nomic-vision",
    }
    for name in ("siglip2", "nomic-text"):
        # The same folder name: the same space id, as weights corrupted on disk would keep.
        found[f"corrupted-{name}"] = build_corrupted_copy(found[name], folder / "bad" / name)
    return found


@pytest.fixture(scope="module")
def remote() -> Iterator[Remote]:
    """An OpenAI-compatible embeddings server in a thread of this process."""
    server = Remote()
    yield server
    server.server.shutdown()


def chain_config(
    models: dict[str, Path], remote: Remote, tmp: Path, siglip2: str, nomic: str
) -> dict[str, Any]:
    """The shipped config with the tiny models' folders and the local remote API, and a
    model `nomic` of the nomic backend alone (to look at it while SigLIP 2 answers)."""
    config = json.loads(json.dumps(SHIPPED))
    backends = config["backends"]
    for name, folder in (("siglip2", models[siglip2]), ("nomic", models[nomic])):
        backends[name]["options"]["model"] = str(folder)
        del backends[name]["options"]["model_id"]  # the tiny folders name their spaces
    backends["nomic"]["options"].update(
        vision_model=str(models["nomic-vision"]), dimensions=64, max_seq_length=128
    )
    backends["openai"]["options"].update(base_url=remote.url, api_key_env=None)
    config["models"]["nomic"] = {"chain": ["nomic"]}
    config["server"] = {"state_dir": str(tmp / "state")}
    return config


@pytest.fixture(scope="module")
def app(dashboard: str) -> Iterator[Any]:
    """Serve on the bulk tests' Ray; `app(config)` deploys a config and returns its URL."""
    from ray import serve

    from embedserve.deployments.app import APP_NAME, build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})

    def deploy(config: dict[str, Any]) -> str:
        serve.run(build_app(parse_config(config)), name=APP_NAME, route_prefix="/")
        return f"http://127.0.0.1:{port}"

    yield deploy
    serve.shutdown()


def in_replica(backend: str) -> dict[str, str]:
    """Asked inside the backend's replica process: the transformers it imported, and the
    Python it runs."""
    import ray

    def libraries(replica: Any) -> dict[str, str]:
        import importlib.metadata
        import sys

        # The router imports transformers when it first loads a tokenizer (lazily, for a
        # request); until then, the version its environment would import.
        module = sys.modules.get("transformers")
        version = module.__version__ if module else importlib.metadata.version("transformers")
        return {"transformers": version, "python": sys.executable}

    [name] = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == "serve" and f"#{backend}#" in actor["name"]
    ]
    replica = ray.get_actor(name, namespace="serve")
    return ray.get(replica.__ray_call__.remote(libraries), timeout=60)


def embed_text(url: str, model: str, text: str, **fields: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/v1/embeddings", json={"model": model, "input": [text], **fields}, timeout=60
    )
    assert response.status_code == 200, response.text
    return response.json()


def embed_image(url: str, model: str) -> httpx.Response:
    image = base64.b64encode(photo_file("chelsea")).decode()
    body = {"model": model, "items": [{"image": image}]}
    return httpx.post(f"{url}/v1/embed", json=body, timeout=60)


@pytest.fixture(scope="module")
def all_up(app, models, remote, tmp_path_factory) -> tuple[str, dict[str, Any], Path]:
    """Every backend up: the URL, the config and its file (for the CLI)."""
    tmp = tmp_path_factory.mktemp("all-up")
    config = chain_config(models, remote, tmp, "siglip2", "nomic-text")
    path = tmp / "multimodal-chain.yaml"
    path.write_text(yaml.safe_dump(config))
    return app(config), config, path


def test_nomic_runs_transformers_4_from_its_overlay_environment(all_up, nomic_env) -> None:
    url, _, _ = all_up
    replica, router = in_replica("nomic"), in_replica("router")
    assert replica["transformers"].startswith("4.") and router["transformers"].startswith("5.")
    # The environment the build task ran in, reused by Ray for the replica: one build.
    assert replica == {"transformers": nomic_env["transformers"], "python": nomic_env["python"]}
    assert Path(replica["python"]).parents[2] == cache_dir()
    # The real guard passed in the replica: it loaded, and its batch token budget comes
    # from its loaded text tower (on a CPU); it serves, as nomic, in its own space.
    described = backend_handle("nomic").describe.remote().result(timeout_s=60)
    assert described.available and described.reason is None
    assert described.batching.max_batch_tokens == CPU_TOKEN_BUDGET
    assert [m.value for m in described.capabilities.modalities] == ["text", "image"]
    body = embed_text(url, "nomic", "a cat on a sofa", input_type="query")
    assert body["backend"] == "nomic" and body["fallback"] is False
    assert len(body["data"][0]["embedding"]) == 64


def test_nomic_serves_texts_with_task_prefixes_and_images(all_up) -> None:
    url, config, _ = all_up
    space = parse_config(config).space_id("nomic")
    query = embed_text(url, "nomic", "ray serve", input_type="query")
    document = embed_text(url, "nomic", "ray serve", input_type="document")
    vectors = [np.array(body["data"][0]["embedding"]) for body in (query, document)]
    assert not np.allclose(*vectors)  # `search_query: ` against `search_document: `
    response = embed_image(url, "nomic")
    assert response.status_code == 200, response.text
    image = response.json()
    assert (
        (image["backend"], image["space_id"])
        == ("nomic", space)
        == (
            query["backend"],
            query["space_id"],
        )
    )
    assert np.isclose(np.linalg.norm(image["data"][0]["dense"]), 1, atol=1e-5)


def test_verify_nomic_against_its_model_card_in_its_environment(all_up, nomic_env) -> None:
    url, _, path = all_up
    verify = [nomic_env["python"], "-m", "embedserve.cli.main", "verify", "--config", str(path)]
    for where in (["--in-process"], ["--url", url]):
        result = subprocess.run(
            [*verify, "--model", "nomic", *where], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "passed against transformers 4." in result.stdout
        assert "(16 texts, 3 images)" in result.stdout
        print(result.stdout)


def test_with_every_backend_up_siglip2_answers(all_up) -> None:
    url, config, _ = all_up
    space = parse_config(config).space_id("siglip2")
    body = embed_text(url, "multimodal", "a cat on a sofa")
    assert (body["backend"], body["space_id"], body["fallback"]) == ("siglip2", space, False)
    image = embed_image(url, "multimodal").json()
    assert (image["backend"], image["space_id"], image["fallback"]) == ("siglip2", space, False)


def test_with_siglip2_corrupted_nomic_answers_in_its_own_space(
    app, models, remote, tmp_path
) -> None:
    config = chain_config(models, remote, tmp_path, "corrupted-siglip2", "nomic-text")
    url = app(config)
    space = parse_config(config).space_id("nomic")
    body = embed_text(url, "multimodal", "a cat on a sofa")
    assert (body["backend"], body["space_id"], body["fallback"]) == ("nomic", space, True)
    [reason] = body["fallback_reasons"]
    assert reason["backend"] == "siglip2" and "canary" in reason["reason"]
    image = embed_image(url, "multimodal")
    assert image.status_code == 200, image.text
    assert (image.json()["backend"], image.json()["space_id"]) == ("nomic", space)


def test_with_both_corrupted_the_remote_api_answers(app, models, remote, tmp_path) -> None:
    config = chain_config(models, remote, tmp_path, "corrupted-siglip2", "corrupted-nomic-text")
    url = app(config)
    space = parse_config(config).space_id("openai")
    body = embed_text(url, "multimodal", "a cat on a sofa")
    assert (body["backend"], body["space_id"], body["fallback"]) == ("openai", space, True)
    assert [r["backend"] for r in body["fallback_reasons"]] == ["siglip2", "nomic"]
    assert remote.requests[-1]["input"] == ["a cat on a sofa"]
    # No backend left that embeds images: an honest error, not another space's vectors.
    image = embed_image(url, "multimodal")
    assert image.status_code >= 400 and "error" in image.json(), image.text


def test_reencode_moves_the_fallbacks_rows_into_the_primarys_space(
    all_up, app, dashboard: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ray import serve

    serve.shutdown()  # the bulk encoders need the replicas' CPUs
    _, config, path = all_up
    parsed = parse_config(config)
    rows = [{"id": f"d{i}", "text": text} for i, text in enumerate(CORPUS)]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", rows)
    old = tmp_path / "written-by-nomic"
    job = ["--model", "multimodal", "--config", str(path), "--address", dashboard, "--wait"]
    assert main(["encode", str(corpus), "--output", str(old), "--backend", "nomic", *job]) == 0
    assert len(output_vectors(old)) == len(CORPUS)

    assert main(["reencode", str(old), "--source", str(corpus), *job]) == 0
    new = old.with_name(f"{old.name}.{parsed.space_id('siglip2')}")
    report = json.loads((new / REPORT_FILE).read_text())
    assert report["old"]["space_id"] == parsed.space_id("nomic")
    assert report["new"]["space_id"] == parsed.space_id("siglip2")
    assert report["old"]["vectors"] == report["new"]["vectors"] == len(CORPUS)
    assert report["complete"] and report["missing"] == 0
    assert sorted(output_vectors(new)) == sorted(output_vectors(old))
    assert f"{len(CORPUS)} re-embedded in {parsed.space_id('siglip2')}" in capsys.readouterr().out


SECOND_SESSION = """
import json, sys, time, ray
ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=sys.argv[1],
         logging_level="ERROR", log_to_driver=False)

def python():
    return sys.executable

ray.get(ray.remote(python).remote(), timeout=120)  # the session is up: its agent too
started = time.monotonic()
task = ray.remote(runtime_env=json.loads(sys.argv[2]))(python)
found = ray.get(task.remote(), timeout=120)
print(json.dumps({"python": found, "seconds": time.monotonic() - started}))
"""


def session_resources(session_dir: Path) -> int:
    """Bytes under a Ray session's runtime_resources folder (where Ray's pip, uv and conda
    runtime_envs put their environments)."""
    return disk_usage(session_dir / "runtime_resources")


def test_the_overlay_is_bounded_and_ray_sessions_hold_no_environment(nomic_env) -> None:
    from ray._private import worker

    overlay = Path(nomic_env["python"]).parents[1]
    size = disk_usage(overlay)
    print(f"\nnomic overlay: {size / 2**20:.0f} MB in {overlay}")
    assert size < OVERLAY_BOUND
    assert (
        json.loads((overlay / COMPLETE).read_text())["requirements"]
        == NOMIC_ENV["embedserve_overlay"]
    )
    node = worker._global_node  # this process's connection: the bulk tests' Ray
    assert node is not None
    session = Path(node.get_session_dir_path())
    assert session_resources(session) < SESSION_RESOURCES_BOUND


def test_a_second_ray_session_reuses_the_overlay(nomic_env) -> None:
    complete = Path(nomic_env["python"]).parents[1] / COMPLETE
    built = complete.stat()
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-second-"))  # short: Ray's socket paths
    try:
        result = subprocess.run(
            [sys.executable, "-c", SECOND_SESSION, str(temp_dir), json.dumps(NOMIC_ENV)],
            env={**os.environ, **registered_env()},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        second = json.loads(result.stdout.strip().splitlines()[-1])
        [session] = temp_dir.glob("session_2*")
        assert session_resources(session) < SESSION_RESOURCES_BOUND
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    print(f"\nnomic overlay: the second session's first task in it: {second['seconds']:.1f} s")
    assert second["python"] == nomic_env["python"]
    # Not rebuilt: its completion record is the same file, untouched.
    again = complete.stat()
    assert (again.st_ino, again.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    assert second["seconds"] < 20  # a worker's start; the first use took tens of seconds
