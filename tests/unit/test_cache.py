"""The embedding cache: a repeated input never reaches a replica while it is cached,
entries are per vector space, bounded by bytes and by age."""

from __future__ import annotations

import numpy as np

from embedserve import EmbedInput, InputType
from embedserve.serving.cache import CacheConfig, EmbeddingCache, cache_key
from tests.unit.fakes import A, B, NaNHandle, RaisingHandle, embed, make_app, make_config

CACHED = {"cache": {"enabled": True}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_differ_by_space_input_type_and_content() -> None:
    text = EmbedInput("hello")
    assert cache_key("space-a", text) == cache_key("space-a", EmbedInput("hello"))
    assert cache_key("space-a", text) != cache_key("space-b", text)
    assert cache_key("space-a", text) != cache_key("space-a", EmbedInput("hello", InputType.QUERY))
    assert cache_key("space-a", text) != cache_key("space-a", EmbedInput("hello!"))
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    assert cache_key("s", EmbedInput(image=image)) != cache_key(
        "s", EmbedInput(image=image.reshape(3, 2, 3))
    )


def test_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    cache = EmbeddingCache(CacheConfig(enabled=True, ttl_s=10), clock=clock)
    cache.put("k", np.ones(4), 3)
    clock.now += 9.9
    assert cache.get("k").tokens == 3
    clock.now += 0.2
    assert cache.get("k") is None and len(cache) == 0


def test_the_byte_budget_evicts_the_least_recently_used() -> None:
    budget_mb = 3 * 1024 * 4 / 2**20  # three vectors of 1024 float32
    cache = EmbeddingCache(CacheConfig(enabled=True, max_megabytes=budget_mb))
    for name in "abc":
        cache.put(name, np.full(1024, 1.0), 1)
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", np.full(1024, 1.0), 1)
    assert cache.get("b") is None
    assert {k for k in "acd" if cache.get(k) is not None} == {"a", "c", "d"}


def test_a_stored_vector_is_a_copy() -> None:
    cache = EmbeddingCache(CacheConfig(enabled=True))
    vector = np.ones(4, dtype=np.float32)
    cache.put("k", vector, 1)
    vector[:] = 0
    assert cache.get("k").vector.tolist() == [1, 1, 1, 1]


def app_with_cache(handles=None, chain=("hash-a",), **model):
    backends = {"hash-a": A, "hash-b": A, "other": B}
    config = make_config(
        {name: backends[name] for name in chain},
        {"mini": {"chain": list(chain), **CACHED, **model}},
    )
    return make_app(config, handles or {})


def test_a_repeated_text_never_reaches_the_replica() -> None:
    app, handles = app_with_cache()
    first = embed(app, model="mini", input=["alpha beta", "gamma"]).json()
    calls = handles["hash-a"].calls
    second = embed(app, model="mini", input=["gamma", "alpha beta"]).json()
    assert handles["hash-a"].calls == calls
    assert second["data"][0]["embedding"] == first["data"][1]["embedding"]
    assert second["usage"] == first["usage"]
    third = embed(app, model="mini", input=["gamma", "delta"]).json()
    assert handles["hash-a"].calls == calls + 1
    assert third["data"][0]["embedding"] == first["data"][1]["embedding"]


def test_without_the_setting_every_request_reaches_the_replica() -> None:
    config = make_config({"hash-a": A}, {"mini": {"chain": ["hash-a"]}})
    app, handles = make_app(config)
    embed(app, model="mini", input="alpha")
    embed(app, model="mini", input="alpha")
    assert handles["hash-a"].calls == 2


def test_invalid_answers_are_not_cached() -> None:
    app, handles = app_with_cache({"hash-a": NaNHandle})
    for _ in range(2):
        response = embed(app, model="mini", input="alpha")
        assert response.status_code == 503
        assert response.json()["error"]["backends"][0]["kind"] == "invalid_answer"
    assert handles["hash-a"].calls == 2  # asked again: its NaN answer was not kept


def test_a_fallback_of_another_space_never_gets_the_primarys_cached_vectors() -> None:
    app, fakes = app_with_cache(chain=("hash-a", "other"), allow_cross_space=True)
    assert len(embed(app, model="mini", input="alpha").json()["data"][0]["embedding"]) == 64
    fakes["hash-a"].__class__ = RaisingHandle  # the primary fails from now on
    body = embed(app, model="mini", input="beta").json()
    assert body["backend"] == "other" and fakes["other"].calls == 1
    # A's cached vector of "alpha" is still answered from A's space, never by `other`.
    cached = embed(app, model="mini", input="alpha").json()
    assert len(cached["data"][0]["embedding"]) == 64 and fakes["other"].calls == 1


def test_the_primary_never_gets_a_fallbacks_cached_vectors() -> None:
    app, fakes = app_with_cache(
        {"hash-a": RaisingHandle}, chain=("hash-a", "other"), allow_cross_space=True
    )
    assert embed(app, model="mini", input="alpha").json()["backend"] == "other"
    fakes["hash-a"].__class__ = type(fakes["other"])  # the primary recovers
    body = embed(app, model="mini", input="alpha").json()
    assert body["backend"] == "hash-a" and len(body["data"][0]["embedding"]) == 64
