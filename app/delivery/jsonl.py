"""``jsonl:PATH``: one JSON object per line, appended, the file fsynced once per batch.

``jsonl:-`` writes to standard output (flushed per batch; what reads it decides about
durability). One deliverer per file: lines of two processes appending to one file could
interleave.

A deliverer killed in the middle of a write leaves a last line without its newline. Its entries
were not acknowledged, so they come again; the next deliverer to open the file cuts the torn
line off first, so every line of the file is whole JSON.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from app import encoding
from app.store.entry import FeedbackEntry

log = logging.getLogger("feedback_tokens.delivery")


def lines(batch: Sequence[FeedbackEntry]) -> bytes:
    return b"".join(encoding.dumps(entry.to_json()) + b"\n" for entry in batch)


class JsonlTarget:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._open()  # at once: a path that can't be written is said at start, not at the first entry

    def _open(self) -> int:
        if self._fd is None:
            if self.path == "-":
                self._fd = sys.stdout.fileno()
            else:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
                _cut_torn_line(fd, self.path)
                self._fd = fd
        return self._fd

    def _write(self, data: bytes) -> None:
        fd = self._open()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if self.path != "-":
            os.fsync(fd)

    async def deliver(self, batch: Sequence[FeedbackEntry]) -> None:
        # Off the event loop: an fsync may take a while, and the deliverer's heartbeat must go on.
        await asyncio.to_thread(self._write, lines(batch))

    async def aclose(self) -> None:
        if self._fd is not None and self.path != "-":
            os.close(self._fd)
        self._fd = None


def _cut_torn_line(fd: int, path: str) -> None:
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    # Find the end of the last whole line, reading backwards in blocks.
    end = size
    while end > 0:
        start = max(0, end - 65536)
        block = os.pread(fd, end - start, start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    else:
        keep = 0
    os.ftruncate(fd, keep)
    os.fsync(fd)
    log.warning("%s ended in a torn line (%d bytes) from an interrupted write; cut it off", path, size - keep)
