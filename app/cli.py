"""``feedback-tokens``: serve the app, manage the keyring, run a development setup."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from app.config import ConfigError, Settings
from app.keys.key import ALGORITHMS, DEFAULT_ALG, KeyringError
from app.keys.keyring import KeyringDir
from app.serving import SERVERS
from app.store.connect import display_url


def _keys_dir(args: argparse.Namespace) -> KeyringDir:
    return KeyringDir(args.dir or os.environ.get("FEEDBACK_KEYS_DIR") or "keys")


def _default_lifetime() -> float:
    # The longest a token signed by the key may still verify: FEEDBACK_MAX_TTL plus the leeway
    # that nodes allow on exp. Read leniently: the CLI must work with a partial environment.
    def seconds(name: str, default: int) -> int:
        raw = os.environ.get(name, "").strip()
        return int(raw) if raw.isdigit() else default

    return seconds("FEEDBACK_MAX_TTL", Settings.max_ttl) + seconds("FEEDBACK_LEEWAY", Settings.leeway)


def _list(ring: KeyringDir) -> int:
    entries = ring.entries()
    if not entries:
        print(f"no keys in {ring.path}")
        return 0
    rows = [("KID", "ALG", "STATE", "CREATED", "ACTIVATED", "SIGNED UNTIL", "HERE")]
    for e in entries:
        kid, state = e["kid"], e["state"]
        if ring.private_path(kid).exists():
            here = ("secret" if e["alg"] == "HS256" else "private key") + (" (signs)" if state == "active" else "")
        elif ring.public_path(kid).exists():
            here = "public key only"
        else:
            here = "-" if state == "retired" else "MISSING"
        signed_until = e.get("signed_until", "")
        if state == "active":
            signed_until = "(signing now)"
        rows.append((kid, e["alg"], state, e["created_at"], e.get("activated_at", "-"), signed_until or "-", here))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    problems = [
        f"{ring.private_path(e['kid'])} is mode {mode:o}: chmod 600 it"
        for e in entries
        if (mode := ring.exposed(e["kid"])) is not None
    ]
    try:
        keyring = ring.load()
    except KeyringError as err:
        problems.append(f"this keyring does not load, so nodes keep their previous one: {err}")
    else:
        if keyring.active is None:
            problems.append("no active key: nodes using this keyring can't issue tokens")
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _jwks(ring: KeyringDir) -> dict[str, Any]:
    """The JWK Set for verify-only nodes, refused while an HS256 key signs: nothing that
    verifies with a JWK Set could verify the tokens being issued (HS256 keys are never in it)."""
    keyring = ring.load()
    active = keyring.active
    if active is not None and not active.published:
        raise KeyringError(
            f"the active key {active.kid} is {active.alg}, a shared secret that is never published: nodes "
            "verifying with this JWK Set could verify none of the tokens issued now. Verify-only nodes can't "
            "be used while an HS256 key signs; give every node the whole keyring, or activate an ES256 key"
        )
    for key in keyring.keys.values():
        if key.verifies and not key.published:
            print(
                f"warning: pending key {key.kid} is {key.alg} and not in this set: once it is activated, "
                "nodes verifying with this set can verify none of its tokens",
                file=sys.stderr,
            )
    return keyring.jwks()


def cmd_keys(args: argparse.Namespace) -> int:
    ring = _keys_dir(args)
    if args.action == "new":
        pending = ring.new(args.alg)
        print(pending)  # alone on stdout, for KID=$(feedback-tokens keys new)
        if args.alg == "HS256":
            print(
                f"{pending} is pending: it verifies and doesn't sign. It is HS256, a shared secret: never "
                f"published, so copy {ring.private_path(pending).name} (mode 600) to every node that verifies, "
                "and know that each of them can also sign tokens; public-only keyrings and FEEDBACK_JWKS_URL "
                f"nodes can't verify its tokens. Once every node has it: keys activate {pending}",
                file=sys.stderr,
            )
        else:
            print(
                f"{pending} is pending: it verifies and is published, and doesn't sign. Let every node see "
                f"it (one reload interval; sync verify-only keyrings first), then: keys activate {pending}",
                file=sys.stderr,
            )
    elif args.action == "activate":
        previous = ring.activate(args.kid)
        print(
            f"{args.kid} is now the active signer"
            + (f"; {previous} is pending again: it verifies the tokens it signed until you retire it "
               "(wait the longest token lifetime first)" if previous else "")
        )
        if ring.load().keys[args.kid].alg == "HS256":
            print(
                f"note: {args.kid} is HS256: only nodes holding its secret verify the tokens issued from now "
                "on, and `keys jwks` refuses while it signs",
                file=sys.stderr,
            )
    elif args.action == "retire":
        lifetime = args.token_lifetime if args.token_lifetime is not None else _default_lifetime()
        was = ring.retire(args.kid, force=args.force, token_lifetime=lifetime)
        if was == "retired":
            print(f"{args.kid} was already retired; nothing done")
        else:
            print(f"{args.kid} retired: tokens it signed get 401 token_invalid within one reload interval")
            if was == "active":
                print("warning: no key signs now; run keys new and keys activate", file=sys.stderr)
    elif args.action == "init":
        kid = ring.init(args.alg)
        print(f"created and activated {kid}" if kid else "keyring already has keys; nothing done")
    elif args.action == "list":
        return _list(ring)
    elif args.action == "jwks":
        print(json.dumps(_jwks(ring), indent=2))
    return 0


def _logging_env(log_format: str | None, no_access_log: bool = False) -> Settings:
    """Put the command line's logging choices where every worker reads them (the environment),
    check the whole configuration once here rather than in each worker, and set up this
    process's own logging the same way."""
    from app.ops import logs

    if log_format:
        os.environ["FEEDBACK_LOG_FORMAT"] = log_format
    if no_access_log:
        os.environ["FEEDBACK_ACCESS_LOG"] = "0"
    settings = Settings.from_env()
    logs.configure(settings.log_format, settings.access_log)
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from app import serving
    from app.ops.metrics_directory import serving_directory

    settings = _logging_env(args.log_format, args.no_access_log)
    with serving_directory(args.workers, settings.metrics):
        try:
            serving.run(args.server, args.host, args.port, args.workers)
        except serving.ServerMissing as err:
            print(f"feedback-tokens serve: {err}", file=sys.stderr)
            return 2
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from app.dev import run_dev

    return run_dev(Path(args.root), args.port, args.host, args.demo, args.cluster, args.log_format)


