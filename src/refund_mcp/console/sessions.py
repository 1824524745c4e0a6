"""Console sessions, kept server-side.

The cookie holds a random 256-bit id and nothing else; the database holds only its SHA-256, with
the human's name, scopes and CSRF token. A session ends after `IDLE` without a request or
`ABSOLUTE` after sign-in, whichever comes first, and at sign-out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update

from refund_mcp.store import tables
from refund_mcp.store.database import Database

S = tables.console_sessions
IDLE = timedelta(minutes=30)
ABSOLUTE = timedelta(hours=12)
COOKIE = "refund_mcp_console"
SECURE_COOKIE = "__Host-refund_mcp_console"  # __Host-: Secure, Path=/, no Domain: no subdomain can set it


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Session:
    actor: str
    scopes: frozenset[str]
    csrf_token: str
    via: str
    expires_at: datetime

    def has(self, scope: str) -> bool:
        return scope in self.scopes

    def csrf_ok(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(self.csrf_token, presented or "")


class SessionStore:
    def __init__(self, db: Database, clock: Callable[[], datetime]) -> None:
        self.db = db
        self.clock = clock

    async def create(self, actor: str, scopes: frozenset[str], via: str) -> str:
        """Returns the new session id (for the cookie only; it is stored hashed)."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        async with self.db.write() as conn:
            await conn.execute(delete(S).where(S.c.expires_at <= now))  # sweep: sign-ins are rare, the table stays small
            await conn.execute(
                insert(S).values(
                    id_hash=_hash(session_id), actor=actor, scopes=",".join(sorted(scopes)), csrf_token=secrets.token_urlsafe(32),
                    via=via, created_at=now, last_seen_at=now, expires_at=now + ABSOLUTE,
                )
            )
        return session_id

    async def get(self, session_id: str | None) -> Session | None:
        """The live session for this cookie value, touching its idle timer; None if none or expired."""
        if not session_id or len(session_id) > 100:
            return None
        now = self.clock()
        key = _hash(session_id)
        async with self.db.read() as conn:
            row = (await conn.execute(select(S).where(S.c.id_hash == key))).first()
        if row is None or row.expires_at <= now or row.last_seen_at + IDLE <= now:
            return None
        if now - row.last_seen_at > timedelta(minutes=1):  # one write a minute at most per session
            async with self.db.write() as conn:
                await conn.execute(update(S).where(S.c.id_hash == key).values(last_seen_at=now))
        return Session(
            actor=row.actor, scopes=frozenset(filter(None, row.scopes.split(","))), csrf_token=row.csrf_token, via=row.via,
            expires_at=row.expires_at,
        )

    async def end(self, session_id: str | None) -> None:
        if session_id:
            async with self.db.write() as conn:
                await conn.execute(delete(S).where(S.c.id_hash == _hash(session_id)))
