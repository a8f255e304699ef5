"""A registry of the process groups we started, so that everything can be stopped by group.

Every process is started in a session (and so a process group) of its own: a terminal's Ctrl-C
reaches only the program that started it, which stops its processes in order, and stopping a
group also stops what the process forked (uvicorn's workers with their supervisor) and nothing
else on the machine. ``leftovers`` is the final check that nothing we started is still running.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat from the state field on (the name before it may hold spaces)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def group_alive(pgid: int) -> bool:
    """Whether a process of this group is still running. Zombies don't count: a uvicorn worker
    that outlived its supervisor is reparented to PID 1, which may take seconds to reap it."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError, IndexError):
                rest = _stat_fields(pid)
                if int(rest[2]) == pgid and rest[0] not in ("Z", "X"):
                    return True
    return False


class ProcessGroups:
    """The process groups one program started: start, stop one, stop all, check for leftovers."""

    def __init__(self) -> None:
        self.groups: dict[int, str] = {}  # pgid (the leader's pid) -> what it is
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def popen(self, args: Sequence[str], what: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(args, start_new_session=True, **kwargs)
        self.groups[proc.pid] = what
        self.procs[proc.pid] = proc
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """SIGTERM the whole group, wait, then SIGKILL whatever is left of it."""
        pgid = proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=5)
        # Children (uvicorn workers) may outlive a leader that was killed.
        deadline = time.monotonic() + timeout
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.1)
        if not group_alive(pgid):
            self.groups.pop(pgid, None)
            self.procs.pop(pgid, None)

    def stop_all(self) -> None:
        """Newest first, each given a few seconds: what started later may depend on what came before."""
        for pgid in reversed(list(self.groups)):
            proc = self.procs.get(pgid)
            if proc is not None:
                with contextlib.suppress(Exception):
                    self.stop(proc, timeout=5)

    def leftovers(self) -> list[str]:
        """Descriptions of the groups we started that still have a live process."""
        left = []
        for pgid, what in self.groups.items():
            proc = self.procs.get(pgid)
            if proc is not None:
                proc.poll()  # reap a zombie leader
            if group_alive(pgid):
                left.append(f"{what} (process group {pgid})")
        return left
