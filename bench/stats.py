"""Spreads over rounds, paired ratios, and the rule that decides which figures are printed.

A figure is the median of several rounds. It is *stable* when every round lies within
``TOLERANCE`` (±30 %) of that median: then a second run on the same machine can be expected to
land within the same band. An unstable figure is shown as its range, marked, never as a result.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

TOLERANCE = 0.30


def fmt(x: float | None, digits: int = 0) -> str:
    """A number with thousands separators, or ``n/a``."""
    if x is None or math.isnan(x):
        return "n/a"
    return f"{x:,.{digits}f}"


@dataclass(frozen=True)
class Spread:
    """The values of one figure over the rounds of a run."""

    values: tuple[float, ...]
    floor: float = 0.0  # differences up to this much are agreement whatever the median (figures near 0)

    @classmethod
    def of(cls, values: Iterable[float | None], floor: float = 0.0) -> Spread:
        return cls(tuple(v for v in values if v is not None and not math.isnan(v)), floor)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    @property
    def lo(self) -> float:
        return min(self.values) if self.values else math.nan

    @property
    def hi(self) -> float:
        return max(self.values) if self.values else math.nan

    @property
    def stable(self) -> bool | None:
        """None with fewer than two rounds: nothing to compare."""
        if len(self.values) < 2:
            return None
        m = self.median
        return all(abs(v - m) <= max(TOLERANCE * abs(m), self.floor) for v in self.values)

    def cell(self, digits: int = 0, unit: str = "") -> str:
        """``median (min-max)``; ``unstable: min-max`` when the rounds disagree by more than the
        tolerance; ``n/a`` without values."""
        if not self.values:
            return "n/a"
        rng = f"{fmt(self.lo, digits)}-{fmt(self.hi, digits)}{unit}"
        if self.stable is False:
            return f"unstable: {rng}"
        if len(self.values) == 1:
            return f"{fmt(self.median, digits)}{unit} (1 round)"
        return f"{fmt(self.median, digits)}{unit} ({rng})"


def paired(numerators: Iterable[float | None], denominators: Iterable[float | None]) -> Spread:
    """Per-round ratios of two figures measured side by side; rounds missing either are skipped."""
    out = []
    for a, b in zip(numerators, denominators, strict=True):
        if a is not None and b and not math.isnan(a) and not math.isnan(b):
            out.append(a / b)
    return Spread(tuple(out))
