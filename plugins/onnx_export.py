"""The export of a sentence-transformers model's transformer to ONNX, and its int8
quantisation: the only code of the exported runtimes that needs torch.

It runs in a subprocess of its own (`python -m embedserve.plugins.onnx_export`), started
by `onnx_runtime.exported_model` when the cache has no export for the weights and recipe
yet, so the replica that serves the export never imports torch. Beside `model.onnx` the
subprocess writes `reference.npy`: sentence-transformers' float32 vectors of the canary
probes, on torch, which every replica's fidelity gate compares its runtime against.

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

import argparse
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from embedserve.plugins.onnx_runtime import INT8_RECIPE, OPSET, REFERENCE_FILE, pipeline_digest
from embedserve.runtime.canary import DEFAULT_PROBES


def build(folder: Path, recipe: str, target: Path, trust_remote_code: bool) -> None:
    """Export (and for `INT8_RECIPE` quantise) the model in `folder` to `target` unless it
    is there, and write torch's reference vectors of the model's module list beside it.
    The export is built in a temporary folder and renamed into place, so a reader sees no
    file or a whole one."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", trust_remote_code=trust_remote_code)
    model.eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    reference = model.encode(list(DEFAULT_PROBES), convert_to_numpy=True).astype(np.float32)
    name = REFERENCE_FILE.format(pipeline=pipeline_digest(folder))
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        np.save(Path(work) / name, reference)
        os.replace(Path(work) / name, target.parent / name)
        if target.is_file():
            return
        built = Path(work) / "model.onnx"
        export_transformer(model, built)
        if recipe == INT8_RECIPE:
            quantized = Path(work) / "model.int8.onnx"
            quantize(built, quantized)
            built = quantized
        # rename is atomic: a reader sees no file or a whole one.
        os.replace(built, target)


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
        # torch's own warning class, though torch.jit's __all__ does not list it.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # pyright: ignore[reportPrivateImportUsage]
        # The mask code's indices are never negative, which is all this warning is about.
        warnings.filterwarnings("ignore", "Exporting aten::index operator")
        torch.onnx.export(
            module,
            tuple(features[name] for name in names),
            str(path),
            input_names=names,
            output_names=["token_embeddings"],
            dynamic_axes=axes,
            opset_version=OPSET,
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


def main() -> None:
    """The export subprocess: `python -m embedserve.plugins.onnx_export FOLDER RECIPE
    TARGET [--trust-remote-code]`."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("recipe")
    parser.add_argument("target", type=Path)
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args()
    build(args.folder, args.recipe, args.target, args.trust_remote_code)


if __name__ == "__main__":
    main()
