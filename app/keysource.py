"""Where a running node gets its keyring from, and how it notices changes.

Every process (each uvicorn worker) runs its own source: the current ``Keyring`` is an immutable
snapshot held in one attribute, replaced whole when a newer, valid keyring has been read. A
request that started with the old snapshot finishes with it; nothing is locked on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .keyring import Keyring, KeyringDir, KeyringError

log = logging.getLogger("feedback_tokens.keys")


class KeySource:
    """The interface the app uses; subclasses decide where keys come from."""

    keyring: Keyring = Keyring()
    error: str | None = None

    async def start(self) -> None:
        """Load once (raise if nothing usable) and begin watching for changes."""

    async def stop(self) -> None:
        pass

    async def on_unknown_kid(self, kid: str) -> bool:
        """A token named a kid we don't hold. Return True if the keyring changed."""
        return False


class DirectorySource(KeySource):
    """A keyring directory, polled every ``interval`` seconds (a stat call; re-read on change)."""

    def __init__(self, directory: KeyringDir, interval: float = 1.0) -> None:
        self.directory = directory
        self.interval = interval
        self._stamp: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def reload(self) -> bool:
        """Re-read the keyring if the manifest changed. A keyring that fails validation is
        never swapped in: the node keeps verifying with the last good one."""
        stamp = self.directory.stamp()
        if stamp == self._stamp:
            return False
        try:
            keyring = self.directory.load()
        except (KeyringError, OSError) as err:
            if self.error != str(err):
                log.error("keyring in %s not loaded, keeping the previous one: %s",
                          self.directory.path, err)
            self.error = str(err)
            return False
        # Only remember the stamp of what we actually loaded, so a half-written file seen
        # between two writes is read again on the next tick.
        self._stamp, self.keyring, self.error = stamp, keyring, None
        log.info("keyring loaded: %s", ", ".join(f"{k.kid}:{k.state}" for k in keyring.keys.values()) or "empty")
        return True

    async def start(self) -> None:
        self.reload()
        self._task = asyncio.create_task(self._watch(), name="keyring-watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.reload()
            except Exception:  # never let the watcher die
                log.exception("keyring reload failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def on_unknown_kid(self, kid: str) -> bool:
        # A key published a moment ago may not have been picked up yet: one cheap stat.
        return self.reload()
