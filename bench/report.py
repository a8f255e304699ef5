"""The run's report: a header (date, machine, software, command, other activity), each
measurement's section, the goals checked against this run, the commands, and notes."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path

from bench.config import RESULTS, ROOT, Config
from bench.cpu import CORES, NOISY, Usage
from bench.registry import Section
from bench.table import Table

__all__ = ["RESULTS", "goals_table", "machine", "render"]


def machine() -> dict[str, str]:
    info = {"cores": str(os.cpu_count()), "platform": platform.platform(), "python": platform.python_version()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    for name, cmd in (("wrk", ["wrk", "--version"]), ("redis", ["redis-server", "--version"])):
        with contextlib.suppress(Exception):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            info[name] = (out.stdout or out.stderr).splitlines()[0].strip()
    with contextlib.suppress(Exception):
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "app", "bench", "procs", ":!*.md"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["commit"] = rev + (" (with uncommitted changes to the code)" if dirty else "")
    return info


def goals_table(sections: list[Section]) -> Table:
    table = Table(["goal", "this run"])
    for s in sections:
        for g in s.goals:
            table.add(g.text, g.mark)
    return table


def render(cfg: Config, sections: list[Section], failed: list[str], whole: Usage, before: Usage,
           commands: dict[str, str], notes: list[str]) -> str:
    m = machine()
    command = ("python bench/run.py " + " ".join(cfg.argv)).strip()
    busy = whole.other_share > NOISY
    lines = [
        "# Benchmark results",
        "",
        "Written by `bench/run.py` (`make bench`); see `bench/README.md` for what each figure means.",
        "",
        f"- date: {cfg.started.strftime('%Y-%m-%d %H:%M UTC')}; the run took {whole.seconds:.0f} s"
        + (" (`--quick`: a smoke run, not for comparison)" if cfg.quick else ""),
        f"- command: `{command}`",
        f"- machine: {m.get('cores')} cores, {m.get('cpu', '?')}, {m.get('platform')}",
        f"- software: Python {m.get('python')}, {m.get('wrk', 'wrk ?')}, {m.get('redis', 'redis ?')}",
        f"- code: commit {m.get('commit', '?')}",
        f"- other activity: processes other than the bench's used {whole.other:.2f} of the machine's {CORES} cores "
        f"on average during the run ({before.other:.2f} in the second before it), hypervisor steal "
        f"{whole.steal:.2f}" + (" -- **the machine was shared: figures are noisier than on an idle one**"
                                if busy else ""),
        "",
    ]
    if failed:
        lines += ["**Failed measurements**: " + "; ".join(failed), ""]
    for s in sections:
        lines += s.markdown()
    lines += ["## Goals", "", *goals_table(sections).markdown(), ""]
    lines += ["## Commands", "", "```", command,
              *commands.values(), "```", ""]
    lines += [
        "## Notes",
        "",
        f"- Everything runs on this machine: wrk, Redis, the driver and the servers share its {CORES} cores; "
        "the CPU table shows how much each took. Figures compare runs on the same machine; they are not "
        "absolute capacity.",
        "- \"others\": CPU used by processes that are not the bench's (busy time in /proc/stat minus ours). On a "
        "shared machine it competes with the server and wrk, which is why rounds disagree.",
        *(f"- {n}" for n in notes),
        "",
    ]
    return "\n".join(lines)
