"""``feedback-tokens``: serve the app, manage the keyring, run a development setup."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .keyring import ALGORITHMS, KeyringDir, KeyringError


def _keys_dir(args: argparse.Namespace) -> KeyringDir:
    return KeyringDir(args.dir or os.environ.get("FEEDBACK_KEYS_DIR") or "keys")


def cmd_keys(args: argparse.Namespace) -> int:
    ring = _keys_dir(args)
    if args.action == "new":
        print(ring.new(args.alg))
    elif args.action == "activate":
        previous = ring.activate(args.kid)
        print(f"{args.kid} is now the active signer" + (f"; {previous} verifies only" if previous else ""))
    elif args.action == "retire":
        ring.retire(args.kid, force=args.force)
        print(f"{args.kid} retired: tokens it signed no longer verify")
    elif args.action == "init":
        kid = ring.init(args.alg)
        print(f"created and activated {kid}" if kid else "keyring already has keys; nothing done")
    elif args.action == "list":
        entries = ring.entries()
        if not entries:
            print(f"no keys in {ring.path}")
        for e in entries:
            private = "private" if ring.private_path(e["kid"]).exists() else "public-only"
            print(f"{e['kid']}\t{e['alg']}\t{e['state']}\t{e['created_at']}\t{private}")
    elif args.action == "jwks":
        print(json.dumps(ring.load().jwks(), indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "app.main:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=True,
        log_level="info",
    )
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from .dev import run_dev

    return run_dev(Path(args.root), args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedback-tokens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve the app configured from the environment")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="manage the signing keyring (FEEDBACK_KEYS_DIR)")
    keys.add_argument("--dir", help="keyring directory (default: $FEEDBACK_KEYS_DIR or keys/)")
    actions = keys.add_subparsers(dest="action", required=True)
    new = actions.add_parser("new", help="create a pending key (it verifies, never signs)")
    new.add_argument("--alg", choices=ALGORITHMS, default="EdDSA")
    actions.add_parser("activate", help="make a pending key the signer").add_argument("kid")
    retire = actions.add_parser("retire", help="retire a key: its tokens stop verifying")
    retire.add_argument("kid")
    retire.add_argument("--force", action="store_true", help="allow retiring the active key")
    init = actions.add_parser("init", help="create and activate a key if the keyring is empty")
    init.add_argument("--alg", choices=ALGORITHMS, default="EdDSA")
    actions.add_parser("list", help="list keys: kid, alg, state, created, private or public-only")
    actions.add_parser("jwks", help="print the JWK Set (pending and active public keys)")
    keys.set_defaults(func=cmd_keys)

    dev = sub.add_parser("dev", help="development server: private Redis, key, API key (make run)")
    dev.add_argument("--root", default=".")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(func=cmd_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyringError as err:
        print(f"feedback-tokens: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
