"""API keys and per-key rate limits (`embedserve.serving.auth`), without HTTP."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import yaml

import embedserve.serving.auth
from embedserve.cli.main import main
from embedserve.errors import PayloadTooLarge, RateLimited, Unauthorized
from embedserve.serving.auth import ApiKey, KeyStore, RateLimiter, key_sha256, load_keys, new_key
from tests.unit.fakes import FakeClock

SECRET = "es-plain-secret-4e1d"  # a key that must never show up in an error


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return FakeClock().install(monkeypatch)


def api_key(name: str = "alice", **limits: int) -> ApiKey:
    return ApiKey(name=name, sha256=key_sha256(f"key-of-{name}"), **limits)


def retry_after(error: RateLimited) -> int:
    value = error.headers["Retry-After"]
    assert value.isdigit(), value
    assert int(value) >= 1
    return int(value)


# --- keys -----------------------------------------------------------------------------------


def test_key_sha256_is_the_hex_sha256_of_the_key() -> None:
    assert key_sha256(SECRET) == hashlib.sha256(SECRET.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", key_sha256(SECRET))


def test_new_keys_are_prefixed_random_and_url_safe() -> None:
    keys = {new_key() for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert re.fullmatch(r"es-[A-Za-z0-9_-]{40,}", key), key


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_API_KEYS", f" {SECRET} ,es-second,, \t ,es-third ")
    keys = load_keys("TEST_API_KEYS", None)
    assert [k.sha256 for k in keys] == [key_sha256(k) for k in (SECRET, "es-second", "es-third")]
    assert len({k.name for k in keys}) == 3
    assert all(SECRET not in k.name and "TEST_API_KEYS" in k.name for k in keys)
    assert all(k.requests_per_minute is None and k.tokens_per_minute is None for k in keys)


@pytest.mark.parametrize("value", [None, "", " , ,\t"])
def test_no_keys_in_the_environment(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("TEST_API_KEYS", raising=False)
    else:
        monkeypatch.setenv("TEST_API_KEYS", value)
    assert load_keys("TEST_API_KEYS", None) == []
    assert load_keys(None, None) == []


def write_keys_file(path: Path, entries: list[dict]) -> str:
    path.write_text(yaml.safe_dump({"keys": entries}))
    return str(path)


def test_keys_from_a_hashed_keys_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_API_KEYS", "es-from-env")
    keys_file = write_keys_file(
        tmp_path / "keys.yaml",
        [
            {"name": "alice", "sha256": key_sha256(SECRET), "requests_per_minute": 5},
            {"name": "bob", "sha256": key_sha256("es-bob"), "tokens_per_minute": 1000},
        ],
    )
    env_key, alice, bob = load_keys("TEST_API_KEYS", keys_file)
    assert env_key.sha256 == key_sha256("es-from-env")
    assert alice == ApiKey(name="alice", sha256=key_sha256(SECRET), requests_per_minute=5)
    assert (bob.name, bob.requests_per_minute, bob.tokens_per_minute) == ("bob", None, 1000)


@pytest.mark.parametrize(
    "content",
    [
        # The usual mistakes: the key itself instead of its hash, under either field name.
        f"keys:\n  - name: alice\n    key: {SECRET}\n",
        f"keys:\n  - name: alice\n    sha256: {SECRET}\n",
        # Broken YAML on the line that holds a key.
        f'keys:\n  - name: alice\n    sha256: "{SECRET}\n  other: [\n',
        "keys:\n  - name: alice\n    sha256: 1234\n",
        "not a mapping\n",
        "",
    ],
    ids=["plain-key-field", "plain-key-as-hash", "broken-yaml", "bad-hash", "scalar", "empty"],
)
def test_an_invalid_keys_file_names_the_file_never_a_key(tmp_path: Path, content: str) -> None:
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(content)
    with pytest.raises(ValueError) as info:
        load_keys(None, str(keys_file))
    message = str(info.value)
    assert str(keys_file) in message
    assert SECRET not in message


def test_a_missing_keys_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        load_keys(None, str(missing))


def test_keys_new_prints_a_key_its_keys_file_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "new", "--name", "ci", "--requests-per-minute", "7"]) == 0
    out = capsys.readouterr().out
    (key,) = re.findall(r"^key: (\S+)$", out, flags=re.MULTILINE)
    entry_yaml = out.split("\n", 1)[1]
    assert key not in entry_yaml, "the keys-file entry holds the hash, not the key"
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(entry_yaml)
    accepted = KeyStore(load_keys(None, str(keys_file))).authenticate(key)
    assert accepted is not None
    assert (accepted.name, accepted.requests_per_minute) == ("ci", 7)


# --- KeyStore ---------------------------------------------------------------------------


@pytest.fixture
def store() -> KeyStore:
    return KeyStore([api_key("alice"), ApiKey(name="bob", sha256=key_sha256(SECRET))])


def test_authentication_is_off_without_keys() -> None:
    store = KeyStore([])
    assert not store.enabled
    assert store.authenticate(None) is None
    assert store.authenticate("anything") is None


@pytest.mark.parametrize("token", [None, ""])
def test_a_missing_key_is_401_with_www_authenticate(store: KeyStore, token: str | None) -> None:
    assert store.enabled
    with pytest.raises(Unauthorized) as info:
        store.authenticate(token)
    error = info.value
    assert error.status_code == 401
    assert error.headers == {"WWW-Authenticate": "Bearer"}
    envelope = error.envelope()["error"]
    assert envelope["type"] == "invalid_request_error"
    assert envelope["code"] == "invalid_api_key"
    assert "Bearer" in envelope["message"]


@pytest.mark.parametrize("token", ["es-wrong", SECRET + " ", SECRET.upper(), key_sha256(SECRET)])
def test_a_wrong_key_is_401(store: KeyStore, token: str) -> None:
    with pytest.raises(Unauthorized) as info:
        store.authenticate(token)
    assert info.value.status_code == 401
    assert info.value.headers["WWW-Authenticate"] == "Bearer"
    assert token not in str(info.value.envelope())


def test_the_right_key_is_its_api_key(store: KeyStore) -> None:
    bob = store.authenticate(SECRET)
    assert bob is not None and bob.name == "bob"
    alice = store.authenticate("key-of-alice")
    assert alice is not None and alice.name == "alice"


def test_every_stored_hash_is_compared(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit on a match: the time taken does not say which key matched."""
    compared = []

    def compare_digest(a: str, b: str) -> bool:
        compared.append(b)
        return a == b

    monkeypatch.setattr(embedserve.serving.auth.hmac, "compare_digest", compare_digest)
    assert store.authenticate("key-of-alice") is not None
    assert len(compared) == 2


