"""The courier: hands one batch of held entries to the target, and retries until the target
confirms it or refuses it.

- ``TargetUnavailable``: the target is down; the same batch is tried again after its
  ``retry_after`` (capped at ``MAX_RETRY_AFTER``) or a backoff (``backoff`` doubling up to
  ``max_backoff``, with jitter), for as long as it takes.
- any other exception: the target's own failure; retried with backoff, up to ``max_failures``
  attempts.
- ``Rejected``, or ``max_failures`` failures: the batch is halved and each half tried again,
  until the refused entries stand alone; those are given up with a reason (the caller moves them
  to the dead-letter stream).

A wait between attempts ends early when the deliverer is asked to stop: ``Stopping`` is raised
and the batch stays pending, for the next deliverer. What a target may raise is said in
``app/delivery/target.py``; the courier also closes the target when the deliverer is done.
"""

from __future__ import annotations

import asyncio
import logging
import random

from app.delivery.metrics import DeliveryMetrics
from app.delivery.options import Options
from app.delivery.reader import Held
from app.delivery.target import Closable, Rejected, Target, TargetUnavailable

log = logging.getLogger("feedback_tokens.delivery")

MAX_RETRY_AFTER = 600.0


class Stopping(Exception):
    """Raised out of a wait when the deliverer is asked to stop."""


def jitter(delay: float) -> float:
    return delay / 2 + random.uniform(0, delay / 2)


class Courier:
    def __init__(self, target: Target, options: Options, metrics: DeliveryMetrics, stop: asyncio.Event) -> None:
        self.target = target
        self.options = options
        self.metrics = metrics
        self.stop = stop  # the deliverer's: set, a wait between attempts raises Stopping

    async def attempt(self, batch: list[Held]) -> tuple[list[Held], list[tuple[Held, str]]]:
        """Deliver ``batch``: (confirmed, refused with why). A refused batch is halved until the
        refused entries stand alone."""
        entries = [item.entry for item in batch if item.entry is not None]
        failures, delay = 0, self.options.backoff
        while True:
            try:
                await self.target.deliver(entries)
                return batch, []
            except TargetUnavailable as err:
                wait = err.retry_after if err.retry_after is not None else jitter(delay)
                wait = min(wait, MAX_RETRY_AFTER)
                delay = min(delay * 2, self.options.max_backoff)
                log.warning("target unavailable (%s); trying %d entries again in %.1fs", err, len(batch), wait)
            except Rejected as err:
                reason = str(err)
                break
            except Exception as err:  # a target's own failure: counted, and retried up to max_failures
                failures += 1
                log.warning("delivery of %d entries failed (%d of %d)", len(batch), failures,
                            self.options.max_failures, exc_info=True)
                if failures >= self.options.max_failures:
                    reason = f"failed {failures} times: {type(err).__name__}: {err}"
                    break
                wait = jitter(delay)
                delay = min(delay * 2, self.options.max_backoff)
            self.metrics.retried.inc(len(batch))
            await self._wait(wait)
        if len(batch) == 1:
            log.warning("giving up on %s %s: %s", batch[0].stream, batch[0].id, reason)
            return [], [(batch[0], reason)]
        half = len(batch) // 2
        first_done, first_dead = await self.attempt(batch[:half])
        second_done, second_dead = await self.attempt(batch[half:])
        return first_done + second_done, first_dead + second_dead

    async def _wait(self, seconds: float) -> None:
        """Sleep, or raise Stopping as soon as the deliverer is asked to stop."""
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            pass
        if self.stop.is_set():
            raise Stopping

    async def close(self) -> None:
        """Close the target, if it has anything to close (at most 10 seconds)."""
        if isinstance(self.target, Closable):
            try:
                await asyncio.wait_for(self.target.aclose(), 10)
            except TimeoutError:
                log.warning("the target did not close within 10s")
