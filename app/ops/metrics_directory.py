"""The node's metrics directory: where the uvicorn workers of one node keep their samples.

Each worker is its own process with its own counters, and a scrape reaches whichever worker
accepts the connection. So workers run prometheus_client's multiprocess mode: each writes its
samples to files in one directory per node, and the worker answering a scrape reads them all, so
any worker answers with the node's totals (counters of a worker that exited stay counted until
the node stops). The directory must be known before prometheus_client is first imported (it
picks its storage at import), which is why that import happens in ``app.ops.metrics.setup`` (and
the functions it calls) and nowhere at module level. Where the directory comes from:

- ``PROMETHEUS_MULTIPROC_DIR`` set: used as it is (``feedback-tokens serve --workers N`` sets it
  to a directory of its own, made fresh at start-up and removed at exit: ``serving_directory``;
  an operator may set it too, and then owns it).
- otherwise, in a process started by a supervisor (``uvicorn --workers N``, ``--reload``, and
  granian's workers, even one): the workers derive one directory from the supervisor's pid and
  start time (``node_directory``), so it is fresh for each supervisor run. The last worker to
  exit removes it (``leave``), and a start-up removes those of supervisors that are gone
  (killed ones leave theirs behind).
- otherwise (one process: ``uvicorn app.main:app``, ``make run``, tests): no directory, plain
  in-process metrics, plus prometheus_client's process and GC metrics.

``choose`` picks (and prepares) this process's directory; ``already_chosen`` follows the choice
when prometheus_client was imported first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator

log = logging.getLogger("feedback_tokens.metrics")

DIR_PREFIX = "feedback-tokens-metrics-"
_MARKER = "worker-"
_owned: str | None = None  # the node directory this worker joined, which the last one out removes


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux), None if there is no such
    process. With the pid it names one process run: a recycled pid has another start time."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def node_directory(supervisor: int) -> str:
    """The metrics directory of the node run by process ``supervisor``: its pid and start time
    in the name, so each run of a supervisor gets a fresh one."""
    return os.path.join(
        tempfile.gettempdir(), f"{DIR_PREFIX}{os.getuid()}-{supervisor}-{_start_time(supervisor) or 0}"
    )


def remove_stale_directories() -> None:
    """Remove our user's node directories whose supervisor no longer runs (a killed node)."""
    base = tempfile.gettempdir()
    mine = f"{DIR_PREFIX}{os.getuid()}-"
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            if not name.startswith(mine):
                continue
            try:
                pid, started = name[len(mine) :].split("-")
                gone = _start_time(int(pid)) != started
            except ValueError:
                continue
            if gone:
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def _private_directory(path: str) -> bool:
    """Create ``path`` for this user alone, or accept it if it already is: a directory in /tmp
    with a guessable name could have been made by someone else to read or skew our counts."""
    try:
        os.mkdir(path, 0o700)
        return True
    except FileExistsError:
        pass
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


@contextlib.contextmanager
def serving_directory(workers: int, enabled: bool = True) -> Iterator[str | None]:
    """For ``feedback-tokens serve``: a fresh metrics directory for its ``workers`` (when more
    than one and none is set), exported as ``PROMETHEUS_MULTIPROC_DIR``, removed at exit."""
    if not enabled or workers < 2 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        return
    remove_stale_directories()
    path = node_directory(os.getpid())
    shutil.rmtree(path, ignore_errors=True)
    if not _private_directory(path):
        raise RuntimeError(f"{path} exists and is not a private directory of ours")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield path
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(path, ignore_errors=True)


def _leave(path: str) -> None:
    """At a worker's exit: the last live worker of the node removes the directory. Each removes
    its own marker before looking at the others', so of workers exiting together at least one
    sees none left."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(path, f"{_MARKER}{os.getpid()}"))
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(_MARKER) and name[len(_MARKER) :].isdigit() and _alive(int(name[len(_MARKER) :])):
            return
    shutil.rmtree(path, ignore_errors=True)


def choose() -> str | None:
    """The multiprocess directory for this process, prepared; None for in-process metrics."""
    global _owned
    import multiprocessing

    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, mode=0o700, exist_ok=True)
        return given
    if multiprocessing.parent_process() is None:
        return None
    supervisor = os.getppid()
    remove_stale_directories()
    path = node_directory(supervisor)
    if not _private_directory(path):
        log.error("metrics directory %s is not a private directory of ours: each worker counts alone", path)
        return None
    with open(os.path.join(path, f"{_MARKER}{os.getpid()}"), "w"):
        pass
    _owned = path
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def leave() -> None:
    """This worker leaves the node directory it joined (if it did), the last one out removing it."""
    if _owned is not None:
        _leave(_owned)


def already_chosen() -> str | None:
    """prometheus_client was imported before us: its storage is chosen; follow it."""
    from prometheus_client import values

    if getattr(values.ValueClass, "_multiprocess", False):
        return os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") or _is_worker():
        log.error("prometheus_client was imported before the metrics directory was set: each worker counts alone")
    return None


def _is_worker() -> bool:
    import multiprocessing

    return multiprocessing.parent_process() is not None
