"""Where a running node gets its keyring from, and how it notices changes.

Every process (each uvicorn worker) runs its own source: the current ``Keyring`` is an immutable
snapshot held in one attribute, replaced whole when a newer, valid keyring has been read. A
request that started with the old snapshot finishes with it; nothing is locked on the hot path.
A keyring that fails to load or parse is never swapped in: the node keeps the last good one and
says why in ``error`` (shown by ``/readyz``) and in the log.

- ``DirectorySource``: a keyring directory (``FEEDBACK_KEYS_DIR``), full or public keys only.
- ``JwksSource``: an issuer's ``/.well-known/jwks.json`` (``FEEDBACK_JWKS_URL``); verify-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

import httpx

from app.keys.key import KeyringError
from app.keys.keyring import Keyring, KeyringDir, keyring_from_jwks

log = logging.getLogger("feedback_tokens.keys")

# A JWK Set of a few keys is a few hundred bytes; anything near this is not one.
MAX_JWKS_BYTES = 64 * 1024


class KeySource:
    """The interface the app uses; subclasses decide where keys come from."""

    keyring: Keyring = Keyring()
    error: str | None = None
    # Wall-clock time of the last successful load (or confirmation that nothing changed).
    loaded_at: float | None = None

    def stale(self) -> str | None:
        """Why the keys held are too old to trust (verification then fails closed), or None."""
        return None

    async def start(self) -> None:
        """Load once and begin watching for changes. Never raises for a missing or bad keyring:
        the node starts, ``/readyz`` says why it isn't ready, and the watcher keeps trying."""

    async def stop(self) -> None:
        pass

    async def on_unknown_kid(self, kid: str) -> bool:
        """A token named a kid we don't hold. Return True if the keyring changed."""
        return False


