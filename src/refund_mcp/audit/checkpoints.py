"""Signed checkpoints: the audit chain's head, anchored outside the database.

The hash chain alone shows edits that leave it inconsistent. Someone who can write to the database
can also rewrite it consistently: edit a record, recompute every later hash, update `audit_head`
(or delete the tail and move the head back). A checkpoint defeats that: it is the head (sequence,
hash, time) signed with an Ed25519 key that lives outside the database, written to a file outside
it. Verification then requires record `seq` to still carry the signed hash, and the chain to reach
at least as far as the newest checkpoint.

Checkpoints in a file are chained too (each names the hash of the line before it), so removing one
from the middle of the file breaks verification. What stays undetectable: changes to records newer
than the newest checkpoint, and removing the newest lines of the checkpoint file itself (ship the file
somewhere append-only; `verify` prints the newest checkpoint's time so its freshness can be judged).

File format, one JSON object per line:
    {"v": 1, "seq": 1042, "hash": "<chain head>", "at": "2026-01-02T03:04:05Z",
     "prev": "<sha256 of the previous line's JSON, or 64 zeros>", "key_id": "<16 hex>", "signature": "<base64>"}
The signature covers the canonical JSON of every field but `signature`.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from refund_mcp.audit.chain import GENESIS_HASH, canonical_json
from refund_mcp.store import tables

FORMAT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint file, key or signature that cannot be trusted; the message says which line and why."""


# ------------------------------------------------------------------ keys


