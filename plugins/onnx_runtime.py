"""The exported runtimes' shared half: the cache of ONNX exports, running one with ONNX
Runtime on the CPU (float32, `runtime: onnx`, or int8 weights, `runtime: onnx-int8`),
and the fidelity measure against torch's float32 vectors.

Nothing here imports torch. An export missing from the cache is built by a subprocess
(`embedserve.plugins.onnx_export`, which does import torch) and exits, so the replica
that serves it stays torch-free; later replicas find the export in the cache.

float32 in ONNX Runtime computes the same vectors as torch up to rounding (cosine above
0.99999 on the probes, checked at every load), so its vectors stay in the torch model's
space. The int8 recipe and its measurements are in `onnx_export`; quantised vectors are
a space of their own (`INT8_RECIPE` in the space id).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedserve import BackendUnavailable
from embedserve.runtime.locations import user_cache

# Part of the int8 space identity: change it whenever the recipe changes the vectors.
INT8_RECIPE = "onnx-int8-dynamic-v2"
# Only names the cached float32 export: its vectors are the torch model's.
FLOAT32_RECIPE = "onnx-float32-v1"
# The torch float32 vectors of the canary probes, written beside each export: one file
# per module list (`pipeline_digest`), as models with one transformer may pool differently.
REFERENCE_FILE = "reference-{pipeline}.npy"
OPSET = 17


class OnnxQualityError(RuntimeError):
    """The exported model's vectors are too far from torch's to be served."""


class ExportFailed(RuntimeError):
    """The export subprocess failed; the message ends with its error output."""


def require_onnxruntime(runtime: str) -> None:
    """Raises BackendUnavailable, with the install command, where ONNX Runtime or onnx
    (which torch's exporter needs) is missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise BackendUnavailable(
            f"runtime {runtime} needs ONNX Runtime and onnx, which are not installed in this "
            "replica: run `pip install 'embedserve[onnx]'` where the replica runs, or set "
            "`runtime: torch`"
        ) from None


def default_cache_dir() -> Path:
    """Where exported models are kept between replica starts."""
    return user_cache("onnx")


def cache_key(weights_sha256: str, recipe: str) -> str:
    """The cache folder name: the weights, the recipe and the runtime that built the file."""
    import onnxruntime

    material = f"{weights_sha256}:{recipe}:{onnxruntime.__version__}:{OPSET}"
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def pipeline_digest(folder: Path) -> str:
    """What decides a model's vectors beyond its transformer: `modules.json` and the files
    of the modules after the transformer (pooling, Dense weights, ...)."""
    digest = hashlib.sha256((folder / "modules.json").read_bytes())
    modules = json.loads((folder / "modules.json").read_text())
    for entry in modules:
        if entry.get("path"):
            for path in sorted((folder / entry["path"]).rglob("*")):
                if path.is_file():
                    digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class ExportedModel:
    """A cached export: the ONNX file and torch's float32 vectors of the canary probes."""

    path: Path
    reference: np.ndarray

    @property
    def compiled_cache(self) -> Path:
        """Where a runtime that compiles the file (OpenVINO) keeps its compiled blobs."""
        return self.path.parent / "compiled"


def exported_model(
    folder: Path, weights_sha256: str, recipe: str, cache_dir: Path, trust_remote_code: bool
) -> ExportedModel:
    """The export of the model in `folder` for `recipe`, built once per cache key by the
    export subprocess (which also writes a model's reference vectors where the export is
    there but they are not); replicas starting together each build in a temporary folder
    and rename, so a reader sees no file or a whole one."""
    target = cache_dir / cache_key(weights_sha256, recipe) / "model.onnx"
    reference = target.parent / REFERENCE_FILE.format(pipeline=pipeline_digest(folder))
    if not (target.is_file() and reference.is_file()):
        command = [sys.executable, "-m", "embedserve.plugins.onnx_export"]
        command += [str(folder), recipe, str(target)]
        if trust_remote_code:
            command.append("--trust-remote-code")
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ExportFailed(f"the {recipe} export of {folder} failed:\n{done.stderr[-4000:]}")
    return ExportedModel(target, np.load(reference))


class OnnxTransformer:
    """Runs the exported transformer with ONNX Runtime: features in, token embeddings out."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        # One graph, run one batch at a time: no parallel branches to feed.
        options.inter_op_num_threads = 1
        # Idle worker threads sleep instead of spinning: in a replica the Serve proxy and
        # the router share the cores, and spinning threads took their time (one short
        # text over HTTP: p50 16.1-16.8 ms without spinning, 18.1-18.4 ms with it).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self._names = [entry.name for entry in self._session.get_inputs()]

    def __call__(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        feeds = {name: features[name] for name in self._names}
        return np.asarray(self._session.run(None, feeds)[0])


def worst_cosine(reference: np.ndarray, vectors: np.ndarray) -> float:
    """The smallest cosine between matching rows of `reference` and `vectors`."""
    a = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    b = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())
