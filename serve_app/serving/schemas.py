"""Request and response bodies of the HTTP API: OpenAI-compatible and native."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from embedserve.backend import InputType, Modality, OutputKind


class TextItem(BaseModel):
    """A text item."""

    model_config = ConfigDict(extra="forbid")

    text: str


class ImageItem(BaseModel):
    """An image item: PNG, JPEG, WebP or GIF (first frame), base64 or a data URI."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(description="Base64 of the file, or `data:image/png;base64,...`.")


# One item of a request: `{"text": ...}` or `{"image": ...}`.
EmbedItem = TextItem | ImageItem


class EmbeddingsRequest(BaseModel):
    """`POST /v1/embeddings`, as the OpenAI API defines it (plus `input_type`, and image
    items `{"image": ...}` for models that embed images)."""

    model_config = ConfigDict(extra="forbid")

    input: str | list[str | EmbedItem] | list[int] | list[list[int]] = Field(
        description="A text or a list of texts to embed; for an image model, items may be "
        '`{"image": "<base64 or data URI>"}` (or `{"text": ...}`).'
    )
    model: str
    dimensions: int | None = Field(default=None, ge=1)
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    input_type: InputType | None = Field(
        default=None, description="`query` or `document`: selects the backend's prompt."
    )
    truncate: bool | None = Field(
        default=None,
        description="Embed the first tokens of inputs over the model's limit instead of "
        "answering 400 (default: the model's `truncate` setting).",
    )


class EmbedRequest(BaseModel):
    """`POST /v1/embed`: embedserve's native endpoint for what the OpenAI shape cannot
    say: image items, the input type, sparse and multi-vector outputs."""

    model_config = ConfigDict(extra="forbid")

    model: str
    items: list[EmbedItem] = Field(description="Texts and images, embedded in this order.")
    input_type: InputType | None = Field(
        default=None, description="How the vectors will be used; selects the backend's prompt."
    )
    outputs: list[OutputKind] = Field(
        default_factory=lambda: [OutputKind.DENSE],
        min_length=1,
        description="The representations wanted: `dense`, `sparse`, `multivector`.",
    )
    dimensions: int | None = Field(
        default=None, ge=1, description="Matryoshka size of dense vectors."
    )
    encoding_format: Literal["float", "base64"] = "float"
    truncate: bool | None = None
    sparse_tokens: bool = Field(default=False, description="Add token strings to sparse vectors.")


class SparseEmbedding(BaseModel):
    """A sparse vector as vector stores take it: token ids and their weights."""

    indices: list[int]
    values: list[float]
    tokens: list[str] | None = None


class EmbedResult(BaseModel):
    """The outputs of one item, at the index of the item; outputs not asked for are left
    out of the item (never null)."""

    index: int
    dense: list[float] | str | None = None
    sparse: SparseEmbedding | None = None
    multivector: list[list[float]] | list[str] | None = Field(
        default=None, description="One vector per token; base64 strings with `encoding_format`."
    )


class EmbeddingData(BaseModel):
    """One vector of the answer, at the index of its input."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    """Tokens the request cost, counted by the serving model's tokenizer."""

    prompt_tokens: int
    total_tokens: int
    truncated_tokens: int = Field(default=0, description="Tokens dropped by truncation.")


class EmbeddingMetadata(BaseModel):
    """What a client must store next to vectors to use them safely."""

    model: str = Field(description="The public model name that was asked for.")
    backend: str = Field(description="The configured backend that produced the vectors.")
    space_id: str = Field(description="Vectors are comparable only within one space.")
    dimensions: int
    normalized: bool
    semantic: bool = Field(description="False for non-semantic spaces such as feature hashing.")
    fallback: bool = Field(description="True when a backend after the chain's first served.")


class EmbeddingsResponse(EmbeddingMetadata):
    """The OpenAI response shape with embedserve's metadata as extra fields."""

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    usage: Usage


class EmbedResponse(EmbeddingMetadata):
    """`POST /v1/embed`: per-item results in input order, with the vector metadata."""

    object: Literal["list"] = "list"
    data: list[EmbedResult]
    usage: Usage


class BackendInfo(BaseModel):
    """One backend of a model's chain, as `GET /v1/models` shows it."""

    name: str
    kind: str
    space_id: str
    available: bool | None = Field(
        default=None, description="None when the replica did not answer."
    )
    reason: str | None = Field(default=None, description="Why it cannot serve, in one line.")
    log: str | None = Field(
        default=None, description="The replica's log file, with the traceback of a failed load."
    )
    dimensions: int | None
    matryoshka_dimensions: list[int]
    max_input_tokens: int | None
    modalities: list[Modality]
    outputs: list[OutputKind]
    normalized: bool
    semantic: bool


