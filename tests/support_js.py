"""The JavaScript side of the suite: node scripts against a live server, with the npm packages
pinned in ``tests/js/package.json`` (the official LangSmith JS SDK).

``node_modules`` is installed on first use (``npm ci`` from the committed lock file) and again
whenever the lock file changes, so ``make test`` on a fresh machine needs no step of its own.
Pull the fixture in with ``pytest_plugins = ["support_js"]``; ``node(script, env)`` runs an ES
module with ``tests/js`` as its working directory (so ``import ... from "langsmith"`` resolves).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

JS = Path(__file__).resolve().parent / "js"
LOCK = JS / "package-lock.json"
# npm writes its own copy of the lock file here after an install.
INSTALLED = JS / "node_modules" / ".package-lock.json"


@dataclass(frozen=True)
class NodeRun:
    returncode: int
    stdout: str
    stderr: str


def ensure_node_modules() -> None:
    # Under pytest-xdist several workers get here at once: one installs, the others wait for it.
    with open(JS / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _install_if_missing()


def _install_if_missing() -> None:
    if INSTALLED.exists() and INSTALLED.stat().st_mtime >= LOCK.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("Node.js and npm are needed for the JS SDK tests (make test installs them: see system-packages)")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=JS, capture_output=True, text=True, timeout=600, check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"npm ci in {JS} failed:\n{done.stdout}{done.stderr}")


def run_node(script: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> NodeRun:
    """Run ``script`` (an ES module) under node, in ``env`` (default: this process's environment)."""
    done = subprocess.run(
        ["node", "--input-type=module", "-"],
        input=script, cwd=JS, capture_output=True, text=True, timeout=timeout, check=False,
        env=dict(os.environ if env is None else env),
    )
    return NodeRun(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="session")
def node() -> Callable[..., NodeRun]:
    ensure_node_modules()
    return run_node
