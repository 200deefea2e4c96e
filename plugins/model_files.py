"""Where a model's files are and how it runs: shared by every backend that loads a
model folder (sentence-transformers, clip, bge-m3, nomic, open-clip).

Nothing here imports torch at module import; the functions that need it import it
when called, inside the replica.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from embedserve.runtime.locations import PACKAGE_SCHEME, package_path

Dtype = Literal["auto", "float32", "float16", "bfloat16"]


class ModelLocation(Protocol):
    """The options that say where a model is: its reference, public id and revision."""

    model: str
    model_id: str | None
    revision: str | None


def resolve_model_path(model: str) -> Path | None:
    """The local folder of `model`, or None when it is a hub id."""
    if model.startswith(PACKAGE_SCHEME):
        return package_path(model)
    path = Path(model).expanduser()
    if path.is_absolute() or model.startswith((".", "~")) or path.exists():
        return path
    return None


def model_id(options: ModelLocation) -> str:
    """The public id of the configured model (for the space id and attribution): its
    `model_id`, else the package of a `pkg:` model, the folder name, or the hub id."""
    if options.model_id:
        return options.model_id
    if options.model.startswith(PACKAGE_SCHEME):
        return options.model[len(PACKAGE_SCHEME) :].partition("/")[0]
    path = resolve_model_path(options.model)
    return path.name if path is not None else options.model


def model_folder(options: ModelLocation) -> Path:
    """The model's local folder; a hub model is fetched (or found in the local cache)."""
    folder = resolve_model_path(options.model)
    if folder is None:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(options.model, revision=options.revision))
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    return folder


def resolve_dtype(dtype: Dtype, device: str) -> str:
    """`auto`: float32 on a CPU (half precision is slower there and less exact), bfloat16
    on a GPU that supports it, else float16. The dtype is not part of the space id."""
    if dtype != "auto":
        return dtype
    if not device.startswith("cuda"):
        return "float32"
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"


def resolve_device(device: str) -> str:
    """`auto` becomes `cuda` when torch sees a GPU, else `cpu`."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# `max_batch_tokens: auto` on a CPU. A CPU's docs/s stops growing with the batch long
# before this (the benchmark's long texts: the same rate from 4 texts of 256 tokens up),
# and a bigger batch only makes its requests wait for each other.
CPU_TOKEN_BUDGET = 8192
# On a GPU, the part of a replica's free memory share that a batch's activations may fill:
# the rest is for the allocator's fragmentation and the kernels' workspaces.
GPU_ACTIVATION_SHARE = 0.5
GPU_TOKEN_BUDGET_BOUNDS = (8192, 262144)


@dataclass(frozen=True)
class TransformerShape:
    """The sizes of a transformer that set its activation memory per token."""

    hidden: int
    intermediate: int
    heads: int
    positions: int

    @classmethod
    def of(cls, config: Any) -> TransformerShape | None:
        """The text tower's shape from a transformers config; None when it has no
        `hidden_size` (a model of another kind)."""
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        hidden = getattr(config, "hidden_size", None)
        if not isinstance(hidden, int):
            return None
        return cls(
            hidden=hidden,
            intermediate=getattr(config, "intermediate_size", None) or 4 * hidden,
            heads=getattr(config, "num_attention_heads", None) or 1,
            positions=getattr(config, "max_position_embeddings", None) or 512,
        )

    def activation_bytes_per_token(self, itemsize: int) -> int:
        """Peak live activations of one token in one layer: the hidden state, Q, K, V and
        the attention output (4 x hidden), the feed-forward's two intermediate tensors, and
        a row of attention scores per head where no fused kernel spares them."""
        return (4 * self.hidden + 2 * self.intermediate + self.heads * self.positions) * itemsize


def gpu_token_budget(shape: TransformerShape, itemsize: int, free_bytes: float) -> int:
    """Tokens per batch whose activations fill `GPU_ACTIVATION_SHARE` of `free_bytes`,
    in steps of 1024, within `GPU_TOKEN_BUDGET_BOUNDS`."""
    budget = int(free_bytes * GPU_ACTIVATION_SHARE / shape.activation_bytes_per_token(itemsize))
    low, high = GPU_TOKEN_BUDGET_BOUNDS
    return max(low, min(high, budget // 1024 * 1024))


def token_budget(module: Any, gpu_fraction: float) -> int | None:
    """`max_batch_tokens: auto` for a loaded torch model: `CPU_TOKEN_BUDGET` on a CPU; on
    a GPU, what the replica's share of the device (`gpu_fraction` of its memory, less
    what this process has allocated: the weights) holds of the model's activations.
    None when the model's shape is unknown: the server's default applies."""
    import torch

    parameter = next(module.parameters())
    if parameter.device.type != "cuda":
        return CPU_TOKEN_BUDGET
    shape = TransformerShape.of(getattr(module, "config", None))
    if shape is None:
        return None
    total = torch.cuda.get_device_properties(parameter.device).total_memory
    share = total * min(gpu_fraction, 1.0) if gpu_fraction > 0 else total
    free = share - torch.cuda.memory_allocated(parameter.device)
    return gpu_token_budget(shape, parameter.element_size(), free)
