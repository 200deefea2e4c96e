"""Where a model's files are and how it runs: shared by every backend that loads a
model folder (sentence-transformers, clip, bge-m3, nomic, open-clip).

Nothing here imports torch at module import; the functions that need it import it
when called, inside the replica.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Literal, Protocol

PACKAGE_SCHEME = "pkg:"
Dtype = Literal["auto", "float32", "float16", "bfloat16"]


class ModelLocation(Protocol):
    """The options that say where a model is: its reference, public id and revision."""

    model: str
    model_id: str | None
    revision: str | None


def resolve_model_path(model: str) -> Path | None:
    """The local folder of `model`, or None when it is a hub id."""
    if model.startswith(PACKAGE_SCHEME):
        package, _, folder = model[len(PACKAGE_SCHEME) :].partition("/")
        return Path(str(importlib.resources.files(package).joinpath(folder)))
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
