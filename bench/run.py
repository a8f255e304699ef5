#!/usr/bin/env python3
"""The benchmark: ``python bench/run.py [--quick] [--update-results]`` (``make bench``). See bench/README.md."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _bootstrap() -> None:
    """Make ``import bench`` / ``import app`` work from ``python bench/run.py``, and move into
    the project's virtualenv when started with an interpreter that lacks its packages."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        import httpx  # noqa: F401
        import redis  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        venv_python = ROOT / ".venv" / "bin" / "python"
        if venv_python.exists() and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
            os.execv(str(venv_python), [str(venv_python), str(Path(__file__).resolve()), *sys.argv[1:]])
        sys.exit("bench: httpx, redis and uvicorn are needed; run `make install` (or use `make bench`)")


if __name__ == "__main__":
    _bootstrap()
    from bench.harness import main

    sys.exit(main())
