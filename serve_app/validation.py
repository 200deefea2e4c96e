"""Request checks that run in the router, so bad input never reaches a replica."""

from __future__ import annotations

from collections.abc import Sequence

from serve_app.errors import InvalidRequest, PayloadTooLarge


def _param(index: int, single: bool) -> str:
    return "input" if single else f"input[{index}]"


def request_texts(raw: str | list, max_inputs: int) -> list[str]:
    """The request's `input` as a list of texts.

    Raises:
        InvalidRequest: an empty list, token ids instead of text, an empty text, or text
            that is not valid Unicode (lone surrogates); `param` names the item.
        PayloadTooLarge: more items than `max_inputs`.
    """
    single = isinstance(raw, str)
    texts = [raw] if single else raw
    if not texts:
        raise InvalidRequest("input must not be an empty list", param="input")
    if len(texts) > max_inputs:
        raise PayloadTooLarge(
            f"input has {len(texts)} items; the limit is {max_inputs} per request", param="input"
        )
    for index, text in enumerate(texts):
        param = _param(index, single)
        if not isinstance(text, str):
            raise InvalidRequest(
                "token-id inputs are not supported: send the texts themselves", param=param
            )
        if not text.strip():
            raise InvalidRequest(f"{param} is empty or only whitespace", param=param)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(
                f"{param} is not valid Unicode (it contains a lone surrogate)", param=param
            ) from None
    return texts


def check_token_limits(
    token_counts: Sequence[int], limit: int | None, truncate: bool, single: bool
) -> int:
    """How many tokens truncation will drop; without `truncate`, an input over `limit` is
    a 400 naming it.

    Raises:
        InvalidRequest: an input is longer than `limit` tokens and truncation is off.
    """
    if limit is None:
        return 0
    if not truncate:
        for index, count in enumerate(token_counts):
            if count > limit:
                param = _param(index, single)
                raise InvalidRequest(
                    f"{param} has {count} tokens, more than this model's limit of {limit}; "
                    "shorten it, or send `truncate: true` to embed its first tokens only",
                    param=param,
                    code="input_too_long",
                )
    return sum(max(0, count - limit) for count in token_counts)
