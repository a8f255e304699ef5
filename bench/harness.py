"""The benchmark's orchestration. Entry point: ``python bench/run.py`` (``make bench``).

One run:

1. Starts a private redis-server (free port, no persistence, ``noeviction``) and temporary
   keyrings (``python -m app.cli keys init --alg ES256`` and ``--alg HS256``); a local 3-primary
   Redis Cluster when a measurement asks for one.
2. Runs the registered measurements in order (bench/registry.py): token URL length, Redis memory
   per token, issuance, then the paired throughput and latency rounds with Redis CPU per
   submission; then any plugin (bench/delivery.py, bench/ops_cost.py when they exist). Each one
   starts the servers it needs through ``Bench.serve`` and hands back a report section.
3. Writes the report (bench/report.py) to bench/runs/<UTC time>.md, and to bench/RESULTS.md only
   with ``--update-results``. Everything it started is stopped on exit, on error and on Ctrl-C
   or SIGTERM, and checked to be gone.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import registry
from bench.config import ROOT, Config, parse_args
from bench.console import log
from bench.cpu import NOISY, Sample, Usage, usage
from bench.load import LoadGenerators, bodies, issue
from bench.registry import Section
from procs import Granian, LocalCluster, ProcessGroups, RedisServer, Uvicorn, free_port

APPS = {"bare": "bench.apps:bare_app", "verify": "bench.apps:verify_app", "submit": "app.main:app"}
SERVER_FLAGS = ("--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning")
# granian: the settings of feedback-tokens serve --server granian (app/serving.py), no access log.
GRANIAN_FLAGS = ("--interface", "asgi", "--loop", "uvloop", "--http", "1", "--no-ws", "--no-access-log",
                 "--log-level", "warning")
LAUNCHERS: dict[str, tuple[type[Uvicorn], tuple[str, ...]]] = {
    "uvicorn": (Uvicorn, SERVER_FLAGS), "granian": (Granian, GRANIAN_FLAGS),
}
ALGS = ("ES256", "HS256")

class Bench:
    """What every measurement works with: the private Redis (and cluster), the keyrings, servers
    started on demand, the load generators and the CPU accounting."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.procs = ProcessGroups()
        self.tmp = Path(tempfile.mkdtemp(prefix="fbt-bench-"))
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.redis = RedisServer("--maxmemory-policy", "noeviction", groups=self.procs, workdir=self.tmp / "redis")
        self._cluster: LocalCluster | None = None
        self.keyrings: dict[str, Path] = {}
        self.api_key = "bench-" + secrets.token_urlsafe(18)
        self.dead_port = free_port()  # nothing listens here: the verify-only app's REDIS_URL
        self.load = LoadGenerators(self.procs, self.tmp, self.roles, self.wait_idle if cfg.wait_idle > 0 else None)
        self.commands: dict[str, str] = {}
        self.notes: list[str] = []
        self.served = 0

    # -- what runs ----------------------------------------------------------------------------

    def setup(self) -> None:
        self.redis.start()
        self.commands["redis"] = ("redis-server --port PORT --bind 127.0.0.1 --save '' --appendonly no "
                                  "--maxmemory-policy noeviction")
        for alg in ALGS:
            self.keyring(alg)

    def keyring(self, alg: str) -> Path:
        """A keyring whose active key has this algorithm (made once, by the CLI users run)."""
        if alg not in self.keyrings:
            path = self.tmp / f"keys-{alg}"
            cmd = [sys.executable, "-m", "app.cli", "keys", "--dir", str(path), "init", "--alg", alg]
            out = subprocess.run(cmd, cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise RuntimeError(f"keys init --alg {alg} failed:\n{out.stdout}{out.stderr}")
            self.keyrings[alg] = path
            self.commands[f"keys {alg}"] = f"python -m app.cli keys --dir KEYS_DIR init --alg {alg}"
        return self.keyrings[alg]

    def cluster(self) -> LocalCluster:
        """A local Redis Cluster of 3 primaries (no replicas), started on first use."""
        if self._cluster is None:
            log("  starting a local Redis Cluster (3 primaries)")
            self._cluster = LocalCluster(3, 0, "--maxmemory-policy", "noeviction", groups=self.procs,
                                         workdir=self.tmp / "cluster").start()
            self.commands["cluster"] = (
                "redis-server --port PORT --cluster-enabled yes --cluster-port BUS_PORT ... (x3); "
                "redis-cli --cluster create 127.0.0.1:PORT1 ... --cluster-replicas 0 --cluster-yes"
            )
        return self._cluster

    def redis_url(self, where: str) -> str:
        if where == "cluster":
            return self.cluster().url
        if where == "dead":
            return f"redis://127.0.0.1:{self.dead_port}/0"
        return self.redis.url

    def env(self, redis: str = "single", alg: str = "ES256") -> dict[str, str]:
        """The environment of a served app: none of the caller's FEEDBACK_* or REDIS_URL."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDBACK_") and k != "REDIS_URL"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["REDIS_URL"] = self.redis_url(redis)
        if alg in self.keyrings:
            env["FEEDBACK_KEYS_DIR"] = str(self.keyrings[alg])
        env["FEEDBACK_API_KEYS"] = self.api_key
        env["FEEDBACK_PUBLIC_URL"] = self.cfg.public_url
        return env

    @contextlib.contextmanager
    def serve(self, app: str, workers: int = 1, redis: str = "single", alg: str = "ES256",
              extra_env: dict[str, str] | None = None, server_kind: str = "uvicorn") -> Iterator[Uvicorn]:
        """``app`` (bare, verify or submit) under uvicorn (or granian) on a free port until the block ends."""
        self.served += 1
        launcher, flags = LAUNCHERS[server_kind]
        server = launcher(
            APPS[app], {**self.env(redis, alg), **(extra_env or {})}, workers=workers, flags=flags,
            groups=self.procs, log=self.logs / f"{self.served:03d}-{app}-{server_kind}-{workers}.log",
            healthy_status=None,
        )
        self.commands[f"serve {app}" + ("" if server_kind == "uvicorn" else f" ({server_kind})")] = server.command()
        server.start()
        try:
            yield server
        finally:
            server.stop()

    def issue(self, server: Uvicorn, n: int, batch: int = 100, per_run: int = 1,
              with_id: bool = False) -> list[dict[str, Any]]:
        """Issue ``n`` typical tokens through the server's API; the answers, in order."""
        return issue(server.url, self.api_key, bodies(n, batch, per_run, with_id))

    # -- CPU accounting --------------------------------------------------------------------------

    def roles(self) -> dict[int, str]:
        """Our live process groups by role: server, redis, wrk, or what they are."""
        out = {}
        for pgid, what in self.procs.groups.items():
            out[pgid] = ("server" if what.startswith(("uvicorn", "granian")) else
                         "redis" if what.startswith("redis") else what)
        return out

    @contextlib.contextmanager
    def window(self) -> Iterator[list[Usage]]:
        """CPU use by role over the block: ``with bench.window() as cpu: ...; cpu[0]``."""
        roles = self.roles()
        a = Sample.take(roles)
        out: list[Usage] = []
        yield out
        out.append(usage(a, Sample.take(roles), roles, children_role="children"))

    def wait_idle(self) -> None:
        """Wait (up to --wait-idle seconds) for a half second in which others leave the machine idle."""
        deadline = time.monotonic() + self.cfg.wait_idle
        while time.monotonic() < deadline:
            with self.window() as cpu:
                time.sleep(0.5)
            if not cpu[0].noisy:
                return

    # -- the run --------------------------------------------------------------------------------------

    def selected(self) -> list[registry.Measurement]:
        found = registry.load()
        unknown = [n for n in self.cfg.only + self.cfg.skip if n not in found]
        if unknown:
            raise SystemExit(f"bench: unknown measurement(s) {', '.join(unknown)}; known: {', '.join(found)}")
        chosen = [m for m in found.values() if (not self.cfg.only or m.name in self.cfg.only)
                  and m.name not in self.cfg.skip and (m.quick or not self.cfg.quick or m.name in self.cfg.only)]
        return chosen

    def run(self) -> tuple[list[Section], list[str]]:
        """Every selected measurement; a failed one is reported and the others still run."""
        sections, failed = [], []
        self.setup()
        for m in self.selected():
            log(f"\n== {m.title} ({m.name})")
            try:
                section = m.run(self)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as err:
                traceback.print_exc()
                failed.append(f"{m.name}: {type(err).__name__}: {err}")
                section = Section(m.title).para(f"**FAILED**: `{type(err).__name__}: {err}`")
            sections.append(section)
            for line in section.text():
                log(line)
        return sections, failed

    def close(self, keep_logs: bool = False) -> list[str]:
        """Stop everything; remove the temp dir. Server logs are kept, in a directory of their
        own, when asked (after a failure)."""
        self.procs.stop_all()
        left = self.procs.leftovers()
        if keep_logs:
            kept = Path(tempfile.mkdtemp(prefix="fbt-bench-logs-"))
            for f in self.logs.iterdir():
                shutil.copy2(f, kept / f.name)
            for redis_log in self.tmp.glob("**/redis.log"):
                shutil.copy2(redis_log, kept / f"{redis_log.parent.name}-redis.log")
            self.logs = kept
        if not left:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return left


def _raise_exit(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    from bench import report

    cfg, list_only = parse_args(argv)
    if list_only:
        for m in registry.load().values():
            print(f"{m.name:<12} {m.title}" + ("" if m.quick else "  (not in --quick)"))
        return 0
    missing = [tool for tool in ("wrk", "redis-server", "redis-cli") if shutil.which(tool) is None]
    if missing:
        print(f"bench: {' and '.join(missing)} not found on PATH. Install with: "
              f"sudo apt-get install -y {' '.join(sorted({'wrk' if t == 'wrk' else 'redis-server' for t in missing}))}",
              file=sys.stderr)
        return 2
    # Explicitly, also for SIGINT: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    bench = Bench(cfg)
    status, sections, failed = 0, None, list[str]()
    with bench.window() as whole:
        with bench.window() as before:
            time.sleep(1.0)
        if before[0].noisy:
            log(f"bench: the machine is not idle: other processes use {before[0].other_share:.0%} of its CPU; "
                f"the figures will be noisy (above {NOISY:.0%} a round is marked)")
        log(f"bench: {os.cpu_count()} cores, workers {cfg.workers}, {cfg.rounds} paired round(s) with 1 worker, "
            f"{cfg.duration} s per run after {cfg.warmup} s of warm-up")
        try:
            sections, failed = bench.run()
        except KeyboardInterrupt:
            print("\nbench: interrupted; stopping everything it started", file=sys.stderr)
            status = 130
        except Exception as err:
            traceback.print_exc()
            print(f"\nbench: failed: {err}", file=sys.stderr)
            status = 1
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
            left = bench.close(keep_logs=status == 1 or bool(failed))
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if status == 1 or failed:
        print(f"bench: server logs kept in {bench.logs}", file=sys.stderr)
    if left:
        print("bench: STILL RUNNING after cleanup: " + ", ".join(left), file=sys.stderr)
        status = status or 1
    else:
        print("bench: stopped everything it started (redis-server, uvicorn, wrk): nothing left running")
    if sections is not None:
        text = report.render(cfg, sections, failed, whole[0], before[0], bench.commands, bench.notes)
        for path in [cfg.run_file] + ([report.RESULTS] if cfg.update_results else []):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            log(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        for line in report.goals_table(sections).text():
            log(line)
        if failed:
            print("bench: failed: " + "; ".join(failed), file=sys.stderr)
            status = status or 1
        invalid = sum(len(s.data.get("invalid", [])) for s in sections)
        if invalid:
            print(f"bench: {invalid} run(s) invalid (see the report); their figures are not used", file=sys.stderr)
            status = status or 1
    return status


def standalone(name: str, argv: list[str] | None = None) -> int:
    """Run one measurement on its own with the bench's setup (for ``python bench/<name>.py``)."""
    return main(["--only", name, *(sys.argv[1:] if argv is None else argv)])
