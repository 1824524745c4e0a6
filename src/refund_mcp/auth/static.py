"""A TokenVerifier over the REFUND_MCP_TOKENS file.

The presented token is hashed and compared with every entry's hash in constant time, without
stopping at the first match, so response timing says nothing about which hashes exist. The file is
re-read when it changes, so `refund-mcp tokens add|revoke` takes effect without a restart.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

from mcp.server.auth.provider import AccessToken, TokenVerifier
from refund_mcp.auth.tokens_file import TokenEntry, TokensFileError, fingerprint, hash_token, load_tokens

logger = logging.getLogger("refund_mcp.auth")

# Far longer than any token we mint; a bound on the work one request can ask for.
MAX_TOKEN_LENGTH = 4096


def _file_state(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


class StaticTokenVerifier(TokenVerifier):
    def __init__(self, path: Path) -> None:
        """Raises TokensFileError when the file is missing or invalid: refuse to start, not to serve."""
        self.path = path
        self._entries: list[TokenEntry] = load_tokens(path)
        self._state = _file_state(path)

    @property
    def entries(self) -> list[TokenEntry]:
        return list(self._entries)

    def _reload_if_changed(self) -> None:
        state = _file_state(self.path)
        if state == self._state:
            return
        self._state = state
        if state is None:
            # Fail closed: a removed tokens file revokes every token.
            logger.warning("tokens file %s is gone: every bearer token is refused", self.path)
            self._entries = []
            return
        try:
            self._entries = load_tokens(self.path)
        except TokensFileError as exc:
            logger.warning("tokens file changed but is not valid, keeping the previous tokens: %s", exc)
            return
        logger.info("tokens file %s reloaded: %d token(s)", self.path, len(self._entries))

    async def verify_token(self, token: str) -> AccessToken | None:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        self._reload_if_changed()
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
