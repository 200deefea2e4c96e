"""The ONNX Runtime paths of sentence-transformers models on the CPU: the transformer
exported to ONNX and run by ONNX Runtime, in float32 (`runtime: onnx`) or with its weight
matrices quantised to int8 (`runtime: onnx-int8`, dynamic quantisation).

Only the transformer moves to ONNX Runtime; tokenisation, prompts, pooling, Dense layers,
`truncate_dim` and normalisation stay sentence-transformers' own, so the pipeline around
the model is the same one the torch path runs.

float32 in ONNX Runtime computes the same vectors as torch up to rounding (cosine above
0.99999 on the probes, checked at every load) and on all-MiniLM-L6-v2 with 2 CPU
threads about 1.5x as fast (`tests/benchmarks/bench_throughput.py`), so its vectors stay
in the torch model's space.

The int8 recipe (why these choices, measured on all-MiniLM-L6-v2 and pydoc_data.topics):
- weights per output channel: per-tensor scales cost about 0.07 of cosine on some texts;
- only matrix products with a constant weight (`MatMulConstBOnly`): quantising the
  attention score products (activation x activation) took the worst cosine to 0.92;
- the first layer's feed-forward output projection stays float32. The inputs of these
  projections (GELU outputs) carry outlier channels (max/rms 94 and 93 in layers 0 and
  1, 25-83 after); kept in float32 one layer at a time, layer 0's lifts the worst cosine
  most (0.9909 on 256 chunks, 0.9878-0.9896 for any other). Keeping all six in float32
  (recipe v1) ran at 2.1x the torch docs/s instead of 2.6x, with a worst cosine of 0.979
  (on titles) instead of 0.9875.
Measured worst cosines to float32: canary probes 0.9914, 96 paragraphs 0.9895, 79 topic
titles 0.9887, 320 chunks of ~64 tokens 0.9875; recall@10 on the topic set equals torch's.
Activations are quantised per batch tensor at run time, so a text's vector depends a
little on the other texts of its batch (cosine >= 0.99 between the two); quantised
vectors are a space of their own and the space id says so.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from embedserve import BackendUnavailable

# Part of the int8 space identity: change it whenever the recipe changes the vectors.
INT8_RECIPE = "onnx-int8-dynamic-v2"
# Only names the cached float32 export: its vectors are the torch model's.
FLOAT32_RECIPE = "onnx-float32-v1"
# The worst cosine to torch's vectors accepted on the canary probes before serving: for
# float32 only rounding may differ; int8 is a space of its own with a looser bar.
MIN_PROBE_COSINE = {FLOAT32_RECIPE: 0.99999, INT8_RECIPE: 0.99}
_OPSET = 17


class OnnxQualityError(RuntimeError):
    """The ONNX model's vectors are too far from torch's to be served."""


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
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "embedserve" / "onnx"


def cache_key(weights_sha256: str, recipe: str) -> str:
    """The cache folder name: the weights, the recipe and the runtime that built the file."""
    import onnxruntime

    material = f"{weights_sha256}:{recipe}:{onnxruntime.__version__}:{_OPSET}"
    return hashlib.sha256(material.encode()).hexdigest()[:24]


def onnx_model(model: Any, weights_sha256: str, recipe: str, cache_dir: Path) -> Path:
    """The ONNX file of `model`'s transformer for `recipe`, exported (and quantised) once
    per cache key; replicas starting together each build in a temporary folder and rename."""
    target = cache_dir / cache_key(weights_sha256, recipe) / "model.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        built = Path(work) / "model.onnx"
        export_transformer(model, built)
        if recipe == INT8_RECIPE:
            quantized = Path(work) / "model.int8.onnx"
            quantize(built, quantized)
            built = quantized
        # rename is atomic: a reader sees no file or a whole one.
        os.replace(built, target)
    return target


def model_input_names(model: Any) -> list[str]:
    """The tokenizer outputs the transformer takes (`token_type_ids` only where used)."""
    features = model.preprocess(["probe"])
    accepted = ("input_ids", "attention_mask", "token_type_ids")
    return [name for name in accepted if name in features]


def export_transformer(model: Any, path: Path) -> None:
    """Export the Hugging Face model inside `model` (a SentenceTransformer) to ONNX with
    dynamic batch and sequence axes; its output is the token embeddings."""
    import torch

    names = model_input_names(model)
    features = model.preprocess(["an example", "a longer example text for export"])
    module = _token_embeddings_module(model[0].auto_model, names)
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "token_embeddings"]}
    with torch.inference_mode(), warnings.catch_warnings():
        # The tracer warns of the mask code's shape tests; in an encoder they are constant
        # (no cache padding, not causal), and the load-time check compares the vectors.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # The mask code's indices are never negative, which is all this warning is about.
        warnings.filterwarnings("ignore", "Exporting aten::index operator")
        torch.onnx.export(
            module,
            tuple(features[name] for name in names),
            str(path),
            input_names=names,
            output_names=["token_embeddings"],
            dynamic_axes=axes,
            opset_version=_OPSET,
            # The TorchScript exporter: the dynamo one needs onnxscript and handles
            # the attention-mask code of transformers 5 no better.
            dynamo=False,
        )


def quantize(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the weight matrices, per the recipe above."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source)).graph
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        # Only the first layer's stays float32: see the module docstring.
        nodes_to_exclude=down_projections(graph)[:1],
        extra_options={"MatMulConstBOnly": True},
    )


def _token_embeddings_module(model: Any, names: list[str]) -> Any:
    """`model` (a Hugging Face model) as a module with positional inputs and a tensor
    output: what the exporter traces (its forward takes keywords, returns a ModelOutput)."""
    import torch

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    return TokenEmbeddings().eval()


def down_projections(graph: Any) -> list[str]:
    """The matrix products whose constant weight maps a wider input to a narrower output:
    the feed-forward output projections, found by shape rather than by layer names, which
    differ from one architecture to the next."""
    shapes = {init.name: tuple(init.dims) for init in graph.initializer}
    return [
        node.name
        for node in graph.node
        if node.op_type == "MatMul"
        and len(shape := shapes.get(node.input[1], ())) == 2
        and shape[0] > shape[1]
    ]


class OnnxTransformer:
    """Runs the exported transformer: features in, token embeddings out."""

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

    def __call__(self, features: Mapping[str, Any]) -> np.ndarray:
        feeds = {name: features[name].numpy().astype(np.int64) for name in self._names}
        return self._session.run(None, feeds)[0]


def run_transformer_with(model: Any, transformer: OnnxTransformer) -> None:
    """Make `model` (a SentenceTransformer) compute token embeddings with `transformer`.

    The forward of its first module is replaced on that instance only, so `encode` keeps
    its length sorting, prompts, pooling, `truncate_dim` and normalisation."""
    import torch

    first = model[0]

    def forward(features: dict[str, Any], **_: Any) -> dict[str, Any]:
        features["token_embeddings"] = torch.from_numpy(transformer(features))
        return features

    first.forward = forward
    # The torch weights are not used any more (they were ~87 MB). `encode` walks every
    # module and parameter of the model at each call (`eval()`, its device check): with
    # the transformer's modules that was 1.3 ms of a 10.2 ms one-text call on 2 threads.
    first.model = _exported_transformer(first.model.config)


def _exported_transformer(config: Any) -> Any:
    """A module standing in for the Hugging Face model an ONNX export replaced: its config
    (the shape the token budget reads), on the CPU, without weights."""
    import torch

    class ExportedTransformer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = config
            # One empty parameter: where callers look for the model's device and dtype.
            self.anchor = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    return ExportedTransformer()


def check_quality(torch_vectors: np.ndarray, onnx_vectors: np.ndarray, recipe: str) -> float:
    """The worst cosine between torch's and ONNX Runtime's vectors of the canary probes;
    raises when it is under the recipe's bar, so a model that exports or quantises badly
    is never served."""
    cosines = _cosines(torch_vectors, onnx_vectors)
    worst = float(cosines.min())
    bar = MIN_PROBE_COSINE[recipe]
    if worst < bar:
        raise OnnxQualityError(
            f"{recipe} vectors are too far from torch's (worst probe cosine {worst:.6f} < "
            f"{bar}); serve this model with `runtime: torch`"
        )
    return worst


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)