class ModelCard(BaseModel):
    """One public model of `GET /v1/models` (OpenAI's shape plus the chain)."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "embedserve"
    space_id: str
    dimensions: int | None
    allow_cross_space: bool
    chain: list[BackendInfo]
    serving_backends: list[str] = Field(
        default_factory=list,
        description="The backends of the chain that can serve now, in chain order.",
    )
    max_inputs_per_request: int


class ModelList(BaseModel):
    """`GET /v1/models`."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    """The body of an error, as the OpenAI API shapes it (extra keys may follow)."""

    model_config = ConfigDict(extra="allow")

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(BaseModel):
    """`{"error": {...}}`: every error response."""

    error: ErrorBody


# --- TEI's API (text-embeddings-inference), for the clients that speak it ---------------
# Field names, defaults and shapes follow TEI's router (huggingface/text-embeddings-inference,
# router/src/http/types.rs and router/src/lib.rs). As in TEI, unknown fields are ignored.

# A text with something to embed: the schema says so; an empty or blank one is a 400
# naming the item (validation.request_items), as on the other routes.
Text = Annotated[str, WithJsonSchema({"type": "string", "pattern": r"\S"})]
# TEI's `Right` (huggingface_hub sends it in lower case). TEI's `Left` is not offered: the
# backends' tokenizers cut on the right, and cutting the text itself would not keep the
# tokens that a tokenizer cutting on the left keeps.
TruncationDirection = Literal["Right", "right"]
TeiErrorType = Literal["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"]


# A text already tokenized: ids of the model's vocabulary, special tokens included, as
# `/tokenize` lists them (TEI's `InputType` that is not a string).
TokenIds = list[Annotated[int, Field(ge=0, strict=True)]]
# One TEI input: a text or its token ids.
TeiInput = Text | TokenIds


class TeiRequest(BaseModel):
    """`POST /embed_sparse` and `/embed_all` (and the base of `/embed`), as TEI takes them."""

    model_config = ConfigDict(extra="ignore")

    inputs: TeiInput | list[TeiInput] = Field(
        description="A text, its token ids, or a list of texts and token-id lists. Token "
        "ids are the model's, special tokens included (as `/tokenize` lists them)."
    )
    truncate: bool | None = Field(
        default=None,
        strict=True,  # as TEI's serde: `0` is not a boolean
        description="Embed the first tokens of inputs over the model's limit instead of "
        "answering 413 (default: the model's `truncate`, else `server.truncate`).",
    )
    truncation_direction: TruncationDirection = Field(
        default="Right",
        description="`Right`: keep the first tokens (TEI's `Left` is not supported).",
    )
    prompt_name: InputType | None = Field(
        default=None,
        description="The model's prompt for this use, as `input_type` (a model without a "
        "prompt for it embeds the text as it is); texts only.",
    )


class TeiEmbedRequest(TeiRequest):
    """`POST /embed` (and `POST /`), as TEI takes it."""

    normalize: bool = Field(
        default=True, strict=True, description="Unit-length vectors (TEI's default)."
    )
    dimensions: int | None = Field(
        default=None, ge=1, strict=True, description="A Matryoshka size of the model."
    )


class TeiTokenizeRequest(BaseModel):
    """`POST /tokenize`, as TEI takes it."""

    model_config = ConfigDict(extra="ignore")

    inputs: str | list[str] = Field(
        description="A text or a list of texts; an empty text is its special tokens only."
    )
    add_special_tokens: bool = Field(default=True, strict=True)
    prompt_name: str | None = Field(
        default=None, description="A prompt of the model's configuration, by name (`query`...)."
    )


class TeiSparseValue(BaseModel):
    """One non-zero weight of a sparse vector: a vocabulary id and its value."""

    index: int
    value: float


class TeiToken(BaseModel):
    """One token of `POST /tokenize`; a special token has no offsets."""

    id: int
    text: str
    special: bool
    start: int | None = Field(description="Character offset in the (prompted) text.")
    stop: int | None


class TeiEmbeddingModel(BaseModel):
    """TEI's `model_type.embedding`."""

    pooling: str


class TeiModelType(BaseModel):
    """TEI's `model_type`: an embedding model here."""

    embedding: TeiEmbeddingModel


class TeiInfo(BaseModel):
    """`GET /info`: TEI's description of the model it serves."""

    model_id: str
    model_sha: str | None
    served_model_name: str = Field(description="The public model name the answer is of.")
    model_dtype: str
    model_type: TeiModelType
    max_concurrent_requests: int
    max_input_length: int | None
    max_batch_tokens: int | None
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    sha: str | None = None
    docker_label: str | None = None


class TeiErrorBody(BaseModel):
    """Every error of TEI's routes, as TEI shapes it."""

    error: str
    error_type: TeiErrorType
