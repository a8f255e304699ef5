"""Load generators: wrk (closed loop, Lua scripts in bench/), the open-loop driver
(bench/openloop.py), and httpx clients that issue and submit tokens for the measurements.

Every wrk run is one process started and reaped inside a CPU window (bench/cpu.py), so its own
CPU time is known exactly and the report can say how much of the machine the load generator took.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.config import BENCH, ROOT
from bench.cpu import Sample, Usage, usage
from procs import ProcessGroups

TOKENS = "/api/v1/feedback/tokens"
SUBMIT_BODY = {"score": 1}
COUNT_DUPLICATES = """
function response(status, headers, body)
   if status >= 200 and status < 300 and body and
      (string.find(body, '"duplicate":true', 1, true) or string.find(body, '"duplicate": true', 1, true)) then
      duplicates = duplicates + 1
   end
end
"""


def token_request(run_id: uuid.UUID | None = None, with_id: bool = False) -> dict[str, Any]:
    """A typical token: UUID run id, key user_score, continuous 0..1; ``with_id``: the SDK's own
    feedback id too (``id`` in the request, carried in the token as ``fid``)."""
    body: dict[str, Any] = {
        "run_id": str(run_id or uuid.uuid4()),
        "feedback_key": "user_score",
        "feedback_config": {"type": "continuous", "min": 0, "max": 1},
    }
    if with_id:
        body["id"] = str(uuid.uuid4())
    return body


def bodies(n: int, batch: int = 100, per_run: int = 1, with_id: bool = False) -> list[bytes]:
    """Issuance request bodies for ``n`` tokens: arrays of ``batch`` (an object when 1), every
    ``per_run`` consecutive tokens sharing a run id."""
    items = []
    run = uuid.uuid4()
    for i in range(n):
        if i % per_run == 0:
            run = uuid.uuid4()
        items.append(token_request(run, with_id))
    return [json.dumps(items[s: s + batch] if batch > 1 else items[s]).encode() for s in range(0, n, batch)]


async def _post_all(base: str, requests: list[tuple[str, bytes]], headers: dict[str, str],
                    concurrency: int) -> list[httpx.Response]:
    out: list[httpx.Response | None] = [None] * len(requests)
    queue = list(range(len(requests)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def worker() -> None:
            while queue:
                i = queue.pop()
                path, body = requests[i]
                out[i] = await client.post(path, content=body, headers=headers)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [r for r in out if r is not None]


def issue(base: str, api_key: str, payloads: list[bytes], concurrency: int = 8) -> list[dict[str, Any]]:
    """POST each body to the issuance endpoint; the answers' tokens in order. Any non-200 fails."""
    headers = {"X-API-Key": api_key, "Content-Type": "application/json"}
    answers: list[dict[str, Any]] = []
    for r in asyncio.run(_post_all(base, [(TOKENS, b) for b in payloads], headers, concurrency)):
        if r.status_code != 200:
            raise RuntimeError(f"issuance answered {r.status_code}: {r.text[:300]}")
        got = r.json()
        answers.extend(got if isinstance(got, list) else [got])
    return answers


def submit_all(base: str, paths: list[str], concurrency: int = 16) -> dict[int, int]:
    """Submit ``{"score": 1}`` once on each path; the count of each status. Plain HTTP/1.1 over
    keep-alive connections (one request in flight on each): several times lighter than an
    httpx client, whose own CPU would otherwise set the pace on a small machine."""
    host, port = urlsplit(base).hostname or "127.0.0.1", urlsplit(base).port or 80
    body = json.dumps(SUBMIT_BODY).encode()
    queue = list(reversed(paths))
    counts: dict[int, int] = {}

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while queue:
                path = queue.pop()
                writer.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode("ascii") + body)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = re.search(rb"\r\ncontent-length: *(\d+)", head.lower())
                if length is None:
                    raise RuntimeError(f"answer without Content-Length: {head[:200]!r}")
                await reader.readexactly(int(length.group(1)))
                counts[status] = counts.get(status, 0) + 1
        finally:
            writer.close()

    async def run() -> None:
        await asyncio.gather(*(connection() for _ in range(concurrency)))

    asyncio.run(run())
    return counts