def cmd_streams(args: argparse.Namespace) -> int:
    """Print every feedback stream a consumer must read, one per line (for scripts), found in
    the Redis of ``REDIS_URL`` (``--offline``: the configured shards only, without asking Redis)."""
    import asyncio

    from app.store.connect import connect, discover_streams
    from app.store.keyspace import Keyspace

    settings = Settings.from_env()
    keyspace = Keyspace(settings.redis_prefix, settings.shards)
    if args.offline:
        streams = keyspace.streams()
    else:

        async def find() -> list[str]:
            client = await connect(
                settings.redis_url, settings.redis_cluster, settings.redis_timeout
            )
            try:
                return await discover_streams(client, keyspace)
            finally:
                await client.aclose()

        try:
            streams = asyncio.run(find())
        except RedisError as err:
            print(f"feedback-tokens: Redis at {display_url(settings.redis_url)} did not answer: {err}", file=sys.stderr)
            return 1
    for stream in streams:
        print(stream)
    return 0


_ALG_HELP = (
    f"signing algorithm (default {DEFAULT_ALG}). HS256 is a shared secret: ~30x cheaper to verify, never "
    "published, and every node that verifies its tokens can also sign them"
)


def cmd_deliver(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from app.config import ConfigError
    from app.delivery import runner

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
        if args.status:
            return asyncio.run(runner.status(settings, args.group))
        if not args.to:
            print("feedback-tokens deliver: give --to TARGET (or --status)", file=sys.stderr)
            return 2
        request = runner.Request(
            args.to, args.group, args.consumer, args.batch, args.claim_idle, args.max_failures, args.metrics_port
        )
        return asyncio.run(runner.deliver(settings, request))
    except ConfigError as err:
        print(f"feedback-tokens deliver: {err}", file=sys.stderr)
        return 2


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(raw: str) -> int | float:
        value = kind(raw)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {raw}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedback-tokens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the app configured from the environment")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--server", choices=SERVERS, default="uvicorn",
        help="the HTTP server (default uvicorn; granian needs the [granian] extra)",
    )
    serve.add_argument(
        "--no-access-log", action="store_true", help="no access line per request (FEEDBACK_ACCESS_LOG=0)"
    )
    serve.add_argument(
        "--log-format", choices=("json", "text"), help="log lines on stderr (default: $FEEDBACK_LOG_FORMAT or json)"
    )
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="manage the signing keyring (FEEDBACK_KEYS_DIR)")
    keys.add_argument("--dir", help="keyring directory (default: $FEEDBACK_KEYS_DIR or keys/)")
    actions = keys.add_subparsers(dest="action", required=True)
    new = actions.add_parser(
        "new", help="create a pending key (it verifies, never signs); HS256 only for fleets where every node may sign"
    )
    new.add_argument("--alg", choices=ALGORITHMS, default=DEFAULT_ALG, help=_ALG_HELP)
    actions.add_parser("activate", help="make a pending key the signer").add_argument("kid")
    retire = actions.add_parser("retire", help="retire a key: its tokens stop verifying")
    retire.add_argument("kid")
    retire.add_argument(
        "--force",
        action="store_true",
        help="retire even the active key, or one whose tokens may still be live (a leaked key)",
    )
    retire.add_argument(
        "--token-lifetime",
        type=float,
        metavar="SECONDS",
        help="refuse (without --force) to retire a key that signed less than this long ago "
        "(default: $FEEDBACK_MAX_TTL + $FEEDBACK_LEEWAY)",
    )
    init = actions.add_parser("init", help="create and activate a key if the keyring is empty")
    init.add_argument("--alg", choices=ALGORITHMS, default=DEFAULT_ALG, help=_ALG_HELP)
    actions.add_parser("list", help="list keys and their states; warns (exit 1) about problems")
    actions.add_parser(
        "jwks", help="print the JWK Set (pending and active public keys; refused while an HS256 key signs)"
    )
    keys.set_defaults(func=cmd_keys)

    deliver = sub.add_parser(
        "deliver", help="deliver the feedback streams to a target, at least once (or --status)"
    )
    deliver.add_argument(
        "--to", metavar="TARGET",
        help="jsonl:PATH, jsonl:- (stdout), webhook:URL, postgresql://... or python:MODULE:CLASS",
    )
    deliver.add_argument("--group", help="consumer group (default: named after the target)")
    deliver.add_argument("--consumer", help="this deliverer's name in the group (default: the host name)")
    deliver.add_argument("--batch", type=_positive(int), default=500, help="entries per delivery (default 500)")
    deliver.add_argument(
        "--claim-idle", type=_positive(float), default=60.0, metavar="SECONDS",
        help="take over entries a stopped deliverer left unacknowledged this long (default 60)",
    )
    deliver.add_argument(
        "--max-failures", type=_positive(int), default=5, metavar="N",
        help="dead-letter an entry after N failed deliveries (default 5)",
    )
    deliver.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on this port")
    deliver.add_argument("--status", action="store_true", help="show each group's lag, pending and dead letters")
    deliver.set_defaults(func=cmd_deliver)

    dev = sub.add_parser("dev", help="development server: private Redis, key, API key (make run)")
    dev.add_argument("--root", default=".", help="where the key, the API key and the private Redis live")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument("--demo", action="store_true", help="also serve /demo (FEEDBACK_DEMO=1)")
    dev.add_argument(
        "--cluster", nargs="?", type=int, const=30001, default=None, metavar="FIRST_PORT",
        help="a private 3-primary Redis Cluster instead of one Redis, on FIRST_PORT (30001) and the two after it",
    )
    dev.add_argument(
        "--log-format", choices=("json", "text"), help="log lines on stderr (default: $FEEDBACK_LOG_FORMAT or text)"
    )
    dev.set_defaults(func=cmd_dev)

    streams = sub.add_parser(
        "streams", help="list the feedback streams (one per shard) a consumer must read, from REDIS_URL"
    )
    streams.add_argument("--offline", action="store_true", help="the configured shards' names, without asking Redis")
    streams.set_defaults(func=cmd_streams)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (KeyringError, ConfigError) as err:
        print(f"feedback-tokens: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
