"""Deliver the notifications outbox: claimed with a lease, retried with backoff, never dropped.

Each event has a stable id, sent as `webhook-id`, so a receiver that saw it already can ignore a
repeat; a channel that accepted an event is recorded and never sent it again. A receiver that is
down only delays its events: they wait in the outbox (backoff up to an hour between tries) and go
out in order of creation once it answers 2xx.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx2
from sqlalchemy import and_, or_, select, update

from refund_mcp.notify.settings import NotifySettings
from refund_mcp.store import tables
from refund_mcp.store.database import Database

logger = logging.getLogger("refund_mcp.notify")

N = tables.notifications
RETRY_BASE_SECONDS = 10.0
RETRY_MAX_SECONDS = 3600.0
CLAIM_SECONDS = 60.0
# An event never tried this long after it happened was written while no channel was configured:
# announcing week-old approvals the day notifications are turned on would only mislead.
STALE_AFTER = timedelta(days=7)
TIMEOUT_SECONDS = 10.0


class DeliveryFailed(Exception):
    """The receiver did not accept the event; the message is safe to store (no URL, no secret)."""


class Channel(Protocol):
    name: str

    async def send(self, event_id: str, body: dict[str, Any]) -> None: ...


def _check(response: httpx2.Response, what: str) -> None:
    if not 200 <= response.status_code < 300:
        raise DeliveryFailed(f"{what} answered HTTP {response.status_code}")


class StandardWebhookChannel:
    """A POST signed per Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`."""

    name = "webhook"

    def __init__(self, url: str, secret: str, http: httpx2.AsyncClient, wall_clock: Callable[[], datetime]) -> None:
        from standardwebhooks.webhooks import Webhook

        self._url = url
        self._signer = Webhook(secret)
        self._http = http
        self._wall_clock = wall_clock

    async def send(self, event_id: str, body: dict[str, Any]) -> None:
        payload = json.dumps(body, sort_keys=True, separators=(",", ":"))
        # The signature's timestamp is the real sending time: receivers reject stale ones (replay protection).
        sent_at = self._wall_clock()
        headers = {
            "content-type": "application/json",
            "webhook-id": event_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._signer.sign(event_id, sent_at, payload),
        }
        try:
            response = await self._http.post(self._url, content=payload.encode(), headers=headers, timeout=TIMEOUT_SECONDS)
        except httpx2.HTTPError as exc:
            raise DeliveryFailed(f"webhook receiver unreachable ({type(exc).__name__})") from exc
        _check(response, "webhook receiver")


def slack_text(body: dict[str, Any]) -> str:
    """One message line. Values are ours (ids, enum reasons, amounts), never agent or customer text."""
    titles = {
        "refund.approval_requested": "Refund waiting for approval",
        "refund.approval_decided": "Refund approval decided",
        "refund.stuck": "Refund stuck: an operator must decide",
        "refund.failed": "Refund failed",
        "reconcile.needs_human": "Reconciliation needs a human",
    }
    title = titles.get(body["type"], body["type"])
    if body.get("refund_id") is None:
        return f"*{title}* (by {_plain(body.get('actor'))}) <{body['console_url']}|Open the console>"
    extra = ""
    if body["type"] == "refund.approval_requested" and body.get("approvals_required", 1) > 1:
        extra = f" (two-person approval, {len(body.get('approved_by') or [])} of {body['approvals_required']} so far)"
    if body["type"] == "refund.approval_decided":
        extra = f": {_plain(body.get('decision'))} by {_plain(body.get('actor'))}"
    return (
        f"*{title}*{extra}: {body['amount_display']} on {_plain(body['transaction_id'])}, reason {body['reason']}, "
        f"requested by {_plain(body.get('requested_by'))}. <{body['console_url']}|Open {body['refund_id']}>"
    )


def _plain(value: Any) -> str:
    """Slack mrkdwn treats <, > and & as markup: escape them so a name cannot become a link."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackChannel:
    name = "slack"

    def __init__(self, url: str, http: httpx2.AsyncClient) -> None:
        self._url = url
        self._http = http

    async def send(self, event_id: str, body: dict[str, Any]) -> None:
        message = {"text": slack_text(body)}
        try:
            response = await self._http.post(self._url, json=message, timeout=TIMEOUT_SECONDS)
        except httpx2.HTTPError as exc:
            raise DeliveryFailed(f"Slack unreachable ({type(exc).__name__})") from exc
        _check(response, "Slack")


def channels_for(settings: NotifySettings, http: httpx2.AsyncClient, wall_clock: Callable[[], datetime]) -> list[Channel]:
    channels: list[Channel] = []
    if settings.webhook_url and settings.webhook_secret:
        channels.append(StandardWebhookChannel(settings.webhook_url, settings.webhook_secret.get_secret_value(), http, wall_clock))
    if settings.slack_url:
        channels.append(SlackChannel(settings.slack_url.get_secret_value(), http))
    return channels


def backoff_seconds(attempts: int) -> float:
    return min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * (2 ** max(0, attempts - 1)))


def console_link(settings: NotifySettings, body: dict[str, Any]) -> str:
    if body.get("refund_id"):
        return f"{settings.console_url}/refunds/{body['refund_id']}"
    return f"{settings.console_url}/attention" if body["type"] == "reconcile.needs_human" else settings.console_url


class Notifier:
    """Delivers due outbox rows to every configured channel; `deliver_due` is one worker step."""

    def __init__(
        self,
        db: Database,
        settings: NotifySettings,
        *,
        http: httpx2.AsyncClient | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self._own_http = http is None
        self.http = http or httpx2.AsyncClient(follow_redirects=False)
        self.channels = channels_for(settings, self.http, wall_clock)

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    async def _claim(self, now: datetime, claim: datetime, limit: int) -> list[Any]:
        query = (
            select(N)
            .where(N.c.next_attempt_at.is_not(None), N.c.next_attempt_at <= now, or_(N.c.claimed_until.is_(None), N.c.claimed_until <= now))
            .order_by(N.c.next_attempt_at, N.c.created_at)
            .limit(limit)
        )
        async with self.db.write() as conn:
            if conn.dialect.name == "postgresql":
                # Two workers (replicas) never claim the same event: each skips what another is claiming.
                query = query.with_for_update(skip_locked=True)
            rows = (await conn.execute(query)).all()
            if rows:
                await conn.execute(
                    update(N).where(N.c.id.in_([row.id for row in rows])).values(claimed_until=claim)
                )
        return rows

    async def deliver_due(self, limit: int = 20) -> int:
        """Try every due event once; returns how many were attempted. Nothing configured: nothing is sent
        and the events stay in the outbox, delivered once a channel is configured."""
        if not self.channels:
            return 0
        now = self.clock()
        claim = now + timedelta(seconds=CLAIM_SECONDS)
        rows = await self._claim(now, claim, limit)
        for row in rows:
            if row.attempts == 0 and row.created_at < now - STALE_AFTER:
                await self._record(row, now, claim, set(), [], skipped=True)
                continue
            body = json.loads(row.body)
            body["console_url"] = console_link(self.settings, body)
            done = {name for name in row.delivered_channels.split(",") if name}
            errors: list[str] = []
            for channel in self.channels:
                if channel.name in done:
                    continue
                try:
                    await channel.send(row.id, body)
                except DeliveryFailed as exc:
                    errors.append(f"{channel.name}: {exc}")
                else:
                    done.add(channel.name)
            await self._record(row, now, claim, done, errors)
        return len(rows)

    async def _record(self, row: Any, now: datetime, claim: datetime, done: set[str], errors: list[str], *, skipped: bool = False) -> None:
        values: dict[str, Any] = {"delivered_channels": ",".join(sorted(done)), "claimed_until": None, "attempts": row.attempts + 1}
        if skipped:
            values |= {"last_error": "not sent: older than 7 days when first picked up", "next_attempt_at": None}
        elif errors:
            values |= {"last_error": "; ".join(errors), "next_attempt_at": now + timedelta(seconds=backoff_seconds(row.attempts + 1))}
            logger.warning("notification %s (%s) not delivered, retrying: %s", row.id, row.type, values["last_error"])
        else:
            values |= {"last_error": None, "next_attempt_at": None, "delivered_at": now}
        async with self.db.write() as conn:
            # Only while we still hold the claim: a worker that lost it must not overwrite another's result.
            await conn.execute(update(N).where(and_(N.c.id == row.id, N.c.claimed_until == claim)).values(**values))
