"""The adapter framework: one call path for every HTTP adapter, and the tables adapters declare."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from pydantic import SecretStr

from refund_mcp.domain.errors import Delivery, ProcessorError, ProcessorUnavailable, RefundError
from refund_mcp.domain.models import Capabilities, RefundReason, RefundStatus
from refund_mcp.processors import _connector as connector
from refund_mcp.processors import stripe
from refund_mcp.processors.stripe import StripeProcessor

pytestmark = pytest.mark.anyio


class Item(connector.WireModel):
    id: str


def _refusal(status: int, body: Any, *, flow: str, request_id: str | None) -> RefundError:
    return connector.ErrorAnswer("acme", status, request_id, f": {body['message']}").refused(
        "the refund", code="not_refundable", processor_code=flow
    )


DIALECT = connector.Dialect(
    "acme",
    Capabilities(cancel=False, status_api=True, lookup_api=True, partial_refunds=True, webhooks=False),
    stripe.AMOUNTS,
    request_id_of=connector.request_id_header("X-Acme-Request"),
    refusal=_refusal,
    headers={"Accept": "application/json"},
)


async def test_a_connection_sends_per_account_headers_and_maps_refusals_with_the_request_id() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        if request.url.path == "/items/bad":
            return httpx2.Response(400, json={"message": "no"}, headers={"X-Acme-Request": "rq_2"})
        return httpx2.Response(200, json={"id": "it_1"}, headers={"X-Acme-Request": "rq_1"})

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as http:
        credentials = connector.StaticCredentials(lambda: {"Authorization": "Bearer sk_test_account_eu"})
        eu = connector.Connection(
            DIALECT, api_base="https://acme.test/", http=http, credentials=credentials, headers={"Acme-Account": "eu"}
        )
        item, request_id = await eu.call("GET", "/items/1", Item, flow="lookup")
        with pytest.raises(ProcessorError) as caught:
            await eu.call("POST", "/items/bad", Item, flow="create", form=[("amount", "100")])
    assert (item.id, request_id) == ("it_1", "rq_1")
    assert (caught.value.code, caught.value.request_id, caught.value.processor_code) == ("not_refundable", "rq_2", "create")
    assert str(caught.value) == "[not_refundable] acme refused the refund: no"
    assert seen[0].headers["Acme-Account"] == "eu" and seen[0].headers["Accept"] == "application/json"
    assert seen[1].headers["Content-Type"] == "application/x-www-form-urlencoded" and seen[1].content == b"amount=100"
    assert "sk_test_account_eu" not in repr(credentials)


async def test_an_answer_the_model_cannot_read_is_unknown_after_a_post_and_an_error_after_a_get() -> None:
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(lambda r: httpx2.Response(200, json={}))) as http:
        none = connector.StaticCredentials(dict)
        conn = connector.Connection(DIALECT, api_base="https://acme.test", http=http, credentials=none)
        with pytest.raises(ProcessorUnavailable) as post:
            await conn.call("POST", "/items", Item, flow="create")
        with pytest.raises(ProcessorError):
            await conn.call("GET", "/items/1", Item, flow="lookup")
    assert post.value.delivery is Delivery.OUTCOME_UNKNOWN


def test_a_reason_table_must_name_every_reason_once() -> None:
    with pytest.raises(ValueError, match="without a processor word"):
        connector.reasons_as({"OTHER": [RefundReason.GOODWILL]})
    with pytest.raises(ValueError, match="twice"):
        connector.reasons_as({"A": list(RefundReason), "B": [RefundReason.GOODWILL]})


def test_status_tables_map_words_and_leave_unknown_words_pending() -> None:
    table = connector.statuses(succeeded=["DONE"], failed=["REJECTED", "FAILED"])
    assert connector.status_of(table, "rejected") is RefundStatus.FAILED
    assert connector.status_of(table, "NEW_WORD") is RefundStatus.PENDING


async def test_each_adapter_takes_its_account_settings_as_constructor_arguments() -> None:
    processor = StripeProcessor(api_key=SecretStr("sk_test_one"), api_base="https://stripe.eu.test")
    assert (processor.name, processor.capabilities.refund_search) == ("stripe", True)
    assert "sk_test_one" not in repr(processor)
    await processor.aclose()
