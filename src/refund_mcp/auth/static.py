"""A TokenVerifier over the REFUND_MCP_TOKENS file.

The presented token is hashed and compared with every entry's hash in constant time, without
stopping at the first match, so response timing says nothing about which hashes exist. The file is
re-read when it changes, so `refund-mcp tokens add|revoke` takes effect without a restart.

Credentials fail closed: when the file changed and cannot be read or parsed (a revoke that left it
unreadable to this user, a hand edit that no longer parses), no static token is accepted until it
loads again, and `problem` says why (the server logs it as an error and /healthz reports it). What
was loaded is remembered only after a successful load, so a failing file is retried on every
request, and fixing its mode or content takes effect at once.

A change is noticed by the file's inode, size and mtime; while the mtime is recent enough that a
same-size rewrite could share it (filesystems keep mtimes to a second or two), the content's hash
is compared as well.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mcp.server.auth.provider import AccessToken, TokenVerifier
from refund_mcp.auth.tokens_file import TokenEntry, TokensFileError, fingerprint, hash_token, parse_tokens

logger = logging.getLogger("refund_mcp.auth")

# Far longer than any token we mint; a bound on the work one request can ask for.
MAX_TOKEN_LENGTH = 4096
# The coarsest mtime granularity we expect (FAT keeps 2 s); within it, stat alone cannot tell.
MTIME_GRANULARITY_SECONDS = 2.0


@dataclass(frozen=True)
class _Loaded:
    inode: int
    size: int
    mtime_ns: int
    digest: str


class StaticTokenVerifier(TokenVerifier):
    def __init__(self, path: Path, *, wall_clock: Callable[[], float] = time.time) -> None:
        """Raises TokensFileError when the file is missing or invalid: refuse to start, not to serve."""
        self.path = path
        self._wall_clock = wall_clock
        self._entries: list[TokenEntry] = []
        self._loaded: _Loaded | None = None
        self.problem: str | None = None
        self._load()
        if self.problem is not None:
            raise TokensFileError(self.problem)

    @property
    def entries(self) -> list[TokenEntry]:
        return list(self._entries)

    def _unchanged(self) -> bool:
        """True when the file is still what was last loaded (never while a load is failing)."""
        if self._loaded is None:
            return False
        try:
            stat = os.stat(self.path)
        except OSError:
            return False
        loaded = self._loaded
        if (stat.st_ino, stat.st_size, stat.st_mtime_ns) != (loaded.inode, loaded.size, loaded.mtime_ns):
            return False
        if self._wall_clock() - stat.st_mtime_ns / 1e9 > MTIME_GRANULARITY_SECONDS:
            return True
        try:
            return hashlib.sha256(self.path.read_bytes()).hexdigest() == loaded.digest
        except OSError:
            return False

    def refresh(self) -> None:
        """Reload the file if it changed; on failure accept no static token until it loads."""
        if not self._unchanged():
            self._load()

    def _load(self) -> None:
        try:
            with self.path.open("rb") as handle:
                stat = os.fstat(handle.fileno())
                raw = handle.read()
            entries = parse_tokens(raw.decode("utf-8"), str(self.path))
        except UnicodeDecodeError:
            self._fail(f"tokens file {self.path} is not UTF-8")
            return
        except OSError as exc:
            self._fail(f"cannot read the tokens file {self.path}: {exc.strerror}")
            return
        except TokensFileError as exc:
            self._fail(str(exc))
            return
        previous = self._loaded
        self._entries = entries
        self._loaded = _Loaded(stat.st_ino, stat.st_size, stat.st_mtime_ns, hashlib.sha256(raw).hexdigest())
        if self.problem is not None:
            logger.warning("tokens file %s loads again: %d token(s) accepted", self.path, len(entries))
        elif previous is not None:
            logger.info("tokens file %s reloaded: %d token(s)", self.path, len(entries))
        self.problem = None

    def _fail(self, problem: str) -> None:
        if problem != self.problem:
            logger.error("%s: every static bearer token is refused until it loads", problem)
        self.problem = problem
        self._entries = []
        self._loaded = None

    async def verify_token(self, token: str) -> AccessToken | None:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        self.refresh()
        digest = hash_token(token)
        found: TokenEntry | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.sha256, digest) and found is None:
                found = entry
        if found is None:
            return None
        # AccessToken.token holds a fingerprint, not the token: the access token object travels
        # through request contexts, and what it does not hold cannot leak.
        return AccessToken(token=fingerprint(digest), client_id=found.actor, scopes=list(found.scopes))


def warn_if_writable_by_others(path: Path) -> None:
    """Whoever can write the tokens file can mint access; say so at start."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & 0o022:
        logger.warning("tokens file %s is writable by group or others (mode %o): use chmod 600", path, mode & 0o777)
