"""OpenVINO as the runtime of an exported transformer (`runtime: openvino`, or chosen by
`runtime: auto`): the project's own ONNX export read by OpenVINO's API and compiled for
the CPU in float32, bfloat16 or float16.

The precision is OpenVINO's `INFERENCE_PRECISION_HINT`, always set: on a CPU with
bfloat16 instructions OpenVINO's default is bf16, which would make `fp32` a lie. The
compiled model is kept in `CACHE_DIR` (beside the export), so a later replica compiles
in a fraction of the time.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from embedserve import BackendUnavailable

_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
PRECISIONS = tuple(_HINTS)


def openvino_installed() -> bool:
    """Whether OpenVINO can be imported in this process."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def require_openvino() -> None:
    """Raises BackendUnavailable, with the install command, where OpenVINO is missing."""
    if not openvino_installed():
        raise BackendUnavailable(
            "runtime openvino needs OpenVINO, which is not installed in this replica: run "
            "`pip install 'embedserve[openvino]'` where the replica runs, or set "
            "`runtime: onnx` or `auto`"
        )


class OpenVinoTransformer:
    """Runs the exported transformer with OpenVINO: features in, token embeddings out."""

    def __init__(self, path: Path, precision: str, threads: int, cache_dir: Path) -> None:
        import openvino

        core = openvino.Core()
        model = core.read_model(str(path))
        compiled = core.compile_model(
            model,
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": _HINTS[precision],
                "INFERENCE_NUM_THREADS": threads,
                # One request at a time: the replica runs one batch at a time.
                "PERFORMANCE_HINT": "LATENCY",
                "NUM_STREAMS": 1,
                "CACHE_DIR": str(cache_dir),
            },
        )
        self._names = [port.get_any_name() for port in compiled.inputs]
        self._request = compiled.create_infer_request()
        # An infer request holds its tensors: the canary and a batch may call at once.
        self._lock = threading.Lock()

    def __call__(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        feeds = {name: features[name] for name in self._names}
        with self._lock:
            result = self._request.infer(feeds)
            return np.array(result[0], dtype=np.float32)
