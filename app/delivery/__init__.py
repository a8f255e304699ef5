"""Getting the feedback out of the Redis streams: a consumer loop (``consumer``) that reads and
settles entries through the group (``reader``) and hands them to a target with retries
(``courier``), with its ``options``; the targets it delivers to (``jsonl``, ``webhook``,
``postgres``, or a class of yours: ``target``), and keeping the streams bounded (``streams``,
``upkeep``).

A target of your own is a class with one async method (see ``target.Target``)::

    from app.delivery import FeedbackEntry, Rejected, TargetUnavailable

    class Printer:
        async def deliver(self, batch: Sequence[FeedbackEntry]) -> None:
            for entry in batch:
                print(entry.key, entry.score)
"""

from app.delivery.target import DeliveryError, Rejected, Target, TargetUnavailable
from app.store.entry import FeedbackEntry

__all__ = ["DeliveryError", "FeedbackEntry", "Rejected", "Target", "TargetUnavailable"]
