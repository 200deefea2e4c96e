"""The embedserve configuration file: backends, public models and their fallback chains.

One YAML file, validated by pydantic. Unknown keys and bad values are rejected with the
key path and the reason (:class:`ConfigError`). Backend `options` are validated against
the `Options` model of the plugin that provides the backend kind.
"""

from __future__ import annotations

import contextlib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    model_validator,
)

from embedserve._plugins import BackendRegistry, default_registry
from embedserve.backend import Backend
from embedserve.runtime.canary import DEFAULT_STATE_DIR, CanaryConfig, ServerCanaryConfig
from embedserve.runtime.tracing import TracingConfig
from embedserve.serving.cache import CacheConfig
from embedserve.space import space_id

DEFAULT_CONFIG_RESOURCE = "default_config.yaml"
# Backend names become Serve deployment names; model names travel in HTTP headers.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")]


class ConfigError(ValueError):
    """The configuration is invalid; the message lists each key path and reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# `max_batch_tokens: auto` of a backend that knows nothing of its device (TEI's default).
DEFAULT_TOKEN_BUDGET = 16384


class BatchingConfig(_Strict):
    """Dynamic batching limits of a backend replica (changeable at run time)."""

    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Most items in one batch.")
    batch_wait_timeout_s: float = Field(
        default=0,
        ge=0,
        le=10,
        description="How long an idle replica waits for a batch to fill before it starts; "
        "a busy replica's next batch takes whatever arrived meanwhile, without waiting.",
    )
    max_batch_tokens: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto",
        description="Most tokens in one batch. `auto`: from the replica's device, once the "
        "model is loaded (8192 on a CPU; on a GPU, what half its free memory share holds "
        f"of the model's activations), else {DEFAULT_TOKEN_BUDGET}.",
    )

    def resolved(self, device_budget: int | None) -> BatchingConfig:
        """These limits with `max_batch_tokens: auto` replaced by `device_budget` (the
        loaded backend's `token_budget`), or by the server's default when it has none."""
        if self.max_batch_tokens != "auto":
            return self
        return self.model_copy(update={"max_batch_tokens": device_budget or DEFAULT_TOKEN_BUDGET})

    @property
    def batch_tokens(self) -> int:
        """`max_batch_tokens` of limits `resolved` for a device.

        Raises:
            ValueError: the limits still say `auto`.
        """
        if self.max_batch_tokens == "auto":
            raise ValueError("max_batch_tokens is auto: resolve the limits for a device first")
        return self.max_batch_tokens


class AutoscalingConfig(_Strict):
    """Ray Serve autoscaling of a backend deployment."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    upscale_delay_s: float = Field(default=30.0, ge=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)

    @model_validator(mode="after")
    def _replica_bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        return self


class ResourcesConfig(_Strict):
    """Ray resources of each replica; fractional GPUs share one device."""

    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    memory: int | None = Field(default=None, ge=0, description="Bytes of memory to reserve.")
    resources: dict[str, float] = Field(default_factory=dict, description="Custom resources.")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime_env of the replicas (for example `pip` or `py_executable`), "
        "so one backend can run with library versions the others cannot use.",
    )

    @model_validator(mode="after")
    def _gpu_fraction(self) -> ResourcesConfig:
        if self.num_gpus > 1 and not float(self.num_gpus).is_integer():
            raise ValueError("num_gpus above 1 must be a whole number of GPUs")
        return self


class LoadRetryConfig(_Strict):
    """How a replica whose backend failed to load tries again: after `first_delay_s`,
    then twice as long each time, never longer than `max_delay_s`."""

    first_delay_s: float = Field(default=2.0, gt=0, description="Wait before the first retry.")
    max_delay_s: float = Field(default=60.0, gt=0, description="Longest wait between two attempts.")

    @model_validator(mode="after")
    def _ordered(self) -> LoadRetryConfig:
        if self.max_delay_s < self.first_delay_s:
            raise ValueError("max_delay_s must not be less than first_delay_s")
        return self


class BackendConfig(_Strict):
    """One configured backend: a plugin kind, its options and how it is deployed."""

    kind: str
    options: dict[str, Any] = Field(default_factory=dict)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    max_ongoing_requests: int | None = Field(
        default=None,
        ge=1,
        description="Requests a replica takes at once; default 2x max_batch_size.",
    )
    max_queued_requests: int = Field(
        default=512,
        ge=1,
        description="Requests waiting for a replica; beyond it the backend is "
        "overloaded and the chain moves on (503 with Retry-After when none is left).",
    )
    timeout_s: float = Field(
        default=60.0, gt=0, description="Deadline of one call to this backend."
    )
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    load_retry: LoadRetryConfig = Field(default_factory=LoadRetryConfig)

    @property
    def ongoing_requests_limit(self) -> int:
        """`max_ongoing_requests`, defaulting to enough to fill two batches."""
        return self.max_ongoing_requests or 2 * self.batching.max_batch_size


