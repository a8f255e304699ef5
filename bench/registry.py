"""The measurements ``make bench`` runs, in order, and what each hands back (a report section).

A measurement is a function of the running bench (``bench.harness.Bench``: its Redis, keyrings,
servers, load generators) that returns a ``Section``. Registering one is all it takes to be run
and reported::

    from bench.registry import Section, measurement

    @measurement("delivery", "Delivery throughput", quick=True)
    def delivery(bench: Bench) -> Section:
        section = Section("Delivery throughput")
        ...
        return section.table(Table(["target", "entries/s"], "lr").add("jsonl", fmt(rate)))

Modules outside the core set (``PLUGINS``) are imported when the file exists, so a new script
such as ``bench/delivery.py`` joins ``make bench`` by registering itself, and runs alone with
``bench.harness.standalone("delivery")``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.table import Table

if TYPE_CHECKING:
    from bench.harness import Bench

CORE = ("bench.urls", "bench.memory", "bench.issuance", "bench.throughput")
PLUGINS = ("bench.delivery", "bench.ops_cost", "bench.servers")


@dataclass
class Goal:
    text: str
    ok: bool | None  # None: not measured, or the figure was unstable

    @property
    def mark(self) -> str:
        return "n/a" if self.ok is None else ("met" if self.ok else "NOT met")


@dataclass
class Section:
    """Paragraphs, tables and notes in order, plus goals checked against this run."""

    title: str
    blocks: list[str | Table] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # raw figures, for the summary and for tests

    def para(self, text: str) -> Section:
        self.blocks.append(text)
        return self

    def table(self, table: Table) -> Section:
        self.blocks.append(table)
        return self

    def goal(self, text: str, ok: bool | None) -> Section:
        self.goals.append(Goal(text, ok))
        return self

    def note(self, text: str) -> Section:
        self.notes.append(text)
        return self

    def markdown(self) -> list[str]:
        out = [f"## {self.title}", ""]
        for block in self.blocks:
            out += (block.markdown() if isinstance(block, Table) else [block]) + [""]
        out += [f"- {n}" for n in self.notes] + ([""] if self.notes else [])
        return out

    def text(self) -> list[str]:
        out = [f"== {self.title}"]
        for block in self.blocks:
            if isinstance(block, Table):
                out += block.text()
        return out


@dataclass(frozen=True)
class Measurement:
    name: str
    title: str
    run: Callable[[Bench], Section]
    quick: bool  # part of --quick runs too


MEASUREMENTS: dict[str, Measurement] = {}


Run = Callable[["Bench"], Section]


def measurement(name: str, title: str, quick: bool = True) -> Callable[[Run], Run]:
    """Register ``fn`` as measurement ``name``; ``quick``: part of ``--quick`` runs too."""

    def register(fn: Run) -> Run:
        known = MEASUREMENTS.get(name)
        # The same function again is fine: a script run as __main__ and then imported as bench.x.
        if known is not None and known.run.__qualname__ != fn.__qualname__:
            raise ValueError(f"measurement {name!r} is registered twice")
        MEASUREMENTS[name] = Measurement(name, title, fn, quick)
        return fn

    return register


def load() -> dict[str, Measurement]:
    """Import the core measurements and every plugin module that exists; each must register."""
    for module in CORE + PLUGINS:
        if module in PLUGINS and importlib.util.find_spec(module) is None:
            continue
        mod = importlib.import_module(module)
        if not any(m.run.__module__ in (mod.__name__, "__main__") for m in MEASUREMENTS.values()):
            raise RuntimeError(f"{module} registers no measurement (decorate a function with @measurement)")
    return MEASUREMENTS
