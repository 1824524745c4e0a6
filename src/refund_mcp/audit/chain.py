"""The hash chain: canonical JSON, record hashes, and verification.

hash(n) = SHA-256(prev_hash(n) + canonical_json(body(n))), with prev_hash(1) = 64 zeros.
The body holds every field of the record (seq and time included), so editing any column,
deleting a record or swapping two records breaks the chain at that point.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS_HASH = "0" * 64

# Columns stored beside the body for querying; verify checks they agree with the body.
INDEXED_FIELDS = ("seq", "at", "actor", "action", "target", "outcome", "error_code")


def canonical_json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def record_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoredRecord:
    seq: int
    columns: dict[str, Any]  # the INDEXED_FIELDS as stored (at as ISO string)
    body: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    problem: str | None = None
    bad_seq: int | None = None
    unsealed: int = 0  # PostgreSQL: records committed but not yet in the chain (not tamper-evident yet)
    stale_unsealed: int = 0  # of those found before sealing, how many had waited longer than the window


class ChainWalker:
    """Checks records one at a time, in seq order, so a long chain is verified in constant memory.

    `anchors` ({seq: hash}, from signed checkpoints) pin records to hashes recorded outside the
    database: a chain rewritten consistently, or cut short with its head moved back, fails on them."""

    def __init__(self, anchors: Mapping[int, str] | None = None) -> None:
        self.anchors = dict(anchors or {})
        self.expected_prev = GENESIS_HASH
        self.expected_seq = 1
        self.count = 0
        self.failure: VerifyResult | None = None

    def feed(self, record: StoredRecord) -> bool:
        """False once a problem is found (kept in `failure`); later records are not looked at."""
        if self.failure is not None:
            return False
        self.count += 1
        problem = self._problem(record)
        if problem is not None:
            self.failure = VerifyResult(False, self.count, problem, record.seq)
            return False
        self.expected_prev = record.hash
        self.expected_seq += 1
        return True

    def _problem(self, record: StoredRecord) -> str | None:
        if record.seq != self.expected_seq:
            return f"record {self.expected_seq} is missing (found {record.seq} next)"
        if record.prev_hash != self.expected_prev:
            return f"record {record.seq} does not follow record {record.seq - 1}"
        if record_hash(record.prev_hash, record.body) != record.hash:
            return f"record {record.seq} was altered (hash mismatch)"
        anchored = self.anchors.get(record.seq)
        if anchored is not None and anchored != record.hash:
            return f"record {record.seq} differs from its signed checkpoint: the chain was rewritten"
        try:
            body = json.loads(record.body)
        except ValueError:
            return f"record {record.seq} has an unreadable body"
        for name in INDEXED_FIELDS:
            if body.get(name) != record.columns.get(name):
                return f"record {record.seq} column {name!r} was altered"
        return None

    def finish(self, head_seq: int, head_hash: str) -> VerifyResult:
        if self.failure is not None:
            return self.failure
        signed = max(self.anchors, default=0)
        if signed > self.count:
            return VerifyResult(
                False, self.count, f"the chain ends at record {self.count} but a signed checkpoint covers record {signed}: records were removed", self.count + 1
            )
        if self.count != head_seq or self.expected_prev != head_hash:
            # Records removed from the end leave a consistent but short chain; the head row remembers.
            return VerifyResult(False, self.count, f"the chain ends at record {self.count} but its head says {head_seq}", self.count + 1)
        return VerifyResult(True, self.count)


def verify_chain(records: Iterable[StoredRecord], head_seq: int, head_hash: str) -> VerifyResult:
    """Walk the records in seq order; the first inconsistency is reported with its seq."""
    walker = ChainWalker()
    for record in records:
        if not walker.feed(record):
            break
    return walker.finish(head_seq, head_hash)