class DirectorySource(KeySource):
    """A keyring directory, polled every ``interval`` seconds (a small read and a few stats;
    re-read and validated in full only when something changed)."""

    # Unknown kids trigger a look at the directory at most this often: a stream of tokens with
    # made-up kids must not turn into a stream of keyring reads.
    unknown_kid_floor = 0.2

    def __init__(
        self, directory: KeyringDir, interval: float = 1.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.directory = directory
        self.interval = interval
        self.monotonic = monotonic
        self._fingerprint: bytes | None = None  # of the keyring last loaded (None: no manifest)
        self._loaded = False
        self._last_unknown_kid = float("-inf")
        self._task: asyncio.Task[None] | None = None

    def reload(self) -> bool:
        """Re-read the keyring if it changed on disk. A keyring that fails validation is
        never swapped in: the node keeps verifying with the last good one."""
        fingerprint = self.directory.fingerprint()
        if self._loaded and fingerprint == self._fingerprint:
            self.loaded_at = time.time()
            if self.error is not None:  # put back as it was: what we hold is what's on disk
                log.info("keyring in %s is back to the loaded one", self.directory.path)
                self.error = None
            self.loaded_at = time.time()
            return False
        try:
            # A manifest that vanishes is never meant (retiring every key still leaves one): a
            # directory being replaced or unmounted must not wipe a running node's keys.
            keyring = self.directory.load(missing_ok=not len(self.keyring))
        except (KeyringError, OSError) as err:
            if self.error != str(err):
                log.error("keyring in %s not loaded, keeping the previous one (%s): %s",
                          self.directory.path, self.keyring.describe(), err)
            self.error = str(err)
            return False
        # Only remember the fingerprint of what loaded: a failed or half-synced state is tried
        # again on the next tick, and its error logged again only if it changes.
        self._fingerprint, self._loaded, self.keyring, self.error = fingerprint, True, keyring, None
        self.loaded_at = time.time()
        log.info("keyring loaded from %s: %s", self.directory.path, keyring.describe())
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
        # A key activated a moment ago may not have been picked up yet: look now, within limits.
        now = self.monotonic()
        if now - self._last_unknown_kid < self.unknown_kid_floor:
            return False
        self._last_unknown_kid = now
        return self.reload()


class JwksSource(KeySource):
    """Verify-only: the public keys an issuer publishes at ``url``.

    Fetched at start, then about every ``refresh`` seconds (with jitter, so a fleet started
    together does not fetch together), conditionally (``If-None-Match``: an unchanged set costs
    the issuer a 304), and again when a token names a kid we don't hold, but never more often
    than once per ``refetch_floor`` seconds for that reason, so tokens with forged kids can't
    make a fleet hammer its issuer. Every key of the set verifies (the issuer publishes pending
    and active keys, never retired ones, so a key that leaves the set stops verifying at the next
    refresh). An unreachable issuer, an error answer or something that is not a JWK Set leaves
    the last good set in place, but only for ``max_age`` seconds: a node cut off from its issuer
    for longer can't know whether a key was retired (after a leak, say), so it fails closed
    (``stale``: not ready, submissions 503 ``keys_stale``) until the issuer answers again.
    """

    def __init__(
        self,
        url: str,
        refresh: float = 4.0,
        refetch_floor: float = 10.0,
        timeout: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        max_age: float = 600.0,
        jitter: float = 0.2,
    ) -> None:
        self.url = url
        self.refresh_interval = refresh
        self.refetch_floor = refetch_floor
        self.timeout = timeout
        self.monotonic = monotonic
        self.max_age = max_age
        self.jitter = jitter
        self._confirmed: float | None = None  # monotonic time the set was last known current
        self._etag: str | None = None
        self._raw: bytes | None = None
        self._last_refetch = float("-inf")
        self._client: httpx.AsyncClient | None = None
        self._inflight: asyncio.Task[bool] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            timeout=self.timeout,
            follow_redirects=False,
            # Ask caches between us and the issuer to revalidate: a retired key must leave
            # every node within one refresh, not when some proxy's copy expires.
            headers={"Accept": "application/jwk-set+json, application/json", "Cache-Control": "no-cache"},
        )
        await self.refresh()
        self._task = asyncio.create_task(self._watch(), name="jwks-watch")

    def stale(self) -> str | None:
        if self._confirmed is None:
            return None  # nothing loaded yet: "no key that verifies" says it better
        age = self.monotonic() - self._confirmed
        if age <= self.max_age:
            return None
        return (
            f"keys from {self.url} are {age:.0f} s old (FEEDBACK_JWKS_MAX_AGE is {self.max_age:.0f} s): "
            f"the issuer has not answered since ({self.error or 'no error recorded'})"
        )

    def next_delay(self) -> float:
        """Seconds until the next scheduled fetch: the refresh interval, give or take ``jitter`` of
        it, drawn afresh each time, so nodes started together drift apart instead of fetching
        together for ever."""
        spread = self.refresh_interval * self.jitter
        return self.refresh_interval + random.uniform(-spread, spread)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.next_delay())
            try:
                await self.refresh()
            except Exception:  # never let the watcher die
                log.exception("JWKS refresh failed")

    async def stop(self) -> None:
        for task in (self._task, self._inflight):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._client is not None:
            await self._client.aclose()

    async def refresh(self) -> bool:
        """Fetch the set once (joining a fetch already under way). True if the keyring changed."""
        task = self._inflight
        if task is None:
            task = self._inflight = asyncio.create_task(self._fetch(), name="jwks-fetch")
            task.add_done_callback(self._fetched)
        # Shielded: a request that gives up waiting doesn't cancel the fetch others wait on.
        return await asyncio.shield(task)

    def _fetched(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def on_unknown_kid(self, kid: str) -> bool:
        now = self.monotonic()
        if self._inflight is None and now - self._last_refetch < self.refetch_floor:
            return False
        if self._inflight is None:
            self._last_refetch = now
        return await self.refresh()

    async def _fetch(self) -> bool:
        if self._client is None:
            raise RuntimeError("JwksSource.start() was not awaited")
        try:
            try:
                raw, etag = await self._get(self._client)
            except httpx.HTTPError as err:
                raise KeyringError(f"could not fetch it: {type(err).__name__}: {err}") from err
            if raw is None or raw == self._raw:  # 304 Not Modified, or the same set again
                self._etag = etag or self._etag
                self._ok()
                return False
            keyring, skipped = keyring_from_jwks(raw)
        except KeyringError as err:
            message = f"JWKS from {self.url} not loaded, keeping the previous keys ({self.keyring.describe()}): {err}"
            if self.error != message:
                log.error("%s", message)
            self.error = message
            return False
        for reason in skipped:
            log.warning("JWKS from %s: key skipped: %s", self.url, reason)
        self._raw, self.keyring, self._etag = raw, keyring, etag
        self._ok()
        log.info("keys loaded from %s: %s", self.url, keyring.describe())
        return True

    def _ok(self) -> None:
        if self.error is not None:
            log.info("JWKS from %s loads again", self.url)
        self.error = None
        self._confirmed = self.monotonic()
        self.loaded_at = time.time()

    async def _get(self, client: httpx.AsyncClient) -> tuple[bytes | None, str | None]:
        """The set's bytes (None when the issuer says our copy is current: 304) and its ETag."""
        headers = {"If-None-Match": self._etag} if self._etag and self._raw is not None else {}
        async with client.stream("GET", self.url, headers=headers) as response:
            if response.status_code == 304 and headers:
                return None, None
            if response.status_code != 200:
                raise KeyringError(f"the issuer answered {response.status_code}")
            etag = response.headers.get("etag")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_JWKS_BYTES:
                    raise KeyringError(f"answer larger than {MAX_JWKS_BYTES} bytes")
                chunks.append(chunk)
        return b"".join(chunks), etag
