"""Keep a public-only keyring in step with an issuer's, as an operator's sync job would."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def copy_atomic(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(src.read_bytes())
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)


def sync_public(src: Path, dst: Path) -> None:
    """Public keys first, the manifest last, each written then renamed: a node reading ``dst``
    at any moment sees the old keyring or the new one, and never a kid without its key."""
    dst.mkdir(mode=0o700, exist_ok=True)
    for pem in sorted(src.glob("*.pub.pem")):
        if not (dst / pem.name).exists():
            copy_atomic(pem, dst / pem.name)
    copy_atomic(src / "keyring.json", dst / "keyring.json")
