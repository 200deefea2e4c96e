"""sentence-transformers' encode without torch: the model folder's tokenizer run by the
`tokenizers` library, an exported transformer (ONNX Runtime or OpenVINO), and pooling,
Dense and Normalize in numpy, as the model folder's `modules.json` lists them.

Supported module lists: a Transformer, then a Pooling (mean, CLS or last token, prompt
tokens included), then any Dense layers (identity or tanh, weights in safetensors), then
an optional Normalize. `PipelineSpec.read` raises `UnsupportedPipeline`, naming what it
cannot run, for anything else; the backend then serves on torch and says why.

What sentence-transformers does and this does the same way: texts sorted by length
(longest first) and cut into passes, padded to the longest of their pass and truncated
to `max_seq_length`, lower-cased where `do_lower_case`; the model's own Normalize module,
then `truncate_dim`, then `normalize_embeddings`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

Transformer = Callable[[Mapping[str, np.ndarray]], np.ndarray]
_MODULE_KINDS = ("Transformer", "Pooling", "Dense", "Normalize")
_POOLING_MODES = ("mean", "cls", "lasttoken")
# The older Pooling config's flags, with the mode each turns on.
_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.Tanh": np.tanh,
}
_NO_LIMIT = 1_000_000  # transformers' "no limit" model_max_length is ~1e30


class UnsupportedPipeline(Exception):
    """The model's module list has something the torch-free pipeline does not compute."""


@dataclass(frozen=True)
class Dense:
    """A Dense module: `activation(x @ weight.T + bias)`."""

    weight: np.ndarray
    bias: np.ndarray | None
    activation: Callable[[np.ndarray], np.ndarray]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = x @ self.weight.T
        return self.activation(y if self.bias is None else y + self.bias)


@dataclass(frozen=True)
class PipelineSpec:
    """What the model folder says the encode pipeline is."""

    folder: Path
    max_seq_length: int
    lower_case: bool
    pooling: tuple[str, ...]
    dense: tuple[Dense, ...]
    normalize: bool

    @classmethod
    def read(cls, folder: Path, max_seq_length: int | None = None) -> PipelineSpec:
        """The pipeline of the sentence-transformers model in `folder`; `max_seq_length`
        overrides the model's limit.

        Raises:
            UnsupportedPipeline: a module, pooling mode or file this pipeline cannot run.
        """
        if not (folder / "tokenizer.json").is_file():
            raise UnsupportedPipeline("the model folder has no tokenizer.json")
        modules = _read_json(folder / "modules.json")
        if not isinstance(modules, list) or not modules:
            raise UnsupportedPipeline("the model folder has no modules.json")
        kinds = [_module_kind(entry["type"]) for entry in modules]
        if kinds[:2] != ["Transformer", "Pooling"] or kinds[-1:] == ["Transformer"]:
            raise UnsupportedPipeline(f"module list {kinds}: not Transformer, Pooling, ...")
        rest = kinds[2:]
        if "Normalize" in rest[:-1] or any(kind not in ("Dense", "Normalize") for kind in rest):
            raise UnsupportedPipeline(f"module list {kinds}: only Dense layers, then Normalize")
        settings = _read_json(folder / "sentence_bert_config.json") or {}
        paths = [folder / entry["path"] for entry in modules]
        return cls(
            folder=folder,
            max_seq_length=max_seq_length or _model_limit(folder, settings),
            lower_case=bool(settings.get("do_lower_case", False)),
            pooling=_pooling_modes(paths[1]),
            dense=tuple(
                _dense(path) for path, kind in zip(paths, kinds, strict=True) if kind == "Dense"
            ),
            normalize=kinds[-1] == "Normalize",
        )


class SentenceTokenizer:
    """The model's tokenizer (`tokenizer.json`), as sentence-transformers calls it."""

    def __init__(self, spec: PipelineSpec) -> None:
        from tokenizers import Tokenizer

        self._lower_case = spec.lower_case
        self._counter = Tokenizer.from_file(str(spec.folder / "tokenizer.json"))
        self._counter.no_truncation()
        self._counter.no_padding()
        # A second instance for batches: padding and truncation are tokenizer state.
        self._batcher = Tokenizer.from_file(str(spec.folder / "tokenizer.json"))
        self._batcher.enable_truncation(spec.max_seq_length)
        pad = self._pad_token()
        self._batcher.enable_padding(
            direction="right", pad_id=self._batcher.token_to_id(pad) or 0, pad_token=pad
        )

    def _pad_token(self) -> str:
        configured = self._batcher.padding
        if configured and configured.get("pad_token"):
            return configured["pad_token"]
        return "[PAD]" if self._batcher.token_to_id("[PAD]") is not None else "<pad>"

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text, special tokens in, before truncation."""
        return [len(e.ids) for e in self._counter.encode_batch(self._cased(texts))]

    def features(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The transformer's inputs for `texts`: padded, truncated int64 arrays."""
        encoded = self._batcher.encode_batch(self._cased(texts))
        return {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }

    def _cased(self, texts: Sequence[str]) -> list[str]:
        return [text.lower() for text in texts] if self._lower_case else list(texts)


