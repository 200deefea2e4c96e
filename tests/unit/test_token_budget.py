"""`max_batch_tokens: auto`: the token budget of a batch derived from the device.

There is no GPU here: the GPU rule is tested on its inputs (the model's shape, the dtype's
size and the free memory), the CPU rule on real models."""

from __future__ import annotations

import pytest

from embedserve.plugins.model_files import (
    CPU_TOKEN_BUDGET,
    GPU_TOKEN_BUDGET_BOUNDS,
    TransformerShape,
    gpu_token_budget,
    token_budget,
)

GIB = 1 << 30
MINILM = TransformerShape(hidden=384, intermediate=1536, heads=12, positions=512)
LARGE = TransformerShape(hidden=1024, intermediate=4096, heads=16, positions=8194)


def test_shape_is_read_from_a_transformers_config() -> None:
    transformers = pytest.importorskip("transformers")
    bert = transformers.BertConfig(hidden_size=384, intermediate_size=1536, num_attention_heads=12)
    assert TransformerShape.of(bert) == MINILM
    # A text-and-image model: the text tower's sizes.
    text = {"hidden_size": 512, "intermediate_size": 2048, "num_attention_heads": 8}
    clip = transformers.CLIPConfig(text_config={**text, "max_position_embeddings": 77})
    assert TransformerShape.of(clip) == TransformerShape(512, 2048, 8, 77)
    assert TransformerShape.of(None) is None
    assert TransformerShape.of(transformers.PretrainedConfig()) is None


def test_gpu_budget_grows_with_the_memory_share_and_shrinks_with_the_model() -> None:
    quarter, whole = gpu_token_budget(MINILM, 2, 4 * GIB), gpu_token_budget(MINILM, 2, 16 * GIB)
    assert quarter < whole
    assert quarter % 1024 == 0 and whole % 1024 == 0
    assert gpu_token_budget(LARGE, 2, 16 * GIB) < whole
    # float32 activations take twice the bytes of float16 ones.
    assert gpu_token_budget(LARGE, 4, 16 * GIB) < gpu_token_budget(LARGE, 2, 16 * GIB)


def test_gpu_budget_fills_half_the_free_memory_within_bounds() -> None:
    budget = gpu_token_budget(MINILM, 2, 4 * GIB)
    per_token = MINILM.activation_bytes_per_token(2)
    assert budget * per_token <= 2 * GIB < (budget + 1024) * per_token
    low, high = GPU_TOKEN_BUDGET_BOUNDS
    assert gpu_token_budget(LARGE, 4, 0.1 * GIB) == low  # a nearly full device
    assert gpu_token_budget(MINILM, 2, 80 * GIB) == high


def test_a_model_on_the_cpu_gets_the_cpu_budget() -> None:
    torch = pytest.importorskip("torch")
    assert token_budget(torch.nn.Linear(4, 4), gpu_fraction=0.25) == CPU_TOKEN_BUDGET


def test_auto_limits_take_the_backends_budget_or_the_servers_default() -> None:
    from embedserve.config import DEFAULT_TOKEN_BUDGET, BatchingConfig

    auto = BatchingConfig(max_batch_size=16)
    assert auto.max_batch_tokens == "auto"
    assert auto.resolved(4096) == BatchingConfig(max_batch_size=16, max_batch_tokens=4096)
    assert auto.resolved(None).max_batch_tokens == DEFAULT_TOKEN_BUDGET
    assert BatchingConfig(max_batch_tokens=2048).resolved(4096).max_batch_tokens == 2048
