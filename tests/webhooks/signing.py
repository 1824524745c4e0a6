"""Webhook signing as each processor does it, written from the processors' documentation and
independent of refund_mcp's verifiers (nothing here imports refund_mcp.webhooks).

- Stripe (docs.stripe.com/webhooks#verify-manually): header `t=<unix>,v1=<hex HMAC-SHA256 of
  "{t}.{payload}" keyed with the endpoint secret>`.
- Square (developer.squareup.com/docs/webhooks/step3validate): base64 HMAC-SHA256 of
  notification URL + body, keyed with the signature key, in `x-square-hmacsha256-signature`.
- Adyen (docs.adyen.com/development-resources/webhooks/verify-hmac-signatures): per item,
  base64 HMAC-SHA256 with the hex-decoded key over
  pspReference:originalReference:merchantAccountCode:merchantReference:value:currency:eventCode:success.
- PayPal (offline scheme, developer.paypal.com/api/rest/webhooks/rest): SHA256withRSA over
  `transmission_id|transmission_time|webhook_id|crc32(body)`, base64 in PAYPAL-TRANSMISSION-SIG;
  the certificate's URL in PAYPAL-CERT-URL. The RSA maths is done here by hand (RFC 8017) so the
  tests need no crypto library; the fake PayPal verifies it the same way.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import zlib
from datetime import UTC, datetime
from typing import Any

# A throwaway 1024-bit RSA key standing for PayPal's webhook signing key (tests only).
PAYPAL_TEST_KEY_N = int(
    "c1edc05f17e97e6a4a53714024c2f428e27cc57609c174f0bacd68bc205395d87e971c2095dd05f3dd8eb9c6246204368a9c2524"
    "67e11060cbf9e1fe9b13376359dbe66d31eca1a7fa56b91538541f901db772a61e1dd2c413eec994654da3ac6ba0fe4831fc75f6"
    "c680ef655dde9ee843cc801f7ae307dad3c95b0c87b146a1",
    16,
)
PAYPAL_TEST_KEY_E = 65537
PAYPAL_TEST_KEY_D = int(
    "71b796dcac4af12426dd734567c9221f6f6036f2169a68965913e65c9aa028f840931f9d4403cd5fc905ce8e0ffba1f8d1a2ea6c"
    "c4b547435b98f61ab498ba1af27a154ec05f73f1ce42e929cd7d2d851fb3b36875446d39b5edb54368e3b3bbd3ba5b74b5fbb2f3"
    "80f1cccc690bb94f2d55352c7c278e3ea20e27b764416859",
    16,
)
PAYPAL_CERT_URL = "https://api.sandbox.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-testonly"
_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- Stripe


def stripe_v1(body: bytes, secret: str, timestamp: int) -> str:
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def stripe_signature(body: bytes, secret: str, timestamp: int) -> str:
    return f"t={timestamp},v1={stripe_v1(body, secret, timestamp)},v0=legacy"


def stripe_event(event_id: str, kind: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "api_version": "2026-06-24.dahlia",
        "created": created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": kind,
    }


# --------------------------------------------------------------------------- Square


def square_signature(body: bytes, signature_key: str, notification_url: str) -> str:
    mac = hmac.new(signature_key.encode(), notification_url.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def square_event(event_id: str, kind: str, refund: dict[str, Any]) -> dict[str, Any]:
    return {
        "merchant_id": "MLFAKEMERCHANT",
        "type": kind,
        "event_id": event_id,
        "created_at": refund.get("updated_at") or refund.get("created_at"),
        "data": {"type": "refund", "id": refund["id"], "object": {"refund": refund}},
    }


# --------------------------------------------------------------------------- Adyen


def adyen_signature(item: dict[str, Any], hex_key: str) -> str:
    amount = item.get("amount", {})
    fields = [
        item.get("pspReference", ""),
        item.get("originalReference", ""),
        item.get("merchantAccountCode", ""),
        item.get("merchantReference", ""),
        str(amount.get("value", "")),
        amount.get("currency", ""),
        item.get("eventCode", ""),
        item.get("success", ""),
    ]
    mac = hmac.new(bytes.fromhex(hex_key), ":".join(fields).encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def adyen_signed(item: dict[str, Any], hex_key: str) -> dict[str, Any]:
    signed = copy.deepcopy(item)
    signed.setdefault("additionalData", {})["hmacSignature"] = adyen_signature(item, hex_key)
    return signed


def adyen_notification(*items: dict[str, Any]) -> dict[str, Any]:
    return {"live": "false", "notificationItems": [{"NotificationRequestItem": item} for item in items]}


def adyen_item(
    event_code: str,
    psp_reference: str,
    *,
    success: bool = True,
    original_reference: str | None = None,
    merchant_reference: str = "",
    value: int = 1000,
    currency: str = "USD",
    merchant_account: str = "RefundMcpFakeECOM",
    reason: str = "",
    additional: dict[str, str] | None = None,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "amount": {"currency": currency, "value": value},
        "eventCode": event_code,
        "eventDate": datetime.now(UTC).isoformat(timespec="seconds"),
        "merchantAccountCode": merchant_account,
        "merchantReference": merchant_reference,
        "paymentMethod": "visa",
        "pspReference": psp_reference,
        "reason": reason,
        "success": "true" if success else "false",
    }
    if original_reference is not None:
        item["originalReference"] = original_reference
    if additional:
        item["additionalData"] = dict(additional)
    return item


# --------------------------------------------------------------------------- PayPal


def rsa_sha256_sign(message: bytes, *, n: int = PAYPAL_TEST_KEY_N, d: int = PAYPAL_TEST_KEY_D) -> bytes:
    """RSASSA-PKCS1-v1_5 signature with SHA-256 (RFC 8017 §8.2.1)."""
    size = (n.bit_length() + 7) // 8
    digest_info = _SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    encoded = b"\x00\x01" + b"\xff" * (size - len(digest_info) - 3) + b"\x00" + digest_info
    return pow(int.from_bytes(encoded, "big"), d, n).to_bytes(size, "big")


def paypal_headers(
    body: bytes,
    webhook_id: str,
    *,
    transmission_id: str = "69cd13f0-d67a-11e5-baa3-778b53f4ae55",
    transmission_time: str = "2026-01-02T10:00:00Z",
    cert_url: str = PAYPAL_CERT_URL,
) -> dict[str, str]:
    signed = f"{transmission_id}|{transmission_time}|{webhook_id}|{zlib.crc32(body)}".encode()
    return {
        "PAYPAL-AUTH-ALGO": "SHA256withRSA",
        "PAYPAL-CERT-URL": cert_url,
        "PAYPAL-TRANSMISSION-ID": transmission_id,
        "PAYPAL-TRANSMISSION-SIG": base64.b64encode(rsa_sha256_sign(signed)).decode(),
        "PAYPAL-TRANSMISSION-TIME": transmission_time,
        "Content-Type": "application/json",
    }


def paypal_event(event_id: str, kind: str, refund: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": event_id,
        "event_version": "1.0",
        "create_time": refund.get("update_time", "2026-01-02T10:00:00Z"),
        "resource_type": "refund",
        "resource_version": "2.0",
        "event_type": kind,
        "summary": f"A {refund.get('amount', {}).get('currency_code', '')} refund",
        "resource": refund,
        "links": [{"href": f"https://api.paypal.com/v1/notifications/webhooks-events/{event_id}", "rel": "self", "method": "GET"}],
    }