# --- RateLimiter ------------------------------------------------------------------------


def test_no_key_is_never_limited(clock: FakeClock) -> None:
    limiter = RateLimiter(requests_per_minute=1, tokens_per_minute=1)
    for _ in range(10):
        limiter.acquire(None, 1000)


def test_requests_per_minute(clock: FakeClock) -> None:
    limiter = RateLimiter(requests_per_minute=3, tokens_per_minute=None)
    key = api_key()
    for _ in range(3):
        limiter.acquire(key, 10_000)
    with pytest.raises(RateLimited) as info:
        limiter.acquire(key, 0)
    error = info.value
    assert error.status_code == 429
    envelope = error.envelope()["error"]
    assert (envelope["type"], envelope["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "alice" in envelope["message"] and "requests" in envelope["message"]
    assert 20 <= retry_after(error) <= 21, "one request refills in 60/3 seconds"


def test_requests_refill_over_time(clock: FakeClock) -> None:
    limiter = RateLimiter(requests_per_minute=3, tokens_per_minute=None)
    key = api_key()
    for _ in range(3):
        limiter.acquire(key, 0)
    clock.advance(10)
    with pytest.raises(RateLimited) as info:
        limiter.acquire(key, 0)
    assert 10 <= retry_after(info.value) <= 11
    clock.advance(10)
    limiter.acquire(key, 0)
    with pytest.raises(RateLimited):
        limiter.acquire(key, 0)


def test_refill_stops_at_the_per_minute_budget(clock: FakeClock) -> None:
    limiter = RateLimiter(requests_per_minute=2, tokens_per_minute=None)
    key = api_key()
    limiter.acquire(key, 0)
    clock.advance(3600)
    limiter.acquire(key, 0)
    limiter.acquire(key, 0)
    with pytest.raises(RateLimited):
        limiter.acquire(key, 0)


def test_tokens_per_minute(clock: FakeClock) -> None:
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=100)
    key = api_key()
    limiter.acquire(key, 60)
    with pytest.raises(RateLimited) as info:
        limiter.acquire(key, 50)
    assert "tokens" in info.value.message
    assert 6 <= retry_after(info.value) <= 7, "10 missing tokens refill in 6 seconds"
    limiter.acquire(key, 40)
    clock.advance(6)
    limiter.acquire(key, 10)
    with pytest.raises(RateLimited):
        limiter.acquire(key, 1)


def test_a_request_over_the_whole_token_budget_is_413_not_a_retry(clock: FakeClock) -> None:
    """It could never pass: a 429 with Retry-After would have clients retry forever."""
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=100)
    with pytest.raises(PayloadTooLarge) as info:
        limiter.acquire(api_key(), 101)
    assert info.value.status_code == 413
    assert "101 tokens" in info.value.message and "(100)" in info.value.message
    limiter.acquire(api_key(), 100)  # the refused request took nothing


