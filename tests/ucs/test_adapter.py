"""The UCS adapter against the fake connector-service: mapping, replay and every failure class."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from refund_mcp.domain.errors import (
    Delivery,
    NotSupported,
    ProcessorAuthFailed,
    ProcessorCallError,
    ProcessorError,
    ProcessorUnavailable,
    RefundNotFound,
    TransactionNotFound,
)
from refund_mcp.domain.models import ProcessorRefundRequest, RefundReason, RefundStatus
from refund_mcp.processors.ucs import mapping
from refund_mcp.processors.ucs.config import parse_target
from refund_mcp.processors.ucs.generated import payment_pb2 as pb
from tests.fakes.ucs import CONNECTOR_CONFIG
from tests.support.servers import free_port
from tests.ucs.conftest import processor_for

pytestmark = pytest.mark.anyio


def refund_request(refund_id: str = "rf_01JABCDEFGHJKMNPQRSTVWXYZ0", amount: int = 2500, **extra) -> ProcessorRefundRequest:
    args = {
        "refund_id": refund_id,
        "transaction_id": "pay_1",
        "amount_minor": amount,
        "currency": "USD",
        "reason": RefundReason.PRODUCT_DEFECTIVE,
        "idempotency_key": refund_id,
        "metadata": {"ticket": "T-1", "refund_mcp_id": "forged"},
        **extra,
    }
    return ProcessorRefundRequest(**args)


async def test_lookup_then_partial_and_full_refund(ucs):
    ucs.fake.add_payment("pay_1", 10000, email="ana@example.com")
    processor = processor_for(ucs.url)
    try:
        info = await processor.lookup_transaction("pay_1")
        assert (info.processor, info.amount_minor, info.captured_minor, info.currency, info.refundable) == ("checkout", 10000, 10000, "USD", True)
        assert info.customer_ref == "ana@example.com"
        first = await processor.create_refund(refund_request())
        assert first.status is RefundStatus.SUCCEEDED and first.amount_minor == 2500 and first.currency == "USD"
        assert first.processor_refund_id == "pay_1/rfd_000001" and first.request_id == "req_rfd_000001"
        second = await processor.create_refund(refund_request("rf_01JABCDEFGHJKMNPQRSTVWXYZ1", 7500))
        assert second.processor_refund_id == "pay_1/rfd_000002"
        refused = processor.create_refund(refund_request("rf_01JABCDEFGHJKMNPQRSTVWXYZ2", 1))
        with pytest.raises(ProcessorError) as caught:
            await refused
        assert caught.value.delivery is Delivery.DECLINED and caught.value.answered
        call = ucs.fake.refund_calls()[0]
        assert call.request.merchant_refund_id == "rf_01JABCDEFGHJKMNPQRSTVWXYZ0" == call.request.merchant_request_id
        assert call.request.payment_amount == 10000 and call.request.reason == "product_defective"
        # Our id cannot be overridden by caller metadata.
        assert json.loads(call.request.refund_metadata.value) == {"ticket": "T-1", "refund_mcp_id": "rf_01JABCDEFGHJKMNPQRSTVWXYZ0"}
        assert call.metadata["x-connector"] == "checkout" and call.metadata["x-connector-config"] == CONNECTOR_CONFIG
    finally:
        await processor.aclose()


async def test_a_repeated_request_replays_the_same_refund(ucs):
    ucs.fake.add_payment("pay_1", 10000)
    processor = processor_for(ucs.url)
    try:
        once = await processor.create_refund(refund_request())
        again = await processor.create_refund(refund_request())
        assert once.processor_refund_id == again.processor_refund_id and len(ucs.fake.refunds) == 1
    finally:
        await processor.aclose()


async def test_manual_review_is_pending_and_status_follows_refund_service_get(ucs):
    ucs.fake.add_payment("pay_1", 10000, refund_outcome=pb.REFUND_MANUAL_REVIEW)
    processor = processor_for(ucs.url)
    try:
        refund = await processor.create_refund(refund_request())
        assert refund.status is RefundStatus.PENDING and refund.processor_status == "REFUND_MANUAL_REVIEW"
        ucs.fake.set_refund_status("rfd_000001", pb.REFUND_SUCCESS)
        assert (await processor.get_refund(refund.processor_refund_id)).status is RefundStatus.SUCCEEDED
        ucs.fake.set_refund_status("rfd_000001", pb.REFUND_FAILURE)
        assert (await processor.get_refund(refund.processor_refund_id)).status is RefundStatus.FAILED
        with pytest.raises(RefundNotFound):
            await processor.get_refund("pay_1/rfd_999999")
    finally:
        await processor.aclose()


@pytest.mark.parametrize(
    ("fault", "error", "delivery"),
    [
        ("unavailable", ProcessorUnavailable, Delivery.OUTCOME_UNKNOWN),  # connected: it may have been acted on
        ("internal_before", ProcessorUnavailable, Delivery.OUTCOME_UNKNOWN),
        ("reset_after_commit", ProcessorUnavailable, Delivery.OUTCOME_UNKNOWN),
        ("decline", ProcessorError, Delivery.DECLINED),
        ("connector_5xx", ProcessorUnavailable, Delivery.OUTCOME_UNKNOWN),
    ],
)
async def test_each_failure_is_classified_for_money(ucs, fault, error, delivery):
    ucs.fake.add_payment("pay_1", 10000)
    processor = processor_for(ucs.url)
    try:
        await processor.lookup_transaction("pay_1")
        setattr(ucs.fake.faults, fault, 1)
        with pytest.raises(error) as caught:
            await processor.create_refund(refund_request())
        assert caught.value.delivery is delivery
    finally:
        await processor.aclose()


async def test_deadline_after_the_connector_accepted_then_retry_makes_exactly_one_refund(ucs):
    ucs.fake.add_payment("pay_1", 10000)
    processor = processor_for(ucs.url, deadline_seconds=0.3)
    try:
        await processor.lookup_transaction("pay_1")
        ucs.fake.faults.deadline_after_commit = 1
        with pytest.raises(ProcessorUnavailable) as caught:
            await processor.create_refund(refund_request())
        assert caught.value.delivery is Delivery.OUTCOME_UNKNOWN and not caught.value.answered
        ucs.fake.release()
        retried = await processor.create_refund(refund_request())
        assert retried.status is RefundStatus.SUCCEEDED and len(ucs.fake.refunds) == 1
    finally:
        await processor.aclose()


async def test_a_retry_whose_payment_cannot_be_read_is_not_sent_rather_than_declined(ucs):
    processor = processor_for(ucs.url)  # a new process: no amount remembered from a lookup
    try:
        with pytest.raises(ProcessorUnavailable) as caught:
            await processor.create_refund(refund_request(transaction_id="pay_gone"))
        assert caught.value.delivery is Delivery.NOT_SENT and ucs.fake.refund_calls() == []
    finally:
        await processor.aclose()


async def test_no_server_is_not_sent():
    processor = processor_for(f"http://127.0.0.1:{free_port()}", connect_seconds=0.2)
    try:
        with pytest.raises(ProcessorUnavailable) as caught:
            await processor.create_refund(refund_request())
        assert caught.value.delivery is Delivery.NOT_SENT
    finally:
        await processor.aclose()


async def test_wrong_credentials_are_an_auth_failure_that_never_quotes_them(ucs):
    wrong = json.dumps({"config": {"Checkout": {"api_key": "sk_sbox_wrong_key_0987654321"}}})
    processor = processor_for(ucs.url, connector_config=SecretStr(wrong))
    try:
        with pytest.raises(ProcessorAuthFailed) as caught:
            await processor.lookup_transaction("pay_1")
        assert "sk_sbox_wrong_key" not in str(caught.value) and "sk_sbox_wrong_key" not in repr(processor)
    finally:
        await processor.aclose()


async def test_an_unknown_payment_is_not_found(ucs):
    processor = processor_for(ucs.url)
    try:
        with pytest.raises(TransactionNotFound):
            await processor.lookup_transaction("pay_nope")
    finally:
        await processor.aclose()


def test_status_table_keeps_manual_review_and_unknown_non_final():
    assert mapping.refund_status(pb.REFUND_MANUAL_REVIEW) is RefundStatus.PENDING
    assert mapping.refund_status(pb.REFUND_STATUS_UNSPECIFIED) is RefundStatus.PENDING
    assert mapping.refund_status(99) is RefundStatus.PENDING
    assert mapping.refund_status(pb.REFUND_SUCCESS) is RefundStatus.SUCCEEDED


def test_urls_choose_tls_or_plaintext():
    assert parse_target("http://ucs.internal:50051") == ("ucs.internal:50051", False)
    assert parse_target("https://ucs.example.com") == ("ucs.example.com:443", True)
    with pytest.raises(ValueError):
        parse_target("ucs.internal:50051")


def test_the_committed_stubs_are_current():
    pytest.importorskip("grpc_tools")
    from refund_mcp.processors.ucs import regenerate

    assert regenerate.differences() == []


def test_unimplemented_lookup_is_not_supported():
    import grpc

    assert isinstance(mapping.rpc_error("checkout", grpc.StatusCode.UNIMPLEMENTED, "", flow="lookup"), NotSupported)
    assert isinstance(mapping.rpc_error("checkout", grpc.StatusCode.UNIMPLEMENTED, "", flow="create"), ProcessorCallError)


def test_the_fake_flags_requests_that_break_the_proto_contract():
    import grpc

    from refund_mcp.processors.ucs.generated import services_pb2_grpc as services
    from tests.fakes.ucs import RunningUcs, UcsFake

    running = RunningUcs(UcsFake())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            request = pb.PaymentServiceRefundRequest(
                connector_transaction_id="pay_1", refund_amount=pb.Money(minor_amount=5, currency=9999)
            )
            metadata = [("x-connector", "checkout"), ("x-connector-config", CONNECTOR_CONFIG)]
            services.PaymentServiceStub(channel).Refund(request, metadata=metadata, timeout=5)
    finally:
        running.stop()
    found = " | ".join(running.fake.violations)
    assert "currency=9999 is not a Currency" in found and "merchant_refund_id not ours" in found
    assert "merchant_request_id missing" in found and "metadata x-request-id missing" in found


def self_signed_localhost() -> tuple[bytes, bytes]:
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem_key, cert.public_bytes(serialization.Encoding.PEM)


async def test_tls_with_the_configured_roots_and_refused_without_them():
    from tests.fakes.ucs import RunningUcs, UcsFake

    key, cert = self_signed_localhost()
    running = RunningUcs(UcsFake(), tls=(key, cert))
    running.fake.add_payment("pay_1", 10000)
    trusting = processor_for(running.url, root_certificates=cert)
    untrusting = processor_for(running.url, connect_seconds=0.5)  # the system roots do not know this certificate
    try:
        assert (await trusting.lookup_transaction("pay_1")).amount_minor == 10000
        assert (await trusting.create_refund(refund_request())).status is RefundStatus.SUCCEEDED
        with pytest.raises(ProcessorUnavailable) as caught:
            await untrusting.create_refund(refund_request("rf_01JABCDEFGHJKMNPQRSTVWXYZ5"))
        assert caught.value.delivery is Delivery.NOT_SENT and len(running.fake.refunds) == 1
    finally:
        await trusting.aclose()
        await untrusting.aclose()
        running.stop()
