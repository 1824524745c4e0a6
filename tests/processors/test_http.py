"""The shared HTTP boundary: timeouts, transport errors and generic statuses become classified errors."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import httpx2
import pytest

from refund_mcp.domain.errors import (
    Delivery,
    ProcessorAuthFailed,
    ProcessorError,
    ProcessorUnavailable,
    RateLimited,
)
from refund_mcp.processors import _http

pytestmark = pytest.mark.anyio


def _client(handler: object) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.MockTransport(handler))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "delivery"),
    [
        (httpx2.ConnectError, Delivery.NOT_SENT),
        (httpx2.ConnectTimeout, Delivery.NOT_SENT),
        (httpx2.PoolTimeout, Delivery.NOT_SENT),
        (httpx2.ProxyError, Delivery.NOT_SENT),
        (httpx2.UnsupportedProtocol, Delivery.NOT_SENT),
        (httpx2.ReadTimeout, Delivery.OUTCOME_UNKNOWN),
        (httpx2.WriteTimeout, Delivery.OUTCOME_UNKNOWN),
        (httpx2.ReadError, Delivery.OUTCOME_UNKNOWN),
        (httpx2.WriteError, Delivery.OUTCOME_UNKNOWN),
        (httpx2.RemoteProtocolError, Delivery.OUTCOME_UNKNOWN),
        (httpx2.LocalProtocolError, Delivery.OUTCOME_UNKNOWN),
    ],
)
async def test_transport_errors_become_processor_unavailable_classified_by_whether_the_request_left(
    error: type[httpx2.TransportError], delivery: Delivery
) -> None:
    def handler(request: httpx2.Request) -> httpx2.Response:
        raise error("boom", request=request)

    async with _client(handler) as http:
        request = http.build_request("POST", "https://api.example.test/v1/refunds")
        with pytest.raises(ProcessorUnavailable) as caught:
            await _http.send(http, request, processor="stripe")
    assert caught.value.delivery is delivery
    assert caught.value.processor == "stripe"
    assert caught.value.answered is False  # the exchange broke off: no answer to replay
    assert isinstance(caught.value.__cause__, error)


async def test_a_port_nobody_listens_on_is_not_sent() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The socket is closed: connecting is refused before anything is sent.
    async with _http.build_client() as http:
        request = http.build_request("POST", f"http://127.0.0.1:{port}/v1/refunds", content=b"amount=1")
        with pytest.raises(ProcessorUnavailable) as caught:
            await _http.send(http, request, processor="stripe")
    assert caught.value.delivery is Delivery.NOT_SENT
    assert caught.value.retryable


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_are_outcome_unknown(status: int) -> None:
    async with _client(lambda request: httpx2.Response(status, json={"error": "down"})) as http:
        with pytest.raises(ProcessorUnavailable) as caught:
            await _http.send(http, http.build_request("GET", "https://x.test/"), processor="square")
    assert caught.value.delivery is Delivery.OUTCOME_UNKNOWN
    assert caught.value.http_status == status
    assert caught.value.code == "processor_unavailable"
    assert caught.value.answered is True  # status and body were read: a processor may replay it


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [("7", 7.0), ("0", 0.0), ("1.5", 1.5), (None, None), ("soon", None), ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0)],
)
def test_429_is_rate_limited_not_sent_with_retry_after_in_seconds(
    retry_after: str | None, expected: float | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    response = httpx2.Response(429, headers=headers)
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    error = _http.common_status_error(response, processor="paypal", request_id="dbg-1", now=now)
    assert isinstance(error, RateLimited)
    assert error.delivery is Delivery.NOT_SENT
    assert error.retry_after == expected
    assert error.request_id == "dbg-1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("-5", 0.0),
        ("", None),
        ("   ", None),
        ("nan", None),
        ("inf", None),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past: retry now
        ("Wednesday, 21-Oct-15 07:29:00 GMT", 60.0),  # RFC 850 form
        ("not a date", None),
    ],
)
def test_retry_after_accepts_delta_seconds_and_http_dates(value: str, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert _http.parse_retry_after(value, now=now) == expected


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_processor_auth_failed_and_never_quote_the_body(status: int) -> None:
    response = httpx2.Response(status, json={"error": {"message": "Invalid API Key provided: sk_test_****cret"}})
    error = _http.common_status_error(response, processor="stripe", request_id=None)
    assert isinstance(error, ProcessorAuthFailed)
    assert error.delivery is Delivery.DECLINED
    assert "cret" not in str(error)
    assert "sk_test" not in str(error)


@pytest.mark.parametrize("status", [200, 201, 400, 402, 404, 409, 422])
def test_other_statuses_are_left_to_the_adapter(status: int) -> None:
    assert _http.common_status_error(httpx2.Response(status), processor="adyen", request_id=None) is None


async def test_a_2xx_that_cannot_be_read_after_a_post_is_outcome_unknown_and_after_a_get_is_an_error() -> None:
    response = httpx2.Response(200, text="<html>proxy</html>")
    post = _http.unreadable_answer("stripe", response, mutating=True, request_id=None)
    get = _http.unreadable_answer("stripe", response, mutating=False, request_id=None)
    assert isinstance(post, ProcessorUnavailable)
    assert post.delivery is Delivery.OUTCOME_UNKNOWN
    assert isinstance(get, ProcessorError)
    assert get.delivery is Delivery.DECLINED


async def test_the_owned_client_has_deliberate_timeouts_and_never_follows_redirects() -> None:
    async with _http.build_client() as http:
        assert http.timeout.connect == 5.0
        assert http.timeout.read == 20.0
        assert http.timeout.pool == 5.0
        assert http.follow_redirects is False
        assert http.headers["User-Agent"].startswith("refund-mcp/")
