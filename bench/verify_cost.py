"""What verifying one token costs per signing algorithm, in process.

    .venv/bin/python bench/verify_cost.py [--rounds 9] [--number 3000]

A temporary keyring holds one key of each algorithm (ES256, EdDSA, HS256), made by the same
code as ``feedback-tokens keys new``; each signs one typical token (UUID run id, key
``user_score``, continuous 0..1 config). Every round times each algorithm back to back, in a
rotating order, with ``timeit``: ``tokens.verify`` (shape, signature, claims: the submit path's
whole token step) and the signature check alone (``Key.verify``). Printed: the median and the
spread (min-max) of microseconds per verify over the rounds, and each algorithm's cost relative
to ES256 as the median of the per-round (paired) ratios, so a round that ran slow for everyone
does not skew the comparison.
"""

from __future__ import annotations

import argparse
import functools
import platform
import ssl
import statistics
import sys
import tempfile
import timeit
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.domain import tokens  # noqa: E402
from app.domain.feedback import FeedbackConfig  # noqa: E402
from app.keys.key import ALGORITHMS, DEFAULT_ALG, Key  # noqa: E402
from app.keys.keyring import Keyring, KeyringDir  # noqa: E402

ISSUER = "fbt"
NOW = 1_800_000_000


def keyring(path: Path) -> Keyring:
    ring = KeyringDir(path)
    for alg in ALGORITHMS:
        ring.new(alg)
    return ring.load()


def typical_token(key: Key) -> str:
    claims = tokens.TokenClaims(
        token_id=uuid.uuid4(), run_id=uuid.uuid4(), feedback_key="user_score", feedback_id=uuid.uuid4(),
        issued_at=NOW, expires_at=NOW + 3 * 3600, config=FeedbackConfig("continuous", min=0, max=1),
    )
    return tokens.sign(claims, key, ISSUER)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--number", type=int, default=3000, help="verifies per algorithm per round")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ring = keyring(Path(tmp) / "keys")
    keys = {key.alg: key for key in ring.keys.values()}
    cases = {}
    for alg, key in keys.items():
        token = typical_token(key)
        parsed = tokens.parse(token)
        signature = tokens.b64decode(parsed.signature_segment)
        if tokens.verify(token, ring, ISSUER, NOW, 30).feedback_key != "user_score":
            raise SystemExit(f"{alg}: the token did not verify")
        cases[alg] = {
            "tokens.verify": timeit.Timer(functools.partial(tokens.verify, token, ring, ISSUER, NOW, 30)),
            "Key.verify": timeit.Timer(functools.partial(key.verify, parsed.signing_input, signature)),
        }

    algs = list(keys)
    measures = ("tokens.verify", "Key.verify")
    times: dict[tuple[str, str], list[float]] = {(a, m): [] for a in algs for m in measures}
    for n in range(args.rounds):
        order = algs[n % len(algs):] + algs[: n % len(algs)]
        for measure in measures:
            for alg in order:
                times[alg, measure].append(cases[alg][measure].timeit(args.number) / args.number * 1e6)

    print(f"verify cost per algorithm: median us per verify over {args.rounds} paired rounds of "
          f"{args.number} (min-max); ratio = median of per-round ratios to {DEFAULT_ALG}")
    print(f"{platform.python_implementation()} {platform.python_version()}, {ssl.OPENSSL_VERSION}, "
          f"{platform.machine()}, {platform.processor() or platform.platform()}")
    print(f"token length: {', '.join(f'{a} {len(typical_token(keys[a]))}' for a in algs)} characters\n")
    header = f"{'alg':<6}" + "".join(f"  {m + ' us':>24}  {'ratio':>6}" for m in measures)
    print(header)
    for alg in algs:
        row = f"{alg:<6}"
        for measure in measures:
            samples = times[alg, measure]
            ratios = [a / b for a, b in zip(samples, times[DEFAULT_ALG, measure], strict=True)]
            spread = f"{statistics.median(samples):.2f} ({min(samples):.2f}-{max(samples):.2f})"
            row += f"  {spread:>24}  {statistics.median(ratios):>6.3f}"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
