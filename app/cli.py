"""``feedback-tokens``: serve the app, manage the keyring, run a development setup."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from app.config import ConfigError, Settings
from app.keys.keyring import ALGORITHMS, DEFAULT_ALG, KeyringDir, KeyringError


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
            here = "private key" + (" (signs)" if state == "active" else "")
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


def cmd_keys(args: argparse.Namespace) -> int:
    ring = _keys_dir(args)
    if args.action == "new":
        pending = ring.new(args.alg)
        print(pending)  # alone on stdout, for KID=$(feedback-tokens keys new)
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
        print(json.dumps(ring.load().jwks(), indent=2))
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
    import uvicorn

    from app.ops.metrics import serving_directory

    settings = _logging_env(args.log_format, args.no_access_log)
    with serving_directory(args.workers, settings.metrics):
        uvicorn.run(
            "app.main:app",
            host=args.host,
            port=args.port,
            workers=args.workers,
            proxy_headers=True,
            log_level="info",
            log_config=None,  # ours (app.ops.logs), in this process and in each worker
            access_log=False,  # the app writes one access line per request itself
        )
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from app.dev import run_dev

    os.environ.setdefault("FEEDBACK_LOG_FORMAT", "text")
    return run_dev(Path(args.root), args.port, args.log_format)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedback-tokens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the app configured from the environment")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
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
    new = actions.add_parser("new", help="create a pending key (it verifies, never signs)")
    new.add_argument("--alg", choices=ALGORITHMS, default=DEFAULT_ALG)
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
    init.add_argument("--alg", choices=ALGORITHMS, default=DEFAULT_ALG)
    actions.add_parser("list", help="list keys and their states; warns (exit 1) about problems")
    actions.add_parser("jwks", help="print the JWK Set (pending and active public keys)")
    keys.set_defaults(func=cmd_keys)

    dev = sub.add_parser("dev", help="development server: private Redis, key, API key (make run)")
    dev.add_argument("--root", default=".")
    dev.add_argument("--port", type=int, default=8000)
    dev.add_argument(
        "--log-format", choices=("json", "text"), help="log lines on stderr (default: $FEEDBACK_LOG_FORMAT or text)"
    )
    dev.set_defaults(func=cmd_dev)
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
