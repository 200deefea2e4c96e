"""Config validation: every error names its key path and the reason."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from embedserve import BackendRegistry
from embedserve.config import ConfigError, EmbedServeConfig, load_config, parse_config

MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def _config(
    backends: dict[str, Any] | None = None, models: dict[str, Any] | None = None, **top: Any
) -> dict[str, Any]:
    """A config mapping: one hash backend `h` served as model `m` unless overridden."""
    return {
        "backends": backends if backends is not None else {"h": {"kind": "hash"}},
        "models": models if models is not None else {"m": {"chain": ["h"]}},
        **top,
    }


def _error(data: Any, registry: BackendRegistry) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, registry)
    return str(caught.value)


def _hub_model(**options: Any) -> dict[str, Any]:
    return {"kind": "sentence-transformers", "options": {"model": "org/some-model", **options}}


# -- a valid config -------------------------------------------------------------------------


def test_minimal_config_gets_defaults(registry: BackendRegistry) -> None:
    config = parse_config(_config(), registry)

    assert config.server.port == 8000
    assert config.backends["h"].batching.max_batch_size == 32
    assert config.backends["h"].ongoing_requests_limit == 64
    assert config.backends["h"].autoscaling.min_replicas == 1
    assert config.models["m"].allow_cross_space is False
    assert config.backend("h").kind == "hash"
    assert config.backend("h").options.dimensions == 256


def test_explicit_max_ongoing_requests_wins(registry: BackendRegistry) -> None:
    backends = {"h": {"kind": "hash", "max_ongoing_requests": 5}}
    config = parse_config(_config(backends), registry)
    assert config.backends["h"].ongoing_requests_limit == 5


def test_backend_options_are_validated_by_the_plugin(registry: BackendRegistry) -> None:
    backends = {"h": {"kind": "hash", "options": {"dimensions": 64, "seed": 3}}}
    config = parse_config(_config(backends), registry)
    assert config.backend("h").options.dimensions == 64
    assert config.backend("h").options.seed == 3


# -- errors name the key path ---------------------------------------------------------------


def test_unknown_top_level_key(registry: BackendRegistry) -> None:
    message = _error(_config(sevrer={"port": 1}), registry)
    assert "sevrer: Extra inputs are not permitted" in message


def test_unknown_key_inside_a_backend(registry: BackendRegistry) -> None:
    backends = {"x": {"kind": "hash", "batchin": {"max_batch_size": 4}}}
    message = _error(_config(backends, {"m": {"chain": ["x"]}}), registry)
    assert "backends.x.batchin: Extra inputs are not permitted" in message


def test_unknown_key_inside_batching(registry: BackendRegistry) -> None:
    backends = {"h": {"kind": "hash", "batching": {"max_batch_sise": 4}}}
    message = _error(_config(backends), registry)
    assert "backends.h.batching.max_batch_sise" in message


def test_missing_required_sections(registry: BackendRegistry) -> None:
    message = _error({"server": {}}, registry)
    assert "backends: Field required" in message
    assert "models: Field required" in message


@pytest.mark.parametrize("document", [None, [], "just a string"])
def test_document_that_is_not_a_mapping(registry: BackendRegistry, document: Any) -> None:
    assert "(top level)" in _error(document, registry)


def test_every_problem_is_reported_at_once(registry: BackendRegistry) -> None:
    data = _config(server={"port": 0})
    data["backends"]["h"]["batchin"] = {}
    message = _error(data, registry)
    assert "server.port" in message
    assert "backends.h.batchin" in message
    assert len(message.splitlines()) == 2


@pytest.mark.parametrize("name", ["", "gpu pool", "a/b", "-lead", "x" * 101])
def test_bad_backend_and_model_names(registry: BackendRegistry, name: str) -> None:
    """Backend names become deployment names and model names travel in headers."""
    bad_backend = _error(_config({name: {"kind": "hash"}}, {"m": {"chain": [name]}}), registry)
    assert f"backends.{name}" in bad_backend
    bad_model = _error(_config(models={name: {"chain": ["h"]}}), registry)
    assert f"models.{name}" in bad_model


@pytest.mark.parametrize("name", ["minilm", "bge-m3", "e5.large_v2", "org:model", "A1"])
def test_good_names(registry: BackendRegistry, name: str) -> None:
    config = parse_config(_config({name: {"kind": "hash"}}, {name: {"chain": [name]}}), registry)
    assert config.models[name].chain == [name]


def test_unknown_backend_kind_lists_registered_kinds(registry: BackendRegistry) -> None:
    message = _error(_config({"h": {"kind": "hashh"}}), registry)
    assert "backends.h.kind: unknown backend kind 'hashh'" in message
    assert "registered kinds: hash, sentence-transformers" in message


def test_bad_option_value_names_the_option_path(registry: BackendRegistry) -> None:
    message = _error(_config({"h": {"kind": "hash", "options": {"dimensions": 4}}}), registry)
    assert message.startswith("backends.h.options.dimensions:")
    assert "greater than or equal to 8" in message


def test_unknown_option_of_a_plugin(registry: BackendRegistry) -> None:
    message = _error(_config({"h": {"kind": "hash", "options": {"dims": 64}}}), registry)
    assert "backends.h.options.dims: Extra inputs are not permitted" in message


def test_plugin_options_model_validator_error_names_the_options(
    registry: BackendRegistry,
) -> None:
    backends = {"h": {"kind": "hash", "options": {"char_ngrams": [5, 3]}}}
    message = _error(_config(backends), registry)
    assert message.startswith("backends.h.options")
    assert "char_ngrams must be (min, max)" in message


def test_plugin_constructor_value_error_names_the_backend(registry: BackendRegistry) -> None:
    backends = {"st": _hub_model(truncate_dim=128, matryoshka_dimensions=[256, 64])}
    message = _error(_config(backends, {"m": {"chain": ["st"]}}), registry)
    assert "backends.st.options: matryoshka_dimensions must not exceed truncate_dim" in message


def test_option_errors_of_several_backends_are_all_reported(registry: BackendRegistry) -> None:
    backends = {
        "a": {"kind": "hash", "options": {"dimensions": 4}},
        "b": {"kind": "nope"},
    }
    message = _error(_config(backends, {"m": {"chain": ["a", "b"]}}), registry)
    assert "backends.a.options.dimensions" in message
    assert "backends.b.kind" in message


def test_min_replicas_above_max_replicas(registry: BackendRegistry) -> None:
    backends = {"h": {"kind": "hash", "autoscaling": {"min_replicas": 3, "max_replicas": 2}}}
    message = _error(_config(backends), registry)
    assert "backends.h.autoscaling" in message
    assert "min_replicas must not exceed max_replicas" in message


def test_equal_min_and_max_replicas_are_fine(registry: BackendRegistry) -> None:
    backends = {"h": {"kind": "hash", "autoscaling": {"min_replicas": 2, "max_replicas": 2}}}
    assert parse_config(_config(backends), registry).backends["h"].autoscaling.max_replicas == 2


@pytest.mark.parametrize("num_gpus", [1.5, 2.25])
def test_fractional_gpus_above_one_are_rejected(registry: BackendRegistry, num_gpus: float) -> None:
    backends = {"h": {"kind": "hash", "resources": {"num_gpus": num_gpus}}}
    message = _error(_config(backends), registry)
    assert "backends.h.resources" in message
    assert "num_gpus above 1 must be a whole number" in message


@pytest.mark.parametrize("num_gpus", [0, 0.25, 0.5, 1, 2, 4.0])
def test_gpu_fractions_and_whole_gpus_are_accepted(
    registry: BackendRegistry, num_gpus: float
) -> None:
    backends = {"h": {"kind": "hash", "resources": {"num_gpus": num_gpus}}}
    assert parse_config(_config(backends), registry).backends["h"].resources.num_gpus == num_gpus


def test_negative_gpus_are_rejected(registry: BackendRegistry) -> None:
    backends = {"h": {"kind": "hash", "resources": {"num_gpus": -0.5}}}
    assert "backends.h.resources.num_gpus" in _error(_config(backends), registry)


def test_empty_chain_is_rejected(registry: BackendRegistry) -> None:
    assert "models.m.chain" in _error(_config(models={"m": {"chain": []}}), registry)


def test_chain_naming_an_unknown_backend(registry: BackendRegistry) -> None:
    message = _error(_config(models={"m": {"chain": ["h", "gpu-h"]}}), registry)
    assert "models.m.chain.1: unknown backend 'gpu-h'" in message
    assert "configured backends: h" in message


# -- fallback chains and vector spaces ------------------------------------------------------


def _two_backends(b_options: dict[str, Any], **model: Any) -> dict[str, Any]:
    backends = {
        "a": {"kind": "hash", "options": {"dimensions": 64}},
        "b": {"kind": "hash", "options": b_options, "resources": {"num_cpus": 0.5}},
    }
    return _config(backends, {"m": {"chain": ["a", "b"], **model}})


def test_same_space_chain_is_accepted_without_the_flag(registry: BackendRegistry) -> None:
    """Same options on another pool: one space, so falling through is safe."""
    config = parse_config(_two_backends({"dimensions": 64}), registry)
    assert config.space_id("a") == config.space_id("b")


def test_cross_space_chain_is_rejected_by_default(registry: BackendRegistry) -> None:
    message = _error(_two_backends({"dimensions": 64, "seed": 1}), registry)
    assert message.startswith("models.m.chain.1: backend 'b' is in vector space hash-")
    assert "not comparable" in message
    assert "allow_cross_space: true" in message


def test_cross_space_chain_between_kinds_is_rejected(registry: BackendRegistry) -> None:
    backends = {"h": {"kind": "hash"}, "st": _hub_model()}
    message = _error(_config(backends, {"m": {"chain": ["st", "h"]}}), registry)
    assert "models.m.chain.1: backend 'h'" in message


def test_cross_space_chain_is_accepted_with_the_flag(registry: BackendRegistry) -> None:
    data = _two_backends({"dimensions": 64, "seed": 1}, allow_cross_space=True)
    config = parse_config(data, registry)
    assert config.models["m"].allow_cross_space is True
    assert config.space_id("a") != config.space_id("b")


def test_every_cross_space_position_is_reported(registry: BackendRegistry) -> None:
    backends = {name: {"kind": "hash", "options": {"seed": i}} for i, name in enumerate("abc")}
    message = _error(_config(backends, {"m": {"chain": ["a", "b", "c"]}}), registry)
    assert "models.m.chain.1" in message
    assert "models.m.chain.2" in message


# -- offline mode ---------------------------------------------------------------------------


def test_offline_defaults_to_true_when_every_model_is_local(registry: BackendRegistry) -> None:
    assert load_config(None, registry).offline is True


def test_offline_defaults_to_false_with_a_hub_model(registry: BackendRegistry) -> None:
    backends = {"h": {"kind": "hash"}, "st": _hub_model()}
    config = parse_config(_config(backends, {"m": {"chain": ["st"]}}), registry)
    assert config.offline is False


@pytest.mark.parametrize("offline", [True, False])
def test_explicit_offline_wins(registry: BackendRegistry, offline: bool) -> None:
    backends = {"h": {"kind": "hash"}, "st": _hub_model()}
    data = _config(backends, {"m": {"chain": ["st"]}}, server={"offline": offline})
    assert parse_config(data, registry).offline is offline


def test_explicit_offline_false_with_only_local_models(registry: BackendRegistry) -> None:
    assert parse_config(_config(server={"offline": False}), registry).offline is False


# -- files ----------------------------------------------------------------------------------


def test_bundled_default_config_loads(registry: BackendRegistry) -> None:
    config = load_config(None, registry)

    assert isinstance(config, EmbedServeConfig)
    assert config.models["all-minilm-l6-v2"].chain == ["minilm"]
    assert config.models["hash"].chain == ["hash"]
    minilm = config.backend("minilm")
    assert minilm.options.sha256 == MINILM_SHA256
    assert minilm.space_identity()["sha256"] == MINILM_SHA256
    assert config.space_id("minilm").startswith("all-minilm-l6-v2-")
    assert config.space_id("hash").startswith("hash-")


def test_default_config_file_round_trips_through_a_path(
    registry: BackendRegistry, tmp_path: Path
) -> None:
    bundled = load_config(None, registry)
    path = tmp_path / "copy.yaml"
    path.write_text(yaml.safe_dump(bundled.model_dump(mode="json")))
    copy = load_config(path, registry)
    assert copy.space_id("minilm") == bundled.space_id("minilm")
    assert copy.space_id("hash") == bundled.space_id("hash")


def test_invalid_yaml(registry: BackendRegistry, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("backends:\n  h: {kind: hash\nmodels: [")
    with pytest.raises(ConfigError, match=re.escape(f"{path} is not valid YAML")):
        load_config(path, registry)


def test_missing_file(registry: BackendRegistry, tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    expected = re.escape(f"cannot read config file {path}: No such file")
    with pytest.raises(ConfigError, match=expected):
        load_config(path, registry)


def test_file_errors_name_the_file_and_key_path(registry: BackendRegistry, tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(_config({"x": {"kind": "hash", "batchin": {}}})))
    with pytest.raises(ConfigError) as caught:
        load_config(path, registry)
    first, *rest = str(caught.value).splitlines()
    assert first == f"{path} is invalid:"
    assert any(line.startswith("backends.x.batchin:") for line in rest)


def test_empty_file_is_invalid(registry: BackendRegistry, tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match="is invalid"):
        load_config(path, registry)


# -- every problem in one pass ----------------------------------------------------------------


def test_server_backend_and_chain_problems_are_reported_in_one_pass(registry) -> None:
    """Before: the server's errors alone, and the backends' only once those were fixed."""
    data = _config(
        backends={"h": {"kind": "hash", "options": {"dimensions": -3}}, "g": {"kind": "nope"}},
        server={"port": 0, "max_inputs_per_request": 0},
    )
    lines = _error(data, registry).splitlines()
    assert any(line.startswith("server.port") for line in lines)
    assert any(line.startswith("server.max_inputs_per_request") for line in lines)
    assert any(line.startswith("backends.h.options.dimensions") for line in lines)
    assert any(line.startswith("backends.g.kind") for line in lines)


def test_chain_option_and_name_problems_together(registry) -> None:
    data = _config(
        backends={"router": {"kind": "hash"}, "h": {"kind": "hash", "options": {"nope": 1}}},
        models={"m": {"chain": ["router", "missing"]}},
        server={"tei_default_model": "other"},
    )
    lines = _error(data, registry).splitlines()
    assert "backends.router: the name is the router deployment's; choose another" in lines
    assert any(line.startswith("backends.h.options") for line in lines)
    assert any(line.startswith("models.m.chain.1: unknown backend 'missing'") for line in lines)
    assert any(line.startswith("server.tei_default_model: no model 'other'") for line in lines)
