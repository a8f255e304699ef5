#!/usr/bin/env python3
"""How long tokens and their URLs are (SPEC 2: a typical token under 400 characters; issue 10:
URLs end in the token id).

    .venv/bin/python bench/url_length.py [--count 200] [--base https://feedback.example.com] [--json]

Typical tokens (UUID run id, key ``user_score``, continuous 0..1 config, the default 3-hour
lifetime) are issued through the real service (``create_app`` behind Starlette's TestClient,
against a private redis-server), once per signing algorithm, from two request bodies:

- **without a feedback id**: no ``id`` field, as curl, the JS SDK or this package's client send
  it; the feedback id is then the token id and the token carries no ``fid`` claim;
- **with the SDK's feedback id**: the LangSmith Python SDK always sends ``id`` (a fresh UUID of
  its own), which the token carries as ``fid``.

For each: the JWT, the URL path as issued (``/api/v1/feedback/tokens/<jwt>/<token id>``), the
full URL on ``--base``, and, for comparison, the path of the older form (``.../tokens/<jwt>``).
Lengths do not depend on the machine; median and maximum are over ``--count`` tokens.
``measure()`` is what ``make bench`` calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from starlette.testclient import TestClient  # noqa: E402

from app.config import Secret, Settings  # noqa: E402
from app.keys.key import ALGORITHMS, DEFAULT_ALG  # noqa: E402
from app.keys.keyring import KeyringDir  # noqa: E402
from app.main import create_app  # noqa: E402
from bench.procs import Procs, RedisServer  # noqa: E402

BASE = "https://feedback.example.com"
TOKENS = "/api/v1/feedback/tokens"
API_KEY = "url-length-bench"
SHAPES = {"without a feedback id": False, "with the SDK's feedback id": True}


def typical(with_feedback_id: bool) -> dict[str, Any]:
    """The body of one typical token request (SPEC 2); ``id`` as the LangSmith Python SDK sends it."""
    body: dict[str, Any] = {
        "run_id": str(uuid.uuid4()),
        "feedback_key": "user_score",
        "feedback_config": {"type": "continuous", "min": 0, "max": 1},
    }
    if with_feedback_id:
        body["id"] = str(uuid.uuid4())
    return body


def lengths(urls: list[str]) -> dict[str, dict[str, float]]:
    """Median and maximum length of each part of token URLs as issued (``.../<jwt>/<token id>``)."""
    paths = [urlsplit(url).path for url in urls]
    parts = {
        "jwt": [path.rsplit("/", 2)[1] for path in paths],
        "path": paths,
        "url": urls,
        "old_path": [path.rsplit("/", 1)[0] for path in paths],
    }
    return {name: {"median": statistics.median(map(len, values)), "max": max(map(len, values))}
            for name, values in parts.items()}


def issue_urls(client: TestClient, count: int, with_feedback_id: bool) -> list[str]:
    urls: list[str] = []
    while len(urls) < count:
        batch = [typical(with_feedback_id) for _ in range(min(100, count - len(urls)))]
        r = client.post(TOKENS, json=batch, headers={"X-API-Key": API_KEY})
        r.raise_for_status()
        urls += [answer["url"] for answer in r.json()]
    return urls


def measure(count: int = 200, base: str = BASE, algs: tuple[str, ...] = ALGORITHMS) -> dict[str, Any]:
    """{alg: {shape: {part: {"median", "max"}}}} for tokens issued through the real service."""
    procs = Procs()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fbt-url-length-") as tmp:
        redis = RedisServer(procs, Path(tmp)).start()
        try:
            for alg in algs:
                keys = Path(tmp) / f"keys-{alg}"
                KeyringDir(keys).init(alg)  # type: ignore[arg-type]
                settings = Settings(redis_url=redis.url, public_url=base, keys_dir=keys, api_keys=(Secret(API_KEY),))
                with TestClient(create_app(settings)) as client:
                    out[alg] = {shape: lengths(issue_urls(client, count, with_id)) for shape, with_id in SHAPES.items()}
        finally:
            procs.stop_all()
    return out


def table(results: dict[str, Any], base: str = BASE) -> list[str]:
    """Markdown: one row per algorithm and request shape (medians; a maximum that differs in brackets)."""

    def cell(part: dict[str, float]) -> str:
        text = f"{part['median']:.0f}"
        return text if part["max"] == part["median"] else f"{text} ({part['max']:.0f})"

    lines = [
        f"| alg | request | JWT | URL path | full URL on `{base}` | old-form path (`.../tokens/<jwt>`) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for alg, shapes in results.items():
        for shape, parts in shapes.items():
            default = " (default)" if alg == DEFAULT_ALG else ""
            lines.append(f"| {alg}{default} | {shape} | {cell(parts['jwt'])} | {cell(parts['path'])} | "
                         f"{cell(parts['url'])} | {cell(parts['old_path'])} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="tokens per algorithm and request shape")
    parser.add_argument("--base", default=BASE, help="public base URL the tokens are issued under")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    results = measure(args.count, args.base.rstrip("/"))
    print(json.dumps(results, indent=2) if args.json else "\n".join(table(results, args.base.rstrip("/"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