class ModelConfig(_Strict):
    """A public model name and the ordered fallback chain of backends serving it."""

    chain: list[str] = Field(min_length=1)
    allow_cross_space: bool = Field(
        default=False,
        description="Let the chain fall through to a backend of another vector space.",
    )
    truncate: bool | None = Field(
        default=None,
        description="Truncate inputs over the token limit instead of answering 400; "
        "default: `server.truncate`. A request's `truncate` overrides it.",
    )
    cache: CacheConfig = Field(default_factory=CacheConfig)


class AuthConfig(_Strict):
    """API keys: on when at least one key is configured."""

    keys_env: str | None = Field(
        default="EMBEDSERVE_API_KEYS",
        description="Environment variable with plain keys, comma-separated.",
    )
    keys_file: str | None = Field(
        default=None, description="YAML file of hashed keys (see README)."
    )
    requests_per_minute: int | None = Field(
        default=None, ge=1, description="Default per-key limit."
    )
    tokens_per_minute: int | None = Field(default=None, ge=1, description="Default per-key limit.")


class ServerConfig(_Strict):
    """HTTP server settings and request limits."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    offline: bool | None = Field(
        default=None,
        description="Set Hugging Face offline mode in replicas; default: on when no "
        "backend needs a model hub.",
    )
    max_inputs_per_request: int = Field(default=2048, ge=1)
    truncate: bool = Field(
        default=False,
        description="Truncate inputs over a model's token limit instead of answering 400, "
        "for the models that do not set `truncate` themselves.",
    )
    tei_default_model: str | None = Field(
        default=None,
        description="The model TEI's routes serve when a request names none in its "
        "`X-Embedding-Model` header; default: the first model in `models`.",
    )
    max_request_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1, description="Largest image file in a request (413 above)."
    )
    max_image_pixels: int = Field(
        default=4096 * 4096,
        ge=1,
        description="Most pixels (width x height) of an image (413 above); checked from the "
        "header, before decoding.",
    )
    state_dir: str = Field(
        default=DEFAULT_STATE_DIR,
        description="The node's cache of canary references (the cluster's reference and "
        "`canary.references` come first).",
    )
    canary: ServerCanaryConfig = Field(default_factory=ServerCanaryConfig)
    request_timeout_s: float = Field(
        default=120.0, gt=0, description="Deadline of a whole request, fallbacks included (504)."
    )
    router_num_cpus: float = Field(default=0.25, ge=0)
    router_replicas: int = Field(default=1, ge=1)
    ingress: Literal["auto", "direct", "proxy"] = Field(
        default="auto",
        description="How HTTP reaches the router. `direct`: the router replica answers on "
        "`port` itself (Ray Serve's direct ingress and throughput-optimized mode; Serve's "
        "proxy moves to a free port), one hop and a process fewer per request; needs a Ray "
        "that `embedserve serve` starts and one router replica. `proxy`: through Ray "
        "Serve's proxy on `port`. `auto`: `direct` where it can be, else `proxy`.",
    )
    auth: AuthConfig = Field(default_factory=AuthConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    router_max_ongoing_requests: int = Field(
        default=1024,
        ge=1,
        description="Requests one router replica handles at once; a slow "
        "backend must not hold up the other models.",
    )


class EmbedServeConfig(_Strict):
    """The whole configuration file."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    backends: dict[Name, BackendConfig] = Field(min_length=1)
    models: dict[Name, ModelConfig] = Field(min_length=1)

    _backends: dict[str, Backend] = PrivateAttr(default_factory=dict)

    def backend(self, name: str) -> Backend:
        """An unloaded backend instance for a configured backend name (see parse_config)."""
        return self._backends[name]

    def space_id(self, backend_name: str) -> str:
        """The vector space id of a configured backend."""
        return space_id(self.backend(backend_name).space_identity())

    @property
    def tei_model(self) -> str:
        """The model TEI's routes serve when a request names none: `server.tei_default_model`,
        else the first configured model."""
        return self.server.tei_default_model or next(iter(self.models))

    @property
    def offline(self) -> bool:
        """Whether replicas run with the Hugging Face hub switched off."""
        if self.server.offline is not None:
            return self.server.offline
        return not any(self.backend(name).uses_model_hub for name in self.backends)


