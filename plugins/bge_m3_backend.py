"""`bge-m3`: BGE-M3's three outputs from one forward pass of its XLM-RoBERTa encoder.

- dense: the [CLS] state, L2-normalised (1024 dimensions for the real model);
- sparse: lexical weights, ReLU of the sparse head over each token state, the maximum per
  token id, special tokens dropped, only positive weights kept;
- multivector (ColBERT): the colbert head over the token states after [CLS], padding
  masked out, each vector L2-normalised.

The encoder loads with transformers; the two heads are the `sparse_linear.pt` and
`colbert_linear.pt` files of the model folder, as FlagEmbedding saves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from embedserve import (
    BackendCapabilities,
    EmbeddingBatch,
    EmbedInput,
    OutputKind,
    SparseVector,
    hookimpl,
)
from embedserve.plugins.hf_common import (
    TransformersBackend,
    TransformersOptions,
    place,
)
from embedserve.plugins.model_files import model_folder, model_id

SPARSE_HEAD = "sparse_linear.pt"
COLBERT_HEAD = "colbert_linear.pt"
BGE_M3_CITATION = """@misc{bge-m3,
  title         = {BGE M3-Embedding: Multi-Lingual, Multi-Functionality, Multi-Granularity
                   Text Embeddings Through Self-Knowledge Distillation},
  author        = {Jianlv Chen and Shitao Xiao and Peitian Zhang and Kun Luo and Defu Lian
                   and Zheng Liu},
  year          = {2024},
  eprint        = {2402.03216},
  archivePrefix = {arXiv}
}"""


class BgeM3Options(TransformersOptions):
    """Options of the `bge-m3` backend."""

    max_seq_length: int | None = Field(
        default=None, ge=1, description="Token limit (default: the tokenizer's, 8192 for BGE-M3)."
    )


class BgeM3Backend(TransformersBackend):
    """BGE-M3: dense, sparse and multi-vector outputs of one encoder."""

    kind = "bge-m3"
    description = "BGE-M3: dense [CLS], sparse lexical weights and ColBERT multi-vectors."
    outputs = (OutputKind.DENSE, OutputKind.SPARSE, OutputKind.MULTIVECTOR)
    Options = BgeM3Options
    citation = BGE_M3_CITATION
    options: BgeM3Options

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self._model: Any = None
        self._tokenizer: Any = None
        self._sparse_head: Any = None
        self._colbert_head: Any = None
        self._max_tokens = self.options.max_seq_length
        self._dimensions: int | None = None

    @property
    def capabilities(self) -> BackendCapabilities:
        return self.capabilities_with(
            dimensions=self._dimensions, max_input_tokens=self._max_tokens
        )

    def space_identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": model_id(self.options),
            "revision": self.options.revision,
            "pooling": "cls",
            "max_seq_length": self.options.max_seq_length,
        }

    def load_tokenizer(self) -> None:
        """The tokenizer and the token limit (no weights)."""
        from transformers import AutoTokenizer

        self._counter = AutoTokenizer.from_pretrained(str(model_folder(self.options)))
        self._max_tokens = self.options.max_seq_length or self._counter.model_max_length

    def load(self) -> None:
        """Load the encoder and the sparse and ColBERT heads from the model folder."""
        from transformers import AutoModel, AutoTokenizer

        self.load_tokenizer()
        folder = model_folder(self.options)
        self._tokenizer = AutoTokenizer.from_pretrained(str(folder))
        encoder = AutoModel.from_pretrained(str(folder), add_pooling_layer=False)
        self._model = place(encoder, self.options.device, self.options.dtype)
        self._sparse_head = self._head(folder / SPARSE_HEAD)
        self._colbert_head = self._head(folder / COLBERT_HEAD)
        self._dimensions = int(self._model.config.hidden_size)

    def _head(self, path: Any) -> Any:
        """A linear head from its saved state dict, on the encoder's device and dtype."""
        import torch

        if not path.is_file():
            raise FileNotFoundError(f"BGE-M3 head {path.name} is missing from {path.parent}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        out_features, in_features = state["weight"].shape
        head = torch.nn.Linear(in_features, out_features)
        head.load_state_dict(state)
        return head.to(self._model.device, dtype=self._model.dtype).eval()

    def embed_batch(self, inputs: Sequence[EmbedInput]) -> EmbeddingBatch:
        import torch

        encoded = self._tokenizer(
            [item.text for item in inputs],
            padding=True,
            truncation=True,
            max_length=self._max_tokens,
            return_tensors="pt",
        ).to(self._model.device)
        mask = encoded["attention_mask"]
        with torch.inference_mode():
            states = self._model(
                input_ids=encoded["input_ids"], attention_mask=mask
            ).last_hidden_state
            dense = torch.nn.functional.normalize(states[:, 0].float(), dim=-1)
            weights = torch.relu(self._sparse_head(states)).squeeze(-1).float()
            colbert = self._colbert_head(states[:, 1:]) * mask[:, 1:, None]
            colbert = torch.nn.functional.normalize(colbert.float(), dim=-1)
        ids = encoded["input_ids"].cpu().numpy()
        lengths = mask.sum(dim=1).cpu().numpy()
        sparse = [
            self._lexical(ids[row], weights[row].cpu().numpy(), int(lengths[row]))
            if OutputKind.SPARSE in item.outputs
            else None
            for row, item in enumerate(inputs)
        ]
        multivector = [
            colbert[row, : int(lengths[row]) - 1].cpu().numpy()
            if OutputKind.MULTIVECTOR in item.outputs
            else None
            for row, item in enumerate(inputs)
        ]
        return EmbeddingBatch(dense=dense.cpu().numpy(), sparse=sparse, multivector=multivector)

    def _lexical(self, ids: np.ndarray, weights: np.ndarray, length: int) -> SparseVector:
        """Per token id the largest weight, special tokens dropped, positive weights only."""
        special = set(self._tokenizer.all_special_ids)
        best: dict[int, float] = {}
        for token, weight in zip(ids[:length].tolist(), weights[:length].tolist(), strict=True):
            if token not in special and weight > best.get(token, 0.0):
                best[token] = weight
        indices = np.array(sorted(best), dtype=np.int64)
        return SparseVector(
            indices=indices,
            values=np.array([best[i] for i in indices.tolist()], dtype=np.float32),
            tokens=tuple(self._tokenizer.convert_ids_to_tokens(indices.tolist())),
        )


@hookimpl
def register_backends(register) -> None:
    """Register the `bge-m3` backend."""
    register(BgeM3Backend)
