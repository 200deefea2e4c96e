"""TEI's token-level features over the model's own tokenizer: `/tokenize`'s token lists,
bounded by the model's token limit as `/embed`'s inputs are, and token-id inputs of the
embedding routes.

A token-id input is taken when it is the tokenization of a text, special tokens included,
as `/tokenize` lists it: the ids are decoded to that text, and the text must encode back
to exactly those ids. The replicas then embed the text, which their tokenizer (the same
files) turns into exactly those ids again; every backend of the chain, and the cache,
take it as any other text. Ids that no text encodes to are refused rather than embedded
as some other ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from embedserve.backend import Backend, EmbedInput, InputType
from embedserve.deployments.tei_errors import TeiError
from embedserve.errors import InvalidRequest, RequestValidationFailed, clip
from embedserve.serving.schemas import TokenIds
from embedserve.serving.validation import request_items

_INPUT_TYPES = frozenset(t.value for t in InputType)
# TEI's bound on a text's characters, per token of the model's limit (its router's
# `MAX_CHAR_MULTIPLIER`).
CHARS_PER_TOKEN = 250


def model_tokenizer(backend: Backend, purpose: str) -> Any:
    """The fast tokenizer the backend counts tokens with.

    The `Backend` contract has no tokenize hook. The transformers-based backends keep the
    tokenizer `load_tokenizer` loaded for counting (`_counter`), say what text they
    encode (`prompted_texts`) and name their prompts (`named_prompts`); a fast (Rust)
    tokenizer gives the ids, character offsets and special-token mask that TEI's tokens
    carry. Others (the hash backend counts words and has no vocabulary; remote APIs)
    cannot list or take tokens honestly.

    Raises:
        TeiError: (`Tokenizer`, 422) the backend has no such tokenizer; the message says
            what it was needed for (`purpose`).
    """
    tokenizer = getattr(backend, "_counter", None)
    if not getattr(tokenizer, "is_fast", False) or not hasattr(backend, "named_prompts"):
        raise TeiError(f"a {backend.kind} backend has no tokenizer that can {purpose}", "Tokenizer")
    return tokenizer


# --- /tokenize --------------------------------------------------------------------------


def tokenize_request(
    backend: Backend,
    inputs: str | list[str],
    prompt_name: str | None,
    add_special_tokens: bool,
    max_inputs: int,
) -> list[list[dict[str, Any]]]:
    """Per input, TEI's tokens: `{"id", "text", "special", "start", "stop"}`, offsets in
    characters of the prompted text, as the backend's tokenizer splits it. An empty text
    is its special tokens only.

    Raises:
        TeiError: (`Tokenizer`) the backend has no tokenizer that gives offsets.
        EmbedServeError: no inputs or too many, an unknown `prompt_name` (400), or an
            input over the model's token limit or TEI's character limit (413: the answer
            lists at most `max_input_length` tokens per input, as `/embed` embeds at most
            that many).
    """
    tokenizer = model_tokenizer(backend, "list tokens with offsets")
    # Without an image policy every item is a text.
    texts = cast(list[str], request_items(inputs, max_inputs, None, "inputs", empty_texts=True))
    limit = backend.capabilities.max_input_tokens
    _check_characters(texts, limit, inputs)
    prompted = prompted_texts(backend, texts, prompt_name)
    encoded = tokenizer(
        prompted,
        add_special_tokens=add_special_tokens,
        truncation=False,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        verbose=False,
    )
    _check_listed(encoded["input_ids"], limit, inputs)
    columns = zip(
        prompted,
        encoded["input_ids"],
        encoded["offset_mapping"],
        encoded["special_tokens_mask"],
        strict=True,
    )
    return [_tokens(tokenizer, *column) for column in columns]


def prompted_texts(backend: Any, texts: Sequence[str], prompt_name: str | None) -> list[str]:
    """The texts as the model encodes them with the named prompt (TEI's `prompt_name`: a
    prompt of the model's configuration, any name); None: as the embedding routes
    encode a text without `prompt_name`.

    Raises:
        InvalidRequest: the model has no prompt of that name (400 `Validation`).
    """
    prompts = backend.named_prompts()
    if prompt_name is not None and prompt_name not in prompts:
        known = ", ".join(sorted(prompts)) or "none"
        raise InvalidRequest(
            f"prompt_name: the model has no prompt {prompt_name!r} (its prompts: {known})",
            param="prompt_name",
        )
    if prompt_name is None or prompt_name in _INPUT_TYPES:
        # The prompt of an input type, applied as the backend applies it on `/embed`.
        input_type = InputType(prompt_name) if prompt_name else None
        return backend.prompted_texts([EmbedInput(text, input_type) for text in texts])
    # Only sentence-transformers models name other prompts; their prompts are prefixes.
    return [prompts[prompt_name] + text for text in texts]


def _check_characters(texts: Sequence[str], limit: int | None, inputs: str | list[str]) -> None:
    """Refuse a text too long to be worth tokenizing, as TEI does: more than
    `CHARS_PER_TOKEN` characters per token of the model's limit (tokenizing megabytes
    takes the router's event loop for seconds)."""
    if limit is None:
        return
    most = CHARS_PER_TOKEN * limit
    for index, text in enumerate(texts):
        if len(text) > most:
            param = _param(inputs, index)
            raise InvalidRequest(
                f"{param} is {len(text)} characters, over the limit of {most} "
                f"({CHARS_PER_TOKEN} per token of the model's `max_input_length`, {limit}, "
                "as in TEI)",
                param=param,
                code="input_too_long",
            )


def _param(inputs: str | list[str], index: int) -> str:
    return "inputs" if isinstance(inputs, str) else f"inputs[{index}]"


def _check_listed(ids: list[list[int]], limit: int | None, inputs: str | list[str]) -> None:
    """Refuse an input of more tokens than the model embeds: a text of megabytes would
    otherwise come back as tens of megabytes of tokens."""
    for index, row in enumerate(ids):
        if limit is not None and len(row) > limit:
            param = _param(inputs, index)
            raise InvalidRequest(
                f"{param} is {len(row)} tokens, over the model's limit of {limit} "
                "(`max_input_length` in `/info`): `/tokenize` lists at most as many tokens "
                "per input as the model embeds",
                param=param,
                code="input_too_long",
            )


def _tokens(
    tokenizer: Any, text: str, ids: list[int], offsets: list[tuple[int, int]], special: list[int]
) -> list[dict[str, Any]]:
    """One text's tokens; a special token's text is its name, and it has no offsets."""
    names = tokenizer.convert_ids_to_tokens(ids)
    return [
        {"id": token, "text": name, "special": True, "start": None, "stop": None}
        if is_special
        else {"id": token, "text": text[start:stop], "special": False, "start": start, "stop": stop}
        for token, name, (start, stop), is_special in zip(ids, names, offsets, special, strict=True)
    ]


# --- token-id inputs of /embed, /embed_sparse and /embed_all -----------------------------


def embedding_items(
    tokenizer_backend: Callable[[], Backend],
    inputs: str | TokenIds | list[str | TokenIds],
    prompt_name: str | None,
) -> str | list[str]:
    """TEI's `inputs` as the engine's items: texts as they are, each token-id list as the
    text it is the tokenization of (see the module's docstring).

    Args:
        tokenizer_backend: the backend whose tokenizer reads the ids, asked for only when
            ids come (texts need no tokenizer here).
        inputs: TEI's `inputs`.
        prompt_name: the request's `prompt_name` (refused with ids).

    Raises:
        EmbedServeError: for token ids: a backend without a tokenizer (422 `Tokenizer`),
            ids outside the model's vocabulary (422 `Validation`), ids no text encodes
            to, or a `prompt_name` with them (400 `Validation`).
    """
    if isinstance(inputs, str):
        return inputs
    if inputs and all(isinstance(item, int) for item in inputs):
        return _text_of_ids(tokenizer_backend(), cast(TokenIds, inputs), prompt_name, "inputs")
    return [
        item
        if isinstance(item, str)
        else _text_of_ids(tokenizer_backend(), item, prompt_name, f"inputs[{i}]")
        for i, item in enumerate(cast(list[str | TokenIds], inputs))
    ]


def _text_of_ids(backend: Backend, ids: TokenIds, prompt_name: str | None, param: str) -> str:
    """The text whose tokenization, special tokens included, is exactly `ids`."""
    tokenizer = model_tokenizer(backend, "take token ids")
    if prompt_name is not None:
        raise InvalidRequest(
            f"prompt_name applies to texts; {param} is token ids, embedded as they are",
            param="prompt_name",
        )
    if not ids:
        raise InvalidRequest(f"{param} is an empty list of token ids", param=param)
    vocabulary = len(tokenizer)
    outside = [token for token in ids if token >= vocabulary]
    if outside:
        raise RequestValidationFailed(
            f"{param} has token ids outside the model's vocabulary of {vocabulary} tokens: "
            f"{clip(', '.join(map(str, outside)))}",
            param=param,
        )
    text = _spelling(tokenizer, ids)
    if text is None or tokenizer(text, verbose=False)["input_ids"] != ids:
        raise InvalidRequest(
            f"{param} is not the tokenization of a text: send the ids `/tokenize` lists for "
            "a text, special tokens included (the text they spell encodes to other ids)",
            param=param,
        )
    return text


def _spelling(tokenizer: Any, ids: TokenIds) -> str | None:
    """The text `ids` spell within the special tokens the tokenizer puts around a text
    (`[CLS] ... [SEP]`), others kept: an `[UNK]` stays `[UNK]`, which encodes back to
    itself; None when the ids lack those tokens."""
    # The tokens around a text: those of "a" with special tokens, less those without.
    framed = tokenizer("a", verbose=False)["input_ids"]
    bare = tokenizer("a", add_special_tokens=False, verbose=False)["input_ids"]
    starts = [i for i in range(len(framed)) if framed[i : i + len(bare)] == bare]
    if not starts:
        return None
    prefix, suffix = framed[: starts[0]], framed[starts[0] + len(bare) :]
    end = len(ids) - len(suffix)
    if ids[: len(prefix)] != prefix or ids[end:] != suffix or end < len(prefix):
        return None
    return tokenizer.decode(ids[len(prefix) : end])