class TextEncoder:
    """Texts to vectors with an exported transformer and the spec's modules."""

    def __init__(self, spec: PipelineSpec, transformer: Transformer) -> None:
        self.spec = spec
        self.tokenizer = SentenceTokenizer(spec)
        self._transformer = transformer

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int,
        truncate_dim: int | None = None,
        normalize: bool = False,
    ) -> np.ndarray:
        """The vectors of `texts`, in order: sorted by length into passes of `batch_size`,
        then `truncate_dim` and `normalize` as sentence-transformers' `encode` applies them."""
        order = np.argsort([-len(text) for text in texts], kind="stable")
        parts = [
            self._embed([texts[int(row)] for row in order[start : start + batch_size]])
            for start in range(0, len(texts), batch_size)
        ]
        vectors = np.empty_like(np.concatenate(parts))
        vectors[order] = np.concatenate(parts)
        if truncate_dim is not None:
            vectors = vectors[:, :truncate_dim]
        return unit_rows(vectors) if normalize else vectors

    def _embed(self, texts: list[str]) -> np.ndarray:
        features = self.tokenizer.features(texts)
        tokens = self._transformer(features).astype(np.float32, copy=False)
        mask = features["attention_mask"]
        vector = np.concatenate([_pool(mode, tokens, mask) for mode in self.spec.pooling], -1)
        for dense in self.spec.dense:
            vector = dense(vector)
        return unit_rows(vector) if self.spec.normalize else vector


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as torch's `F.normalize` (eps 1e-12)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _pool(mode: str, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """One pooling mode over a right-padded batch."""
    if mode == "cls":
        return tokens[:, 0]
    if mode == "lasttoken":
        last = mask.sum(axis=1) - 1
        return tokens[np.arange(len(tokens)), np.maximum(last, 0)]
    weights = mask[..., None].astype(np.float32)
    return (tokens * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _module_kind(type_name: str) -> str:
    """`Transformer`, `Pooling`, ... for sentence-transformers' own module types."""
    kind = type_name.rpartition(".")[2]
    if not type_name.startswith("sentence_transformers.") or kind not in _MODULE_KINDS:
        raise UnsupportedPipeline(f"module {type_name}")
    return kind


def _model_limit(folder: Path, settings: Mapping[str, Any]) -> int:
    """The model's token limit as sentence-transformers reads it: its own config, else
    the tokenizer's, else the transformer's positions."""
    tokenizer_limit = (_read_json(folder / "tokenizer_config.json") or {}).get("model_max_length")
    positions = (_read_json(folder / "config.json") or {}).get("max_position_embeddings")
    for limit in (settings.get("max_seq_length"), tokenizer_limit, positions):
        if isinstance(limit, int | float) and 0 < limit < _NO_LIMIT:
            return int(limit)
    raise UnsupportedPipeline("the model folder states no token limit")


def _pooling_modes(path: Path) -> tuple[str, ...]:
    config = _read_json(path / "config.json") or {}
    if "pooling_mode" in config:
        modes = config["pooling_mode"]
        modes = (modes,) if isinstance(modes, str) else tuple(modes)
    else:
        modes = tuple(mode for flag, mode in _POOLING_FLAGS.items() if config.get(flag))
    unsupported = [mode for mode in modes if mode not in _POOLING_MODES]
    if not modes or unsupported:
        raise UnsupportedPipeline(f"pooling {list(modes)} (supported: {list(_POOLING_MODES)})")
    if not config.get("include_prompt", True):
        raise UnsupportedPipeline("pooling that leaves the prompt's tokens out")
    return modes


def _dense(path: Path) -> Dense:
    from safetensors.numpy import load_file

    config = _read_json(path / "config.json") or {}
    activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")
    if activation not in _ACTIVATIONS or config.get("use_residual"):
        raise UnsupportedPipeline(f"Dense with {activation}, residual {config.get('use_residual')}")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key, "sentence_embedding") != "sentence_embedding":
            raise UnsupportedPipeline(f"Dense with {key} {config[key]}")
    if not (path / "model.safetensors").is_file():
        raise UnsupportedPipeline(f"Dense weights in {path} are not in safetensors")
    weights = load_file(str(path / "model.safetensors"))
    return Dense(
        weights["linear.weight"].astype(np.float32),
        weights["linear.bias"].astype(np.float32) if "linear.bias" in weights else None,
        _ACTIVATIONS[activation],
    )