def generate_key_pair(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair (private key readable by the owner only); returns the key id."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    for path in (private_path, public_path):
        if path.exists():
            raise CheckpointError(f"{path} exists: refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key_id(key.public_key())


def load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return _load_key(path, lambda data: serialization.load_pem_private_key(data, password=None), Ed25519PrivateKey, "private")


def load_public_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return _load_key(path, serialization.load_pem_public_key, Ed25519PublicKey, "public")


def _load_key(path: Path, load: Any, expected: type, kind: str) -> Any:
    try:
        key = load(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot read the audit {kind} key {path}: {type(exc).__name__}") from exc
    if not isinstance(key, expected):
        raise CheckpointError(f"{path} is not an Ed25519 {kind} key (make a pair with `refund-mcp audit keygen`)")
    return key


def key_id(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# ------------------------------------------------------------------ checkpoints


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    at: str
    prev: str
    key_id: str
    signature: str

    def payload(self) -> dict[str, Any]:
        return {"v": FORMAT_VERSION, "seq": self.seq, "hash": self.hash, "at": self.at, "prev": self.prev, "key_id": self.key_id}

    def line(self) -> str:
        return canonical_json({**self.payload(), "signature": self.signature})

    def digest(self) -> str:
        """What the next checkpoint names as `prev`."""
        return hashlib.sha256(self.line().encode("utf-8")).hexdigest()


def sign(private_key: Any, seq: int, head_hash: str, at: datetime, prev: str) -> Checkpoint:
    unsigned = Checkpoint(seq, head_hash, _iso(at), prev, key_id(private_key.public_key()), "")
    signature = private_key.sign(canonical_json(unsigned.payload()).encode("utf-8"))
    return Checkpoint(seq, head_hash, unsigned.at, prev, unsigned.key_id, base64.b64encode(signature).decode("ascii"))


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def read_head(engine: AsyncEngine) -> tuple[int, str]:
    async with engine.connect() as conn:
        head = (await conn.execute(select(tables.audit_head.c.seq, tables.audit_head.c.hash).where(tables.audit_head.c.id == 1))).one()
    return int(head.seq), str(head.hash)


async def head_still_extends(engine: AsyncEngine, last: Checkpoint | None) -> str | None:
    """Before signing a new head: the record the last checkpoint signed must still carry its hash and
    the chain from there to the head must be intact (else a rewrite would be signed). None when fine."""
    from refund_mcp.audit.log import verify

    result = await verify(engine, anchors={last.seq: last.hash} if last is not None else None)
    return None if result.ok else (result.problem or "the audit chain does not verify")


async def make_checkpoint(engine: AsyncEngine, private_key: Any, *, prev: Checkpoint | None, now: datetime) -> Checkpoint:
    """Sign the current head. Raises CheckpointError when the chain no longer extends the last checkpoint."""
    problem = await head_still_extends(engine, prev)
    if problem is not None:
        raise CheckpointError(f"not signing: {problem}")
    seq, head_hash = await read_head(engine)
    return sign(private_key, seq, head_hash, now, prev.digest() if prev is not None else GENESIS_HASH)


def parse(lines: Iterable[str]) -> list[Checkpoint]:
    checkpoints = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
            checkpoints.append(
                Checkpoint(int(data["seq"]), str(data["hash"]), str(data["at"]), str(data["prev"]), str(data["key_id"]), str(data["signature"]))
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint line {number} is not a checkpoint ({type(exc).__name__})") from exc
    return checkpoints


def read_file(path: Path) -> list[Checkpoint]:
    try:
        return parse(path.read_text(encoding="utf-8").splitlines())
    except FileNotFoundError:
        return []


def verify_file(checkpoints: list[Checkpoint], public_key: Any) -> dict[int, str]:
    """Check every signature and link; returns {seq: hash} to hold the chain to. Raises CheckpointError."""
    from cryptography.exceptions import InvalidSignature

    expected_key = key_id(public_key)
    prev_digest = GENESIS_HASH
    last_seq = -1
    anchors: dict[int, str] = {}
    for number, checkpoint in enumerate(checkpoints, start=1):
        if checkpoint.key_id != expected_key:
            raise CheckpointError(f"checkpoint {number} was signed by key {checkpoint.key_id}, not {expected_key}")
        try:
            public_key.verify(base64.b64decode(checkpoint.signature), canonical_json(checkpoint.payload()).encode("utf-8"))
        except (InvalidSignature, ValueError) as exc:
            raise CheckpointError(f"checkpoint {number} (record {checkpoint.seq}) has an invalid signature") from exc
        if checkpoint.prev != prev_digest:
            raise CheckpointError(f"checkpoint {number} (record {checkpoint.seq}) does not follow checkpoint {number - 1}: one was removed or changed")
        if checkpoint.seq < last_seq:
            raise CheckpointError(f"checkpoint {number} goes back from record {last_seq} to {checkpoint.seq}")
        anchors[checkpoint.seq] = checkpoint.hash
        prev_digest = checkpoint.digest()
        last_seq = checkpoint.seq
    return anchors


async def append_checkpoint(engine: AsyncEngine, path: Path, private_key: Any, *, now: datetime) -> Checkpoint:
    """Sign the head and append it to `path`, chained to the file's last checkpoint. An exclusive lock
    on the file is held meanwhile, so several processes may share one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as out:
        fcntl.flock(out, fcntl.LOCK_EX)
        try:
            out.seek(0)
            existing = parse(out.read().splitlines())
            checkpoint = await make_checkpoint(engine, private_key, prev=existing[-1] if existing else None, now=now)
            out.write(checkpoint.line() + "\n")
            out.flush()
            os.fsync(out.fileno())
        finally:
            fcntl.flock(out, fcntl.LOCK_UN)
    return checkpoint


async def checkpoint_forever(engine: AsyncEngine, key_path: Path, path: Path, minutes: float, stop: Any) -> None:
    """The worker's loop: a checkpoint every `minutes` until `stop` (an anyio.Event) is set."""
    import logging

    import anyio

    logger = logging.getLogger("refund_mcp.audit")
    key = load_private_key(key_path)
    logger.info("audit checkpoints every %g minute(s) to %s (key %s)", minutes, path, key_id(key.public_key()))
    while not stop.is_set():
        try:
            made = await append_checkpoint(engine, path, key, now=datetime.now(UTC))
            logger.info("audit checkpoint at record %d", made.seq)
        except CheckpointError as exc:
            # Loud: the chain no longer extends what was signed. Nothing new is signed until someone looks.
            logger.error("audit checkpoint refused: %s", exc)
        except Exception:  # a database restart must not end the loop
            logger.exception("audit checkpoint failed; trying again next time")
        with anyio.move_on_after(minutes * 60):
            await stop.wait()