@dataclass
class WrkRun:
    """One wrk invocation: its exact figures (from the script's ``done``), CPU used meanwhile."""

    raw: dict[str, Any]
    cpu: Usage
    problems: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return float(self.raw["requests"]) / (float(self.raw["duration_us"]) / 1e6)

    @property
    def p50_ms(self) -> float:
        return float(self.raw["p50_us"]) / 1000

    @property
    def p99_ms(self) -> float:
        return float(self.raw["p99_us"]) / 1000

    @property
    def max_ms(self) -> float:
        return float(self.raw["max_us"]) / 1000

    @property
    def accepted(self) -> int:
        return int(self.raw["requests"]) - int(self.raw["non2xx"])

    def check(self, warmup: bool = False) -> WrkRun:
        """Note what makes the run unusable: error answers, socket errors, a token used twice,
        a thread out of tokens. A warm-up that ran out is only shorter (its stop request is a 404)."""
        raw = self.raw
        non2xx = raw["non2xx"] - (raw.get("exhausted", 0) if warmup else 0)
        where = "warm-up: " if warmup else ""
        if non2xx > 0:
            self.problems.append(f"{where}{non2xx} non-2xx answers")
        errors = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
        if errors:
            self.problems.append(f"{where}{errors} socket errors/timeouts")
        if raw.get("exhausted") and not warmup:
            self.problems.append("ran out of fresh tokens (a wrk thread stopped early)")
        if raw.get("duplicates"):
            self.problems.append(f"{where}{raw['duplicates']} answers said duplicate: a token was used twice")
        return self


class LoadGenerators:
    """Runs wrk and the open-loop driver as registered processes, inside CPU windows.

    ``roles()`` names the bench's process groups at the moment of the call (server, redis...),
    ``before_window`` may wait for the machine to calm down (``--wait-idle``)."""

    def __init__(self, procs: ProcessGroups, tmp: Path, roles: Callable[[], dict[int, str]],
                 before_window: Callable[[], None] | None = None) -> None:
        self.procs = procs
        self.tmp = tmp
        self.roles = roles
        self.before_window = before_window
        self.files = 0

    def paths_file(self, paths: list[str], name: str) -> Path:
        self.files += 1
        path = self.tmp / f"{self.files:03d}-{name}.txt"
        path.write_text("\n".join(paths) + "\n")
        return path

    def wrk(self, url: str, script: Path, args: list[str], duration: int, threads: int, connections: int) -> WrkRun:
        cmd = [
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s",
            "-s", str(script), url, "--", *args,
        ]
        if self.before_window is not None:
            self.before_window()
        roles = self.roles()
        a = Sample.take(roles)
        proc = self.procs.popen(cmd, "wrk", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=duration + 60)
        finally:
            self.procs.stop(proc)
        cpu = usage(a, Sample.take(roles), roles, children_role="wrk")
        text = out.decode(errors="replace")
        m = re.search(r"^BENCH_RESULT (\{.*\})$", text, re.M)
        if proc.returncode != 0 or m is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}\n{err.decode(errors='replace')}")
        return WrkRun(json.loads(m.group(1)), cpu)

    def paths(self, base: str, paths_file: Path, mode: str, duration: int, threads: int, connections: int) -> WrkRun:
        """``bench/paths.lua``: POST to each path once (``once``, fresh tokens; answers saying
        duplicate are counted) or round and round (``cycle``)."""
        script = BENCH / "paths.lua"
        if mode == "once":
            script = self.tmp / "paths-submit.lua"
            if not script.exists():
                script.write_text((BENCH / "paths.lua").read_text() + COUNT_DUPLICATES)
        return self.wrk(base, script, [str(paths_file), str(threads), mode], duration, threads, connections)

    def openloop(self, port: int, paths_file: Path, rate: float, duration: int, warmup: int,
                 connections: int) -> dict[str, Any]:
        cmd = [
            sys.executable, "-m", "bench.openloop", "--port", str(port), "--paths", str(paths_file),
            "--rate", f"{rate:.0f}", "--duration", str(duration), "--warmup", str(warmup),
            "--connections", str(connections),
        ]
        proc = self.procs.popen(cmd, "open-loop driver", cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=duration + warmup + 90)
        finally:
            self.procs.stop(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"open-loop driver failed:\n{err.decode(errors='replace')}")
        return json.loads(out)  # type: ignore[no-any-return]


def openloop_problems(res: dict[str, Any]) -> list[str]:
    problems = []
    for key, what in (("non2xx", "non-2xx"), ("lost", "lost"), ("duplicates", "answers said duplicate")):
        if res.get(key):
            problems.append(f"{res[key]} {what}")
    if res.get("error"):
        problems.append(str(res["error"]))
    if res.get("paths_exhausted"):
        problems.append("ran out of fresh tokens")
    return problems
