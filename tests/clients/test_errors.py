"""Every client library x every error status (400, 401, 404, 429): the library raises its
own exception for the status, and shows the server's message, and its code, param, TEI
body and headers wherever it keeps them (tests/clients/conftest.py: ERROR_CASES and
CLIENT_LIBRARIES)."""

from __future__ import annotations

import litellm
import pytest

from tests.clients.conftest import (
    CLIENT_LIBRARIES,
    ERROR_CASES,
    LIMITED,
    limited_key,
)

pytestmark = [
    pytest.mark.clients,
    pytest.mark.integration,
    # litellm's own pydantic models: notes on its types.
    pytest.mark.filterwarnings("ignore:Items? .* `ReadOnly` qualifier:UserWarning"),
]


@pytest.fixture(autouse=True)
def litellm_without_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """litellm reads `max_retries=0` as unset (`max_retries or DEFAULT_MAX_RETRIES`), so
    the SDK would wait out a 429's Retry-After and retry twice; and no "Give Feedback"
    banner on stdout with every exception."""
    monkeypatch.setattr(litellm, "DEFAULT_MAX_RETRIES", 0)
    monkeypatch.setattr(litellm, "suppress_debug_info", True)


@pytest.mark.parametrize("status", sorted(ERROR_CASES))
@pytest.mark.parametrize("client", sorted(CLIENT_LIBRARIES))
def test_an_error_reaches_the_client_as_its_exception(url: str, client: str, status: int) -> None:
    case, library = ERROR_CASES[status], CLIENT_LIBRARIES[client]
    key = limited_key(client) if case.key == LIMITED else case.key
    if case.key == LIMITED:
        library.embed(url, case.model, key, None)  # the minute's one request
    with pytest.raises(library.errors[status]) as raised:
        library.embed(url, case.model, key, case.dimensions)
    refusal = library.refusal(raised.value)
    assert refusal.status == status
    assert case.message in refusal.message
    if "code" in library.keeps:
        assert (refusal.code, refusal.param) == (case.code, case.param)
    if "tei" in library.keeps:
        assert refusal.tei_type == case.tei_type
    if "headers" in library.keeps and status == 429:
        assert refusal.headers is not None
        assert 0 < int(refusal.headers["retry-after"]) <= 60
    if "code" in library.keeps and status == 401:
        assert refusal.headers is not None
        assert refusal.headers["www-authenticate"] == "Bearer"
