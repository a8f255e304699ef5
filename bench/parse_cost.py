"""What parsing a submission body costs: this checkout's ``feedback.parse_json`` against the same
function at a git revision (default ``HEAD``), measured in alternating (paired) rounds in one
process, so that a busy machine slows both sides alike.

    .venv/bin/python bench/parse_cost.py [--base REV] [--rounds 15] [--number 20000]

The baseline is ``app/domain/feedback.py`` (and, when it exists at that revision,
``app/domain/shapes.py`` and ``app/schema.py``) read with ``git show`` and loaded as separate
modules; everything else it imports comes from this checkout. Prints, per body, the median
nanoseconds per parse on each side and their ratio (below 1.00: this checkout is faster), and
checks first that both sides parse each body to the same submission.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import timeit
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.domain import feedback  # noqa: E402

# What clients send: the widget and links (a score), the LangSmith SDK (all five fields, nulls
# included), a person's comment, and a body with metadata.
BODIES: dict[str, bytes] = {
    "widget": b'{"score": 1}',
    "langsmith-sdk": b'{"score": 0.8, "value": null, "correction": null, "comment": null, "metadata": null}',
    "comment": '{"score": 0, "comment": "The answer cited the wrong year; otherwise fine. Très utile."}'.encode(),
    "metadata": b'{"score": 1, "value": "good", "metadata": {"source": "email", "user": "u-123", "ab": [1, 2]}}',
}
# Modules of the parse path, in import order; those missing at the base revision are skipped.
MODULES = ("app/schema.py", "app/domain/shapes.py", "app/domain/feedback.py")


def load_base(rev: str) -> ModuleType:
    """The feedback module at ``rev``, with the parse-path modules it imports also taken from ``rev``."""
    saved = {name: sys.modules.get(name) for name in ("app.schema", "app.domain.shapes", "app.domain.feedback")}
    module: ModuleType | None = None
    try:
        for path in MODULES:
            shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True)
            if shown.returncode != 0:
                continue
            name = path.removesuffix(".py").replace("/", ".")
            spec = importlib.util.spec_from_loader(name, loader=None)
            assert spec is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # so the next module's imports find this revision's
            exec(compile(shown.stdout, f"{rev}:{path}", "exec"), module.__dict__)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    if module is None:
        raise SystemExit(f"app/domain/feedback.py not found at {rev}")
    return module


def same(a: Any, b: Any) -> bool:
    return all(getattr(a, f) == getattr(b, f) for f in ("score", "value", "comment", "correction", "metadata"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="HEAD", help="git revision to compare with (default HEAD)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--number", type=int, default=20000, help="parses per round and side")
    args = parser.parse_args()
    base = load_base(args.base)
    sides = {"base": base.parse_json, "this": feedback.parse_json}
    print(f"parse_json: {args.base} (base) vs this checkout; median of {args.rounds} paired rounds "
          f"of {args.number} parses, ns per parse")
    print(f"{'body':<14} {'bytes':>5} {'base':>8} {'this':>8} {'this/base':>9}")
    ratios = []
    for name, raw in BODIES.items():
        if not same(sides["base"](raw), sides["this"](raw)):
            raise SystemExit(f"{name}: the two sides parse differently")
        times: dict[str, list[float]] = {"base": [], "this": []}
        for i in range(args.rounds):
            order = ("base", "this") if i % 2 == 0 else ("this", "base")
            for side in order:
                fn = sides[side]
                seconds = timeit.timeit(lambda fn=fn, raw=raw: fn(raw), number=args.number)
                times[side].append(seconds / args.number * 1e9)
        b, t = statistics.median(times["base"]), statistics.median(times["this"])
        ratios.append(t / b)
        print(f"{name:<14} {len(raw):>5} {b:>8.0f} {t:>8.0f} {t / b:>9.3f}")
    print(f"{'geometric mean':<14} {'':>5} {'':>8} {'':>8} {statistics.geometric_mean(ratios):>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
