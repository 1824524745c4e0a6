"""The REFUND_MCP_TOKENS file: one entry per bearer token, holding its SHA-256 hash, never the token.

    - actor: support-bot
      scopes: [refunds:read, refunds:write]
      sha256: 3f1c…(64 hex digits)
      created_at: 2025-01-31T09:00:00Z

A top-level YAML list, so `add_token` appends text and keeps the operator's comments. The file is
created with mode 0600: whoever can write it can mint access.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from refund_mcp.auth.actors import ACTOR_PATTERN, is_reserved_actor
from refund_mcp.auth.scopes import ALL_SCOPES, APPROVE, WRITE

TOKEN_PREFIX = "rmcp_"
FILE_MODE = 0o600
_HEADER = (
    "# refund-mcp bearer tokens: SHA-256 hashes only, never the tokens themselves.\n"
    "# Managed with `refund-mcp tokens add|list|revoke`; keep this file private (mode 0600).\n"
)

Scope = Literal["refunds:read", "refunds:write", "refunds:operate", "refunds:approve"]


class TokensFileError(ValueError):
    """The tokens file cannot be read or is not valid; the message names the file and the entry."""


class TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    actor: str = Field(pattern=ACTOR_PATTERN)
    scopes: tuple[Scope, ...] = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: datetime | None = None

    @field_validator("actor")
    @classmethod
    def _not_reserved(cls, actor: str) -> str:
        if is_reserved_actor(actor):
            raise ValueError(f"{actor!r} is a name refund-mcp writes as actor itself (refund-mcp…, external, webhook:…)")
        return actor

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.sha256)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # surrogatepass: any str hashes, so a strange header value is a mismatch, not a crash.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def fingerprint(sha256: str) -> str:
    """A short, non-secret name for a token, safe to print and log."""
    return f"sha256:{sha256[:12]}"


def parse_scopes(text: str) -> tuple[str, ...]:
    """"refunds:read,refunds:write" -> a sorted tuple of known scopes.

    Raises:
        TokensFileError: empty, or a scope that does not exist (a typo must not silently grant nothing).
    """
    scopes = sorted({part.strip() for part in text.split(",") if part.strip()})
    unknown = [scope for scope in scopes if scope not in ALL_SCOPES]
    if unknown:
        raise TokensFileError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(ALL_SCOPES)}")
    if not scopes:
        raise TokensFileError(f"give at least one scope: {', '.join(ALL_SCOPES)}")
    if WRITE in scopes and APPROVE in scopes:
        raise TokensFileError(
            f"a token cannot have both {WRITE} (an agent's: asks for refunds) and {APPROVE} (a human approver's); "
            "mint one token for each"
        )
    return tuple(scopes)


def _describe(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'entry'}: {err['msg']}" for err in error.errors()[:3])


def parse_tokens(text: str, source: str) -> list[TokenEntry]:
    """Raises TokensFileError naming `source` and the entry."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TokensFileError(f"{source}: not valid YAML: {exc}") from exc
    if data is None:
        return []
    if not isinstance(data, list):
        raise TokensFileError(f"{source}: expected a list of {{actor, scopes, sha256}} entries")
    entries: list[TokenEntry] = []
    seen: set[str] = set()
    for index, item in enumerate(data, start=1):
        if isinstance(item, dict) and "token" in item:
            raise TokensFileError(f"{source}: entry {index} holds a plaintext token; keep only its sha256")
        try:
            entry = TokenEntry.model_validate(item)
        except ValidationError as exc:
            raise TokensFileError(f"{source}: entry {index}: {_describe(exc)}") from exc
        if entry.sha256 in seen:
            raise TokensFileError(f"{source}: entry {index} repeats the hash {entry.fingerprint}")
        seen.add(entry.sha256)
        entries.append(entry)
    return entries


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokensFileError(f"{path}: the tokens file is not UTF-8") from exc
    except OSError as exc:
        raise TokensFileError(f"{path}: cannot read the tokens file: {exc.strerror}") from exc


def load_tokens(path: Path) -> list[TokenEntry]:
    """Raises TokensFileError (also when the file cannot be read)."""
    return parse_tokens(_read(path), str(path))


def _entry_yaml(entry: TokenEntry) -> str:
    data = entry.model_dump(mode="json", exclude_none=True)
    data["scopes"] = list(entry.scopes)
    return yaml.safe_dump([data], sort_keys=False, default_flow_style=None, allow_unicode=False)


def add_token(path: Path, actor: str, scopes: Sequence[str], *, now: datetime | None = None) -> tuple[str, TokenEntry]:
    """Mint a token for `actor`, append its hash to the file (created 0600), return (token, entry).

    The token itself is returned once and kept nowhere.

    Raises:
        TokensFileError: a bad actor or scope, or an existing file that is not valid.
    """
    token = new_token()
    try:
        entry = TokenEntry(
            actor=actor,
            scopes=tuple(scopes),  # type: ignore[arg-type]
            sha256=hash_token(token),
            created_at=(now or datetime.now(UTC)).replace(microsecond=0),
        )
    except ValidationError as exc:
        raise TokensFileError(f"cannot add a token for {actor!r}: {_describe(exc)}") from exc
    existing = _read(path) if path.exists() else ""
    parse_tokens(existing, str(path))  # never append to a file the server would refuse
    prefix = _HEADER if not existing.strip() else ("" if existing.endswith("\n") else "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(prefix + _entry_yaml(entry))
    return token, entry


def remove_tokens(path: Path, prefix: str) -> list[TokenEntry]:
    """Remove the entry whose hash starts with `prefix` (at least 8 hex digits, one match); returns it.

    The file is rewritten whole (comments are lost) and replaced atomically, mode 0600.

    Raises:
        TokensFileError: no match, more than one, or a prefix too short to be safe.
    """
    wanted = prefix.removeprefix("sha256:").lower()
    if len(wanted) < 8:
        raise TokensFileError("give at least 8 hex digits of the hash (see `refund-mcp tokens list`)")
    entries = load_tokens(path)
    matching = [entry for entry in entries if entry.sha256.startswith(wanted)]
    if len(matching) != 1:
        raise TokensFileError(f"{len(matching)} token(s) match {prefix!r}; give a longer prefix" if matching else f"no token matches {prefix!r}")
    _rewrite(path, [entry for entry in entries if entry is not matching[0]])
    return matching


def _rewrite(path: Path, entries: Iterable[TokenEntry]) -> None:
    original = path.stat()
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        if os.geteuid() == 0 and (original.st_uid, original.st_gid) != (0, 0):
            # `sudo refund-mcp tokens revoke`: keep the owner the server runs as, or it could no longer
            # read the file (it would then refuse every static token until someone chowns it back).
            os.fchown(handle.fileno(), original.st_uid, original.st_gid)
        handle.write(_HEADER + "".join(_entry_yaml(entry) for entry in entries))
    os.replace(temporary, path)
