"""The router's request checks (`embedserve.serving.validation`), without HTTP."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from embedserve.backend import BackendCapabilities, EmbedInput, Modality, OutputKind
from embedserve.errors import EmptyInput, InvalidRequest, PayloadTooLarge
from embedserve.serving.validation import (
    check_support,
    check_token_limits,
    dropped_tokens,
    request_items,
)

# --- request_items, for texts (no images accepted) ------------------------------------


def test_a_string_is_one_text_and_a_list_is_kept_in_order() -> None:
    assert request_items("hello", 10, None) == ["hello"]
    assert request_items(["b", "a", "  padded  "], 10, None) == ["b", "a", "  padded  "]


def test_an_empty_list_is_400_on_input() -> None:
    with pytest.raises(EmptyInput) as info:
        request_items([], 10, None)
    assert (info.value.status_code, info.value.param) == (400, "input")


@pytest.mark.parametrize("raw", [[101, 2023, 102], [[101, 2023], [102]], [7]])
def test_token_ids_are_400_on_the_first_item(raw: list[Any]) -> None:
    with pytest.raises(InvalidRequest) as info:
        request_items(raw, 10, None)
    assert (info.value.status_code, info.value.param) == (400, "input[0]")
    assert "token" in info.value.message


def test_a_token_id_after_texts_names_its_item() -> None:
    with pytest.raises(InvalidRequest) as info:
        request_items(["a", "b", 3], 10, None)  # type: ignore[list-item]
    assert info.value.param == "input[2]"


@pytest.mark.parametrize("blank", ["", " ", "\t\n ", "\u3000", "\u00a0\u2003"])
def test_an_empty_or_blank_string_is_400_on_input(blank: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        request_items(blank, 10, None)
    assert (info.value.status_code, info.value.param) == (400, "input")
    assert "input" in info.value.message


@pytest.mark.parametrize("blank", ["", "   "])
def test_an_empty_list_item_names_its_index(blank: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        request_items(["first", "second", blank, "fourth"], 10, None)
    assert (info.value.status_code, info.value.param) == (400, "input[2]")
    assert "input[2]" in info.value.message


@pytest.mark.parametrize(
    ("raw", "param"),
    [("\ud800", "input"), ("text \udfff text", "input"), (["fine", "bad \ud800"], "input[1]")],
)
def test_a_lone_surrogate_is_400_naming_the_item(raw: str | list[str], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        request_items(raw, 10, None)
    assert (info.value.status_code, info.value.param) == (400, param)
    assert param in info.value.message
    assert "Unicode" in info.value.message


def test_non_ascii_text_is_valid() -> None:
    texts = ["Grüße", "日本語のテキスト", "emoji 🦓", "\U0010fffd"]
    assert request_items(texts, 10, None) == texts


def test_too_many_items_is_413() -> None:
    assert len(request_items(["x"] * 3, 3, None)) == 3
    with pytest.raises(PayloadTooLarge) as info:
        request_items(["x"] * 4, 3, None)
    error = info.value
    assert (error.status_code, error.param, error.code) == (413, "input", "payload_too_large")
    assert "4" in error.message and "3" in error.message


def test_the_item_count_is_checked_before_the_items() -> None:
    with pytest.raises(PayloadTooLarge):
        request_items([""] * 5, 2, None)


# --- check_token_limits ----------------------------------------------------------------


def test_an_input_over_the_limit_is_400_input_too_long() -> None:
    with pytest.raises(InvalidRequest) as info:
        check_token_limits([10, 300, 400], limit=256, truncate=False, single=False)
    error = info.value
    assert (error.status_code, error.code, error.param) == (400, "input_too_long", "input[1]")
    assert "300" in error.message and "256" in error.message
    assert "truncate" in error.message, "the message says how to get it embedded anyway"


def test_the_message_names_the_settings_that_truncate() -> None:
    with pytest.raises(InvalidRequest) as info:
        check_token_limits([300], limit=256, truncate=False, single=True, model="minilm")
    message = info.value.message
    assert "is 300 tokens, over the model's limit of 256" in message
    for setting in (
        "`truncate: true`",
        "`models.minilm.truncate: true`",
        "`server.truncate: true`",
    ):
        assert setting in message


def test_a_single_input_over_the_limit_names_input() -> None:
    with pytest.raises(InvalidRequest) as info:
        check_token_limits([257], limit=256, truncate=False, single=True)
    assert info.value.param == "input"
    assert info.value.code == "input_too_long"


def test_inputs_at_the_limit_are_fine() -> None:
    check_token_limits([256, 1, 100], limit=256, truncate=False, single=False)
    assert dropped_tokens([256, 1, 100], 256) == [0, 0, 0]


def test_with_truncate_inputs_over_the_limit_pass() -> None:
    check_token_limits([300, 10, 260], limit=256, truncate=True, single=False)


def test_dropped_tokens_per_input() -> None:
    assert dropped_tokens([300, 10, 260], 256) == [44, 0, 4]
    assert dropped_tokens([300], None) == [0]


def test_without_a_limit_nothing_is_refused_or_dropped() -> None:
    for truncate in (False, True):
        check_token_limits([10**6, 5], limit=None, truncate=truncate, single=False)
    assert dropped_tokens([10**6, 5], None) == [0, 0]


# --- check_support ---------------------------------------------------------------------

TEXT_MODEL = BackendCapabilities()
PIXELS = np.zeros((4, 4, 3), dtype=np.uint8)


def test_an_image_for_a_text_model_is_400_naming_the_item() -> None:
    inputs = [EmbedInput("a caption"), EmbedInput("", image=PIXELS)]
    with pytest.raises(InvalidRequest) as info:
        check_support(TEXT_MODEL, inputs, "mini", single=False, field="items")
    error = info.value
    assert (error.status_code, error.code, error.param) == (400, "unsupported_modality", "items[1]")
    assert error.message == "items[1] is an image, and model 'mini' embeds only text"


def test_a_text_for_an_image_model_names_a_single_input() -> None:
    images_only = BackendCapabilities(modalities=(Modality.IMAGE,))
    with pytest.raises(InvalidRequest) as info:
        check_support(images_only, [EmbedInput("a caption")], "pixels", single=True)
    assert info.value.param == "input"
    assert info.value.message == "input is a text, and model 'pixels' embeds only image"


def test_an_output_the_model_lacks_is_400_on_outputs() -> None:
    inputs = [EmbedInput("a", outputs=(OutputKind.DENSE, OutputKind.SPARSE))]
    with pytest.raises(InvalidRequest) as info:
        check_support(TEXT_MODEL, inputs, "mini", single=False)
    error = info.value
    assert (error.code, error.param) == ("unsupported_output", "outputs")
    assert "does not produce sparse output (it offers: dense)" in error.message


def test_what_the_model_supports_passes() -> None:
    both = BackendCapabilities(
        modalities=(Modality.TEXT, Modality.IMAGE), outputs=(OutputKind.DENSE, OutputKind.SPARSE)
    )
    sparse = (OutputKind.SPARSE,)
    inputs = [EmbedInput("a", outputs=sparse), EmbedInput("", image=PIXELS, outputs=sparse)]
    check_support(both, inputs, "multi", single=False)


@pytest.mark.parametrize("seed", range(5))
def test_arbitrary_token_counts_raise_only_input_too_long(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        counts = [rng.randint(0, 600) for _ in range(rng.randint(1, 6))]
        limit = rng.choice([None, 1, 128, 256, 512])
        truncate, single = rng.random() < 0.5, len(counts) == 1 and rng.random() < 0.5
        try:
            check_token_limits(counts, limit, truncate, single)
        except InvalidRequest as error:
            assert limit is not None and not truncate
            assert error.code == "input_too_long"
            index = next(i for i, count in enumerate(counts) if count > limit)
            assert error.param == ("input" if single else f"input[{index}]")
            continue
        expected = [0 if limit is None else max(0, c - limit) for c in counts]
        assert dropped_tokens(counts, limit) == expected
        if not truncate and limit is not None:
            assert max(counts) <= limit
