"""Request checks that run in the router, so bad input never reaches a replica."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from embedserve.backend import BackendCapabilities, EmbedInput, Modality
from embedserve.errors import EmptyInput, InvalidRequest, PayloadTooLarge
from embedserve.serving.images import ImageLimits, decode_base64_image, decode_image
from embedserve.serving.schemas import EmbedItem, ImageItem, TextItem


def _param(index: int, single: bool, field: str = "input") -> str:
    return field if single else f"{field}[{index}]"


# One request item after parsing: a text, or the bytes of an uploaded image file.
RawItem = str | EmbedItem | bytes


def request_items(
    raw: str | Sequence[Any],
    max_inputs: int,
    images: ImageLimits | None,
    field: str = "input",
    empty_texts: bool = False,
) -> list[str | np.ndarray]:
    """The request's items as texts and decoded images (RGB `uint8` arrays).

    Args:
        raw: a text, or a list of texts, `EmbedItem`s and uploaded image bytes.
        max_inputs: most items allowed.
        images: the image limits; None where images are not accepted.
        field: the request field named in errors (`input[3]`, `items[3]`).
        empty_texts: accept empty and blank texts (tokenizing one lists the special
            tokens; embedding one means nothing).

    Raises:
        EmptyInput: an empty list.
        InvalidRequest: token ids instead of text, an empty text, text that is not valid
            Unicode (lone surrogates), an undecodable image, or an image where none is
            accepted; `param` names the item.
        PayloadTooLarge: more items than `max_inputs`, or an image over the limits.
    """
    single = isinstance(raw, str)
    items = [raw] if single else list(raw)
    if not items:
        raise EmptyInput(f"{field} must not be an empty list", param=field)
    if len(items) > max_inputs:
        raise PayloadTooLarge(
            f"{field} has {len(items)} items; the limit is {max_inputs} per request", param=field
        )
    return [
        _item(item, _param(i, single, field), images, empty_texts) for i, item in enumerate(items)
    ]


def _item(
    item: RawItem, param: str, images: ImageLimits | None, empty_texts: bool = False
) -> str | np.ndarray:
    if isinstance(item, TextItem):
        return _text(item.text, param, empty_texts)
    if isinstance(item, ImageItem | bytes):
        if images is None:
            raise InvalidRequest(f"{param} is an image; only texts are accepted", param=param)
        data = decode_base64_image(item.image, param) if isinstance(item, ImageItem) else item
        return decode_image(data, param, images.max_bytes, images.max_pixels)
    if not isinstance(item, str):
        # Token ids only mean something in the tokenizer that made them (langchain-openai
        # sends tiktoken's ids unless told not to); the texts embed with any model.
        raise InvalidRequest(
            "token-id inputs are not supported: send the texts themselves (langchain-openai: "
            "OpenAIEmbeddings(..., check_embedding_ctx_length=False))",
            param=param,
        )
    return _text(item, param, empty_texts)


def _text(text: str, param: str, empty_texts: bool = False) -> str:
    if not (empty_texts or text.strip()):
        raise InvalidRequest(f"{param} is empty or only whitespace", param=param)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"{param} is not valid Unicode (it contains a lone surrogate)", param=param
        ) from None
    return text


def dropped_tokens(token_counts: Sequence[int], limit: int | None) -> list[int]:
    """Per input, the tokens that truncation to `limit` drops (none without a limit)."""
    return [0 if limit is None else max(0, count - limit) for count in token_counts]


def check_token_limits(
    token_counts: Sequence[int],
    limit: int | None,
    truncate: bool,
    single: bool,
    field: str = "input",
    model: str | None = None,
) -> None:
    """Without `truncate`, refuse an input over `limit` with a 400 naming it, and the
    settings that would have it embedded (with it, `dropped_tokens` counts the cut).

    Args:
        token_counts: each input's tokens, before truncation.
        limit: the model's token limit (None: unlimited).
        truncate: whether over-long inputs are truncated rather than refused.
        single: the request sent one item, not a list: errors name `field` itself.
        field: the request field errors name (`input[3]`, `items[3]`).
        model: the public model name the message names in its config key.

    Raises:
        InvalidRequest: an input is longer than `limit` tokens and truncation is off.
    """
    if limit is not None and not truncate:
        for index, count in enumerate(token_counts):
            if count > limit:
                param = _param(index, single, field)
                key = f"`models.{model}.truncate: true`" if model else "the model's `truncate`"
                raise InvalidRequest(
                    f"{param} is {count} tokens, over the model's limit of {limit}; shorten "
                    "it, or embed its first tokens only: send `truncate: true`, or set "
                    f"{key} (or `server.truncate: true`, for models that set none) in the "
                    "config",
                    param=param,
                    code="input_too_long",
                )


def check_support(
    capabilities: BackendCapabilities,
    inputs: Sequence[EmbedInput],
    model: str,
    single: bool,
    field: str = "input",
) -> None:
    """Refuse items of a modality, or outputs, that a backend does not have.

    Args:
        capabilities: what the backend embeds and produces.
        inputs: the request's items; all ask for the same outputs.
        model: the public model name the messages name.
        single: the request sent one item, not a list: errors name `field` itself.
        field: the request field errors name (`input[3]`, `items[3]`).

    Raises:
        InvalidRequest: naming the first such item, or `outputs`.
    """
    for index, item in enumerate(inputs):
        if item.modality not in capabilities.modalities:
            param = _param(index, single, field)
            kinds = " and ".join(m.value for m in capabilities.modalities)
            raise InvalidRequest(
                f"{param} is {'an' if item.modality is Modality.IMAGE else 'a'} "
                f"{item.modality.value}, and model {model!r} embeds only {kinds}",
                param=param,
                code="unsupported_modality",
            )
    missing = [o.value for o in inputs[0].outputs if o not in capabilities.outputs]
    if missing:
        offered = ", ".join(o.value for o in capabilities.outputs)
        raise InvalidRequest(
            f"model {model!r} does not produce {', '.join(missing)} output (it offers: {offered})",
            param="outputs",
            code="unsupported_output",
        )


def check_dimensions(capabilities: BackendCapabilities, dimensions: int) -> None:
    """Accept the native size or a declared Matryoshka size.

    Raises:
        InvalidRequest: any other size, naming the sizes the model supports.
    """
    supported = [*capabilities.matryoshka_dimensions]
    if capabilities.dimensions is not None:
        supported.insert(0, capabilities.dimensions)
    if dimensions in supported:
        return
    if capabilities.matryoshka_dimensions:
        sizes = ", ".join(str(size) for size in supported)
        message = (
            f"dimensions={dimensions} is not supported by this model; supported sizes: {sizes}"
        )
    else:
        native = (
            f"{capabilities.dimensions}-dimensional vectors"
            if capabilities.dimensions is not None
            else "vectors of its native size"
        )
        message = (
            f"dimensions={dimensions} is not supported: this model was not trained for "
            f"truncation (Matryoshka) and only produces {native}"
        )
    raise InvalidRequest(message, param="dimensions", code="unsupported_dimensions")
