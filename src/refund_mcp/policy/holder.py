"""The current policy, reloaded when its file changes.

A reload that fails keeps the last good policy: a half-saved or mistyped file must never leave the
server without a policy, nor with a looser one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from refund_mcp.policy.engine import PolicyEngine
from refund_mcp.policy.loader import PolicyFileError, load_policy

logger = logging.getLogger("refund_mcp.policy")

# How often engine() looks at the file. Stat is cheap, but engine() is called on every tool call.
DEFAULT_CHECK_INTERVAL_SECONDS = 0.5

_FileSignature = tuple[int, int, int]  # (mtime_ns, size, inode)


class PolicyHolder:
    """Holds the engine for one policy file and swaps it when the file changes. Thread-safe."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        check_interval: float = DEFAULT_CHECK_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Load the policy at once. Raises PolicyFileError if the file cannot be used."""
        self._path = os.fspath(path)
        self._check_interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last_error: str | None = None
        signature = _signature(self._path)
        self._engine = PolicyEngine(load_policy(self._path))
        self._signature = signature
        self._checked_at = clock()

    @property
    def path(self) -> str:
        """The policy file being watched."""
        return self._path

    @property
    def last_error(self) -> str | None:
        """Why the latest reload failed ("path:line: reason"), or None when the file in use is current."""
        return self._last_error

    def engine(self) -> PolicyEngine:
        """The current engine; reloads first if the file changed (looked at most every `check_interval`)."""
        now = self._clock()
        if now - self._checked_at >= self._check_interval:
            with self._lock:
                if now - self._checked_at >= self._check_interval:
                    self._checked_at = now
                    signature = _signature(self._path)
                    if signature != self._signature:
                        self._reload(signature)
        return self._engine

    def reload(self) -> bool:
        """Read the file now, changed or not (e.g. on SIGHUP). True if a new version was loaded."""
        with self._lock:
            self._checked_at = self._clock()
            return self._reload(_signature(self._path))

    def _reload(self, signature: _FileSignature | None) -> bool:
        # Remember the signature even on failure so a broken file is reported once, not every check.
        self._signature = signature
        try:
            loaded = load_policy(self._path)
        except PolicyFileError as exc:
            self._last_error = str(exc)
            logger.error("policy not reloaded, keeping version %s: %s", self._engine.version, exc)
            return False
        self._last_error = None
        if loaded.version == self._engine.version:
            return False
        previous = self._engine.version
        self._engine = PolicyEngine(loaded)
        logger.info("policy reloaded from %s: version %s (was %s)", self._path, loaded.version, previous)
        return True


def _signature(path: str) -> _FileSignature | None:
    try:
        status = os.stat(path)
    except OSError:
        return None  # a missing file is a change too; loading it then reports why
    return (status.st_mtime_ns, status.st_size, status.st_ino)