def _format_validation_error(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in (*prefix, *err["loc"])) or "(top level)"
        lines.append(f"{path}: {err['msg']}")
    return lines


def _check_backend_options(
    backends: dict[str, BackendConfig], registry: BackendRegistry
) -> tuple[list[str], dict[str, Backend]]:
    """Each backend's options validated by its kind's model: the problems, and an
    unloaded instance of every backend whose options are valid."""
    problems: list[str] = []
    instances: dict[str, Backend] = {}
    for name, backend in backends.items():
        try:
            backend_class = registry.get(backend.kind).backend_class
        except KeyError as exc:
            problems.append(f"backends.{name}.kind: {exc.args[0]}")
            continue
        try:
            instances[name] = backend_class(backend.options)
        except ValidationError as exc:
            problems += _format_validation_error(exc, ("backends", name, "options"))
        except ValueError as exc:
            problems.append(f"backends.{name}.options: {exc}")
    return problems, instances


def _check_chains(config: EmbedServeConfig, instances: dict[str, Backend]) -> list[str]:
    problems: list[str] = []
    for model_name, model in config.models.items():
        for i, backend_name in enumerate(model.chain):
            if backend_name not in config.backends:
                known = ", ".join(sorted(config.backends))
                problems.append(
                    f"models.{model_name}.chain.{i}: unknown backend {backend_name!r} "
                    f"(configured backends: {known})"
                )
        if model.allow_cross_space or any(b not in instances for b in model.chain):
            continue
        primary = space_id(instances[model.chain[0]].space_identity())
        for i, backend_name in enumerate(model.chain[1:], start=1):
            other = space_id(instances[backend_name].space_identity())
            if other != primary:
                problems.append(
                    f"models.{model_name}.chain.{i}: backend {backend_name!r} is in vector "
                    f"space {other}, not the chain's space {primary}; its vectors are not "
                    "comparable (set allow_cross_space: true to allow it)"
                )
    return problems


# The router's deployment is named `router`; Serve would rename a backend of that name.
RESERVED_BACKEND_NAMES = frozenset({"router"})


def _check_names(config: EmbedServeConfig) -> list[str]:
    problems = [
        f"backends.{name}: the name is the router deployment's; choose another"
        for name in config.backends
        if name in RESERVED_BACKEND_NAMES
    ]
    default = config.server.tei_default_model
    if default is not None and default not in config.models:
        known = ", ".join(config.models)
        problems.append(
            f"server.tei_default_model: no model {default!r} is configured (models: {known})"
        )
    return problems


def _backend_problems(data: Any, registry: BackendRegistry) -> list[str]:
    """The option problems of every backend section that is itself valid, for a config
    whose other sections are not: every problem is reported in one pass."""
    raw = data.get("backends") if isinstance(data, dict) else None
    if not isinstance(raw, dict):
        return []
    backends = {}
    for name, section in raw.items():
        with contextlib.suppress(ValidationError):  # already reported
            backends[str(name)] = BackendConfig.model_validate(section)
    return _check_backend_options(backends, registry)[0]


def parse_config(data: Any, registry: BackendRegistry | None = None) -> EmbedServeConfig:
    """Validate a configuration mapping.

    Args:
        data: the parsed YAML document.
        registry: the backend registry; default: the plugins found through entry points.

    Returns:
        The validated configuration, with unloaded backend instances.

    Raises:
        ConfigError: every problem found, one `key.path: reason` per line.
    """
    registry = registry or default_registry()
    try:
        config = EmbedServeConfig.model_validate(data)
    except ValidationError as exc:
        problems = _format_validation_error(exc) + _backend_problems(data, registry)
        raise ConfigError("\n".join(problems)) from None
    problems, instances = _check_backend_options(config.backends, registry)
    problems += _check_chains(config, instances) + _check_names(config)
    if problems:
        raise ConfigError("\n".join(problems))
    config._backends = instances
    return config


def load_config(
    path: str | Path | None = None, registry: BackendRegistry | None = None
) -> EmbedServeConfig:
    """Read and validate a YAML config file; `None` reads the bundled default config."""
    if path is None:
        text = resources.files("embedserve").joinpath(DEFAULT_CONFIG_RESOURCE).read_text()
        origin = "the bundled default config"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        origin = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin} is not valid YAML: {exc}") from None
    try:
        return parse_config(data, registry)
    except ConfigError as exc:
        raise ConfigError(f"{origin} is invalid:\n{exc}") from None
