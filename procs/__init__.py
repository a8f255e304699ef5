"""Processes the test suite and the benchmark start, one launcher of each kind for both:
private Redis servers (single, or a local cluster), the app under uvicorn, and the registry of
process groups that stops everything they started.

Not part of the installed package: it lives beside ``app/`` for ``tests/`` and ``bench/``.
"""

from procs.group import ProcessGroups, free_port, group_alive
from procs.redis_server import LocalCluster, RedisMissing, RedisServer
from procs.uvicorn_server import ROOT, LiveServer, Uvicorn

__all__ = [
    "ROOT",
    "LiveServer",
    "LocalCluster",
    "ProcessGroups",
    "RedisMissing",
    "RedisServer",
    "Uvicorn",
    "free_port",
    "group_alive",
]
