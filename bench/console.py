"""Progress lines on the console, stamped with seconds since the bench started."""

from __future__ import annotations

import time

_T0 = time.monotonic()


def log(msg: str) -> None:
    lead = len(msg) - len(msg.lstrip("\n"))
    print("\n" * lead + f"[{time.monotonic() - _T0:5.0f}s] " + msg.lstrip("\n"), flush=True)
