"""What Redis itself reports: CPU time and script statistics over a window, memory, and the
feedback streams' length, on one server or summed over the primaries of a cluster."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

STREAMS = "{fbt*}:feedback"  # every shard's stream under the default prefix (app/store/keyspace.py)


def cpu_seconds(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def stream_keys(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(match=STREAMS, _type="stream", count=1000))


def stream_entries(clients: list[redis.Redis]) -> int:
    """Entries in every feedback stream (on a cluster, each node counts the streams it holds)."""
    return sum(int(c.xlen(k)) for c in clients for k in stream_keys(c))


def used_memory(client: redis.Redis, settle: float = 0.2) -> int:
    time.sleep(settle)  # lazy frees and client buffers settle
    return int(client.info("memory")["used_memory"])


def memory_usage(client: redis.Redis, key: str | bytes) -> int:
    """Exact bytes of one key (``MEMORY USAGE key SAMPLES 0``)."""
    return int(client.memory_usage(key, samples=0) or 0)


@dataclass(frozen=True)
class RedisCost:
    """Redis's own figures over one window: CPU seconds (``INFO cpu``, user + sys) and the
    script calls (``INFO commandstats``, EVALSHA: calls and microseconds, commands run inside a
    script included)."""

    cpu: float
    script_calls: int
    script_usec: int

    def cpu_us_per(self, n: int) -> float | None:
        return self.cpu / n * 1e6 if n > 0 else None

    @property
    def script_us_per_call(self) -> float | None:
        return self.script_usec / self.script_calls if self.script_calls else None


class RedisMeter:
    """``start`` resets the statistics (CONFIG RESETSTAT) and notes the CPU time; ``stop`` reads
    both again. Nothing but the measured load may call scripts in between."""

    def __init__(self, clients: list[redis.Redis]) -> None:
        self.clients = clients
        self.cpu0 = 0.0

    def start(self) -> RedisMeter:
        for c in self.clients:
            c.config_resetstat()
        self.cpu0 = sum(cpu_seconds(c) for c in self.clients)
        return self

    def stop(self) -> RedisCost:
        cpu = sum(cpu_seconds(c) for c in self.clients) - self.cpu0
        calls = usec = 0
        for c in self.clients:
            stats: dict[str, Any] = c.info("commandstats").get("cmdstat_evalsha", {})
            calls += int(stats.get("calls", 0))
            usec += int(stats.get("usec", 0))
        return RedisCost(cpu, calls, usec)
