"""Every sh and python block of the README runs as written, in order, against the dev server.

What "as written" means here:
- The server is the README's own: its `make run` line, run by this test as `make run` with
  `PORT` (a free port) and `DEV_ROOT` (a fresh directory holding a link to the checkout's .venv),
  both documented Makefile variables. Blocks run with that directory as their working directory,
  so `.dev-api-key`, `.run/redis.sock`, `keys/` and `.venv` are where a reader's would be.
- The only change to a block's text: `127.0.0.1:8000` becomes the server's address.
- A block's `make run` line is that server (already running); its `make test` line is the command
  running this test, checked with `make -n test`.
- sh blocks run under `bash -e -o pipefail` (a failing command fails the block); python blocks
  under the project's Python, and must print nothing on stderr. Waits in the key rotation runbook
  follow FEEDBACK_MAX_TTL and FEEDBACK_LEEWAY, which the blocks get as 1 and 0 seconds.
- The server must answer no request of the blocks with an error other than the 409 and 410 that
  the README shows on purpose.

Blocks in other languages (html, plain text) are not run; the widget is tested in a browser.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from conftest import ROOT, free_port

# The blocks run in order against one server: under pytest-xdist they stay on one worker.
pytestmark = pytest.mark.xdist_group("readme")

README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
RUNNABLE = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python", "py": "python"}
MAKE_LINE = re.compile(r"^\s*make\s+(\w+)\b")
ACCESS = re.compile(r'"([A-Z]+) (\S+) HTTP/[\d.]+" (\d{3})')
SHOWN_ON_PURPOSE = {409, 410}
DEADLINE = 60


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    code: str


def blocks() -> list[Block]:
    text = README.read_text()
    found = []
    for match in BLOCK.finditer(text):
        language = RUNNABLE.get(match.group(1))
        if language:
            found.append(Block(text.count("\n", 0, match.start()) + 1, language, match.group(2)))
    return found


BLOCKS = blocks()


@dataclass
class DevServer:
    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    seen: int = 0

    def new_requests(self) -> list[tuple[str, str, int]]:
        lines = self.log.read_text().splitlines()
        fresh, self.seen = lines[self.seen :], len(lines)
        return [(m.group(1), m.group(2), int(m.group(3))) for line in fresh if (m := ACCESS.search(line))]


def _clean_env() -> dict[str, str]:
    drop = ("REDIS_URL", "MAKEFLAGS", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("FEEDBACK_", "LANGSMITH_"))}


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    targets = {m.group(1) for b in BLOCKS if b.language == "sh" for line in b.code.splitlines()
               if (m := MAKE_LINE.match(line))}
    assert "run" in targets, "the README no longer starts the server with `make run`"
    root = Path(tempfile.mkdtemp(prefix="fbt-readme-"))  # short: the unix socket path has a limit
    (root / ".venv").symlink_to(ROOT / ".venv")
    port = free_port()
    log = root / "make-run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "run", f"PORT={port}", f"DEV_ROOT={root}"],
            cwd=ROOT, env=_clean_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    dev = DevServer(root, port, proc, log)
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"make run did not become ready:\n{log.read_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        dev.new_requests()
        yield dev
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        sock = root / ".run" / "redis.sock"
        if sock.exists():
            try:
                redis.Redis(unix_socket_path=str(sock), socket_timeout=1).shutdown(nosave=True)
            except redis.RedisError:
                pass
        shutil.rmtree(root, ignore_errors=True)


def as_run_here(block: Block, server: DevServer) -> str:
    code = block.code.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
    if block.language != "sh":
        return code
    lines = []
    for line in code.splitlines():
        make = MAKE_LINE.match(line)
        if make and make.group(1) in ("run", "demo"):
            line = f"curl -sf http://127.0.0.1:{server.port}/healthz >/dev/null  # {line.strip()}: the test's server"
        elif make and make.group(1) == "test":
            line = f"make -C {ROOT} -n test >/dev/null  # {line.strip()}: this very run, checked dry"
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_the_readme_has_blocks_to_run():
    languages = {b.language for b in BLOCKS}
    assert languages == {"sh", "python"}, languages


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"line {b.line} ({b.language})")
def test_readme_block_runs_as_written(server: DevServer, block: Block):
    env = {**_clean_env(), "FEEDBACK_MAX_TTL": "1", "FEEDBACK_DEFAULT_TTL": "1", "FEEDBACK_LEEWAY": "0"}
    code = as_run_here(block, server)
    if block.language == "sh":
        argv = ["bash", "-e", "-o", "pipefail", "-c", code]
    else:
        argv = [str(ROOT / ".venv" / "bin" / "python"), "-c", code]
    done = subprocess.run(argv, cwd=server.root, env=env, capture_output=True, text=True, timeout=120, check=False)
    where = f"README.md line {block.line}"
    assert done.returncode == 0, f"{where} failed ({done.returncode}):\n{code}\n{done.stdout}\n{done.stderr}"
    if block.language == "python":
        assert done.stderr == "", f"{where} printed on stderr:\n{done.stderr}"
    errors = [r for r in server.new_requests() if r[2] >= 400 and r[2] not in SHOWN_ON_PURPOSE]
    assert errors == [], f"{where}: the server answered errors: {errors}\n{done.stdout}"
