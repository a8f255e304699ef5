"""Processes the test suite and the benchmark start, one launcher of each kind for both:
private Redis servers (single, or a local cluster), an app under uvicorn or granian, the real app
for tests under either (``LiveServer``), and the registry of process groups that stops everything
they started.

Not part of the installed package: it lives beside ``app/`` for ``tests/`` and ``bench/``.
"""

from procs.granian_server import Granian
from procs.group import ProcessGroups, free_port, group_alive
from procs.live_server import SERVERS, LiveServer
from procs.redis_server import LocalCluster, RedisMissing, RedisServer
from procs.uvicorn_server import ROOT, Uvicorn

__all__ = [
    "ROOT",
    "SERVERS",
    "Granian",
    "LiveServer",
    "LocalCluster",
    "ProcessGroups",
    "RedisMissing",
    "RedisServer",
    "Uvicorn",
    "free_port",
    "group_alive",
]