def test_keys_have_budgets_of_their_own(clock: FakeClock) -> None:
    limiter = RateLimiter(requests_per_minute=1, tokens_per_minute=100)
    alice, bob = api_key("alice"), api_key("bob")
    limiter.acquire(alice, 100)
    with pytest.raises(RateLimited):
        limiter.acquire(alice, 0)
    limiter.acquire(bob, 100)
    with pytest.raises(RateLimited) as info:
        limiter.acquire(bob, 0)
    assert "bob" in info.value.message and "alice" not in info.value.message


def test_per_key_limits_override_the_defaults(clock: FakeClock) -> None:
    limiter = RateLimiter(requests_per_minute=1, tokens_per_minute=10)
    generous = api_key("generous", requests_per_minute=3, tokens_per_minute=300)
    plain = api_key("plain")
    for _ in range(3):
        limiter.acquire(generous, 100)
    with pytest.raises(RateLimited):
        limiter.acquire(generous, 0)
    with pytest.raises(PayloadTooLarge):
        limiter.acquire(plain, 11)
    limiter.acquire(plain, 10)
    with pytest.raises(RateLimited):
        limiter.acquire(plain, 0)


def test_a_key_limit_applies_without_a_default(clock: FakeClock) -> None:
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=None)
    limited = api_key("limited", requests_per_minute=1)
    limiter.acquire(limited, 10**9)
    with pytest.raises(RateLimited):
        limiter.acquire(limited, 0)
    for _ in range(100):
        limiter.acquire(api_key("unlimited"), 10**9)


def test_a_refused_request_uses_no_budget(clock: FakeClock) -> None:
    limiter = RateLimiter(requests_per_minute=2, tokens_per_minute=100)
    key = api_key()
    limiter.acquire(key, 90)
    with pytest.raises(RateLimited):
        limiter.acquire(key, 20)  # over the tokens left: must not take a request too
    limiter.acquire(key, 10)  # the second request of the minute, the last 10 tokens
    with pytest.raises(RateLimited):
        limiter.acquire(key, 0)  # over the requests: must not take tokens either
    clock.advance(30)  # one request and 50 tokens come back
    limiter.acquire(key, 50)


@pytest.mark.parametrize(
    ("requests_per_minute", "tokens_per_minute", "tokens"),
    [(1, None, 0), (None, 10, 10)],
    ids=["one-request-per-minute", "whole-token-budget"],
)
def test_a_fresh_key_gets_its_whole_budget(
    requests_per_minute: int | None, tokens_per_minute: int | None, tokens: int
) -> None:
    """With the real clock: a key's first request may use the whole minute's budget."""
    limiter = RateLimiter(requests_per_minute, tokens_per_minute)
    limiter.acquire(api_key(), tokens)
