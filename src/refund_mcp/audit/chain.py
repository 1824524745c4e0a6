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


def verify_chain(records: Iterable[StoredRecord], head_seq: int, head_hash: str) -> VerifyResult:
    """Walk the records in seq order; the first inconsistency is reported with its seq."""
    expected_prev = GENESIS_HASH
    expected_seq = 1
    count = 0
    for record in records:
        count += 1
        if record.seq != expected_seq:
            return VerifyResult(False, count, f"record {expected_seq} is missing (found {record.seq} next)", record.seq)
        if record.prev_hash != expected_prev:
            return VerifyResult(False, count, f"record {record.seq} does not follow record {record.seq - 1}", record.seq)
        if record_hash(record.prev_hash, record.body) != record.hash:
            return VerifyResult(False, count, f"record {record.seq} was altered (hash mismatch)", record.seq)
        try:
            body = json.loads(record.body)
        except ValueError:
            return VerifyResult(False, count, f"record {record.seq} has an unreadable body", record.seq)
        for name in INDEXED_FIELDS:
            if body.get(name) != record.columns.get(name):
                return VerifyResult(False, count, f"record {record.seq} column {name!r} was altered", record.seq)
        expected_prev = record.hash
        expected_seq += 1
    if count != head_seq or expected_prev != head_hash:
        return VerifyResult(False, count, f"the chain ends at record {count} but its head says {head_seq}", count + 1)
    return VerifyResult(True, count)
