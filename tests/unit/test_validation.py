"""The router's request checks (`embedserve.validation`), without HTTP."""

from __future__ import annotations

import random
from typing import Any

import pytest
from pydantic import ValidationError

from embedserve.errors import EmbedServeError, InvalidRequest, PayloadTooLarge
from embedserve.schemas import EmbeddingsRequest
from embedserve.validation import check_token_limits, request_texts
from tests.unit.fakes import request_body_like

# --- request_texts ----------------------------------------------------------------------


def test_a_string_is_one_text_and_a_list_is_kept_in_order() -> None:
    assert request_texts("hello", 10) == ["hello"]
    assert request_texts(["b", "a", "  padded  "], 10) == ["b", "a", "  padded  "]


def test_an_empty_list_is_400_on_input() -> None:
    with pytest.raises(InvalidRequest) as info:
        request_texts([], 10)
    assert (info.value.status_code, info.value.param) == (400, "input")


@pytest.mark.parametrize("raw", [[101, 2023, 102], [[101, 2023], [102]], [7]])
def test_token_ids_are_400_on_the_first_item(raw: list[Any]) -> None:
    with pytest.raises(InvalidRequest) as info:
        request_texts(raw, 10)
    assert (info.value.status_code, info.value.param) == (400, "input[0]")
    assert "token" in info.value.message


def test_a_token_id_after_texts_names_its_item() -> None:
    with pytest.raises(InvalidRequest) as info:
        request_texts(["a", "b", 3], 10)  # type: ignore[list-item]
    assert info.value.param == "input[2]"


@pytest.mark.parametrize("blank", ["", " ", "\t\n ", "\u3000", "\u00a0\u2003"])
def test_an_empty_or_blank_string_is_400_on_input(blank: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        request_texts(blank, 10)
    assert (info.value.status_code, info.value.param) == (400, "input")
    assert "input" in info.value.message


@pytest.mark.parametrize("blank", ["", "   "])
def test_an_empty_list_item_names_its_index(blank: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        request_texts(["first", "second", blank, "fourth"], 10)
    assert (info.value.status_code, info.value.param) == (400, "input[2]")
    assert "input[2]" in info.value.message


@pytest.mark.parametrize(
    ("raw", "param"),
    [("\ud800", "input"), ("text \udfff text", "input"), (["fine", "bad \ud800"], "input[1]")],
)
def test_a_lone_surrogate_is_400_naming_the_item(raw: str | list[str], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        request_texts(raw, 10)
    assert (info.value.status_code, info.value.param) == (400, param)
    assert param in info.value.message
    assert "Unicode" in info.value.message


def test_non_ascii_text_is_valid() -> None:
    texts = ["Grüße", "日本語のテキスト", "emoji 🦓", "\U0010fffd"]
    assert request_texts(texts, 10) == texts


def test_too_many_items_is_413() -> None:
    assert len(request_texts(["x"] * 3, 3)) == 3
    with pytest.raises(PayloadTooLarge) as info:
        request_texts(["x"] * 4, 3)
    error = info.value
    assert (error.status_code, error.param, error.code) == (413, "input", "payload_too_large")
    assert "4" in error.message and "3" in error.message


def test_the_item_count_is_checked_before_the_items() -> None:
    with pytest.raises(PayloadTooLarge):
        request_texts([""] * 5, 2)


# --- check_token_limits ----------------------------------------------------------------


def test_an_input_over_the_limit_is_400_input_too_long() -> None:
    with pytest.raises(InvalidRequest) as info:
        check_token_limits([10, 300, 400], limit=256, truncate=False, single=False)
    error = info.value
    assert (error.status_code, error.code, error.param) == (400, "input_too_long", "input[1]")
    assert "300" in error.message and "256" in error.message
    assert "truncate" in error.message, "the message says how to get it embedded anyway"


def test_a_single_input_over_the_limit_names_input() -> None:
    with pytest.raises(InvalidRequest) as info:
        check_token_limits([257], limit=256, truncate=False, single=True)
    assert info.value.param == "input"
    assert info.value.code == "input_too_long"


def test_inputs_at_the_limit_are_fine() -> None:
    assert check_token_limits([256, 1, 100], limit=256, truncate=False, single=False) == 0


def test_with_truncate_the_dropped_tokens_are_counted() -> None:
    assert check_token_limits([300], limit=256, truncate=True, single=True) == 44
    assert check_token_limits([300, 10, 260], limit=256, truncate=True, single=False) == 48


def test_without_a_limit_nothing_is_refused_or_dropped() -> None:
    for truncate in (False, True):
        assert check_token_limits([10**6, 5], limit=None, truncate=truncate, single=False) == 0


# --- never anything but a client error, for arbitrary JSON -----------------------------
# `hypothesis` is not installed here: a seeded generator of JSON-like bodies stands in.


@pytest.mark.parametrize("seed", range(20))
def test_arbitrary_bodies_raise_only_client_errors(seed: int) -> None:
    rng = random.Random(seed)
    parsed = 0
    for _ in range(200):
        body = request_body_like(rng)
        try:
            request = EmbeddingsRequest.model_validate(body)
        except ValidationError:
            continue
        parsed += 1
        try:
            texts = request_texts(request.input, max_inputs=3)
        except EmbedServeError as error:
            assert 400 <= error.status_code < 500
            assert error.param is not None and error.param.startswith("input")
            continue
        assert texts and all(isinstance(t, str) and t.strip() for t in texts)
        for text in texts:
            text.encode("utf-8")
    assert parsed > 0, "the generator also produces valid requests"


@pytest.mark.parametrize("seed", range(5))
def test_arbitrary_token_counts_raise_only_input_too_long(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        counts = [rng.randint(0, 600) for _ in range(rng.randint(1, 6))]
        limit = rng.choice([None, 1, 128, 256, 512])
        truncate, single = rng.random() < 0.5, len(counts) == 1 and rng.random() < 0.5
        try:
            dropped = check_token_limits(counts, limit, truncate, single)
        except InvalidRequest as error:
            assert limit is not None and not truncate
            assert error.code == "input_too_long"
            index = next(i for i, count in enumerate(counts) if count > limit)
            assert error.param == ("input" if single else f"input[{index}]")
            continue
        expected = 0 if limit is None else sum(max(0, c - limit) for c in counts)
        assert dropped == expected
        if not truncate and limit is not None:
            assert max(counts) <= limit
