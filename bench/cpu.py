"""Who used the CPU during a measured window: the server, the load generator, Redis, this
driver, and everything else on the machine (other people's test suites on a shared host).

Read from /proc, in CPU seconds: the machine's busy and steal time (/proc/stat), the live
members of each process group the bench started (/proc/<pid>/stat), and this process and its
reaped children (getrusage). A load generator started and reaped inside the window (wrk) is
counted exactly through RUSAGE_CHILDREN.
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
NOISY = 0.05  # share of the machine used by others above which a window is called noisy


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot. Busy counts user, nice and
    system time only: interrupt time can't be told apart by process."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    steal = fields[7] if len(fields) > 7 else 0
    return (fields[0] + fields[1] + fields[2]) / TICK, steal / TICK


def groups_cpu(pgids: Iterable[int]) -> dict[int, float]:
    """CPU seconds used so far by the live members of each process group."""
    wanted = set(pgids)
    out = dict.fromkeys(wanted, 0.0)
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            with contextlib.suppress(OSError, ValueError, IndexError), open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
                pgid = int(rest[2])
                if pgid in wanted:
                    out[pgid] += (int(rest[11]) + int(rest[12])) / TICK
    return out


def _rusage(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


@dataclass(frozen=True)
class Sample:
    at: float
    busy: float
    steal: float
    self_cpu: float
    children: float
    groups: Mapping[int, float]

    @classmethod
    def take(cls, pgids: Iterable[int]) -> Sample:
        busy, steal = machine_cpu()
        return cls(time.monotonic(), busy, steal, _rusage(resource.RUSAGE_SELF),
                   _rusage(resource.RUSAGE_CHILDREN), groups_cpu(pgids))


@dataclass(frozen=True)
class Usage:
    """Cores used on average over a window, by role (1.0 = one core busy the whole time)."""

    seconds: float
    roles: dict[str, float] = field(default_factory=dict)
    other: float = 0.0  # everything on the machine that is not ours
    steal: float = 0.0

    @property
    def other_share(self) -> float:
        """The share of the whole machine others used."""
        return self.other / CORES

    @property
    def noisy(self) -> bool:
        return self.other_share > NOISY

    def get(self, role: str) -> float:
        return self.roles.get(role, 0.0)


def usage(a: Sample, b: Sample, roles: Mapping[int, str], children_role: str | None = None) -> Usage:
    """CPU between two samples. ``roles`` names process groups (several may share a name, e.g.
    the nodes of a cluster); ``children_role`` gets this process's children reaped in between
    (the load generator), and this process itself is ``driver``."""
    wall = max(1e-9, b.at - a.at)
    out: dict[str, float] = {}
    ours = 0.0
    for pgid, role in roles.items():
        used = max(0.0, b.groups.get(pgid, 0.0) - a.groups.get(pgid, 0.0))
        out[role] = out.get(role, 0.0) + used / wall
        ours += used
    children = max(0.0, b.children - a.children)
    if children_role is not None:
        out[children_role] = out.get(children_role, 0.0) + children / wall
    driver = max(0.0, b.self_cpu - a.self_cpu)
    out["driver"] = out.get("driver", 0.0) + driver / wall
    ours += children + driver
    other = max(0.0, (b.busy - a.busy) - ours)
    return Usage(wall, out, other / wall, (b.steal - a.steal) / wall)
