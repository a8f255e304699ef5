"""Processes the benchmark starts (redis-server, uvicorn, wrk, the open-loop driver).

Every process is started in a session (and process group) of its own and registered here, so
that everything can be stopped by group: uvicorn's worker processes with their supervisor, and
nothing else on the machine. ``stop_all`` runs on normal exit, on error and on Ctrl-C/SIGTERM;
``leftovers`` is the final check that nothing we started is still running.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _group_alive(pgid: int) -> bool:
    """Whether a process of this group is still running. Zombies don't count: a uvicorn worker
    that outlived its supervisor is reparented to PID 1, which may take seconds to reap it."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[2]) == pgid and rest[0] not in ("Z", "X"):
            return True
    return False


class Procs:
    """A registry of the process groups we started."""

    def __init__(self) -> None:
        self.groups: dict[int, str] = {}  # pgid -> description
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def popen(self, args: list[str], what: str, **kw: object) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, start_new_session=True, **kw)  # type: ignore[call-overload]
        self.groups[proc.pid] = what
        self.procs[proc.pid] = proc
        return proc  # type: ignore[no-any-return]

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
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.1)
        if not _group_alive(pgid):
            self.groups.pop(pgid, None)
            self.procs.pop(pgid, None)

    def stop_all(self) -> None:
        for pgid in list(self.groups):
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
            if _group_alive(pgid):
                left.append(f"{what} (process group {pgid})")
        return left


_TICK = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat. Busy counts
    user, nice and system time only: interrupt time can't be told apart by process."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system = fields[0], fields[1], fields[2]
    steal = fields[7] if len(fields) > 7 else 0
    return (user + nice + system) / _TICK, steal / _TICK


def _proc_cpu(pid: str) -> tuple[int, float]:
    """(process group, CPU seconds) of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[2]), (int(rest[11]) + int(rest[12])) / _TICK


class CpuMeter:
    """How much CPU the rest of the machine used while the bench ran: the machine's busy time
    minus our own (this process, its reaped children, and live members of our process groups)."""

    def __init__(self, procs: Procs) -> None:
        self.procs = procs

    def own(self) -> float:
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            r = resource.getrusage(who)
            total += r.ru_utime + r.ru_stime
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) != os.getpid():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    pgid, cpu = _proc_cpu(pid)
                    if pgid in self.procs.groups:
                        total += cpu
        return total

    def sample(self) -> tuple[float, float, float, float]:
        busy, steal = machine_cpu()
        return time.monotonic(), busy, steal, self.own()

    @staticmethod
    def foreign(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> dict[str, float]:
        """Between two samples: the share of the machine (all cores) used by other processes,
        and the share stolen by the hypervisor."""
        wall = max(1e-9, b[0] - a[0]) * (os.cpu_count() or 1)
        other = max(0.0, (b[1] - a[1]) - (b[3] - a[3]))
        return {"other": other / wall, "steal": (b[2] - a[2]) / wall}


class RedisServer:
    """A private redis-server: a free TCP port on 127.0.0.1, no persistence, data in a temp dir."""

    def __init__(self, procs: Procs, workdir: Path) -> None:
        self.procs = procs
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def start(self) -> RedisServer:
        args = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--save", "", "--appendonly", "no",
            "--maxmemory-policy", "noeviction", "--logfile", str(self.dir / "redis.log"),
        ]
        self.proc = self.procs.popen(args, "redis-server", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited; see {self.dir / 'redis.log'}")
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer within 10 s")

    def used_memory(self) -> int:
        return int(self.client().info("memory")["used_memory"])

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc)
            self.proc = None


class Uvicorn:
    """``uvicorn TARGET`` on a free port, with the flags every benchmarked app shares."""

    FLAGS = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]

    def __init__(
        self, procs: Procs, python: str, target: str, workers: int, env: dict[str, str], cwd: Path, log: Path
    ) -> None:
        self.procs = procs
        self.target = target
        self.workers = workers
        self.port = free_port()
        self.log = log
        self.args = [
            python, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(workers), *self.FLAGS,
        ]
        self.env = env
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> str:
        """The command line, with the interpreter and port generalised (for RESULTS.md)."""
        args = ["uvicorn", *self.args[3:]]
        args[args.index("--port") + 1] = "PORT"
        args[args.index("--workers") + 1] = "N"
        return " ".join(args)

    def start(self, timeout: float = 30.0) -> Uvicorn:
        with open(self.log, "ab") as log:
            self.proc = self.procs.popen(
                self.args, f"uvicorn {self.target}", env=self.env, cwd=self.cwd, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn {self.target} exited:\n{self.log_tail()}")
            try:
                # Any HTTP answer means a worker is serving; the warm-up covers the others.
                httpx.get(self.base + "/healthz", timeout=1.0)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"uvicorn {self.target} did not answer within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc)
            self.proc = None
