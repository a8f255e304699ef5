"""Token URL length (issue 10): a typical token (UUID run id, key ``user_score``, continuous
0..1), with and without the SDK's own feedback id (``id`` in the issuance request), per signing
algorithm: the JWT, the URL path, and the full URL on the public base (``--public-url``).

A token URL is ``<base>/api/v1/feedback/tokens/<jwt>/<token id>``: the JWT is the segment
before the last, which is the token id."""

from __future__ import annotations

import base64
import json
import statistics
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bench.registry import Section, measurement
from bench.stats import fmt
from bench.table import Table

if TYPE_CHECKING:
    from bench.harness import Bench

SAMPLE = 200


def jwt_of(url: str) -> str:
    return urlsplit(url).path.rstrip("/").rsplit("/", 2)[1]


def lengths(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and max length of the JWT, the URL path and the full URL of issued tokens; the
    JWT's ``alg``; whether each JWT names its own token id (``jti``) as the URL's last segment."""
    urls = [str(a["url"]) for a in answers]
    jwts = [jwt_of(u) for u in urls]
    paths = [urlsplit(u).path for u in urls]
    header = json.loads(base64.urlsafe_b64decode(jwts[0].split(".")[0] + "=="))
    out: dict[str, Any] = {"alg": header.get("alg", "?"), "example": urls[0], "count": len(urls)}
    for name, values in (("jwt", jwts), ("path", paths), ("url", urls)):
        out[name] = statistics.median(len(v) for v in values)
        out[name + "_max"] = max(len(v) for v in values)
    return out


@measurement("urls", "Token URL length")
def url_lengths(bench: Bench) -> Section:
    table = Table(["signing key", "feedback id in the request", "JWT", "URL path", "full URL"], "llrrr")
    data: dict[str, Any] = {}
    n = 50 if bench.cfg.quick else SAMPLE
    for alg in ("ES256", "HS256"):
        with bench.serve("submit", alg=alg) as server:
            for with_id in (False, True):
                ln = lengths(bench.issue(server, n, batch=min(n, 100), with_id=with_id))
                if ln["alg"] != alg:
                    raise RuntimeError(f"tokens from the {alg} keyring say alg {ln['alg']}")
                data[f"{alg}{'+id' if with_id else ''}"] = ln
                table.add(alg, "yes" if with_id else "no",
                          *(f"{fmt(ln[k])}" + (f" (max {ln[k + '_max']})" if ln[k + "_max"] != ln[k] else "")
                            for k in ("jwt", "path", "url")))
    typical = data["ES256"]
    base = bench.cfg.public_url
    section = Section("Token URL length").para(
        f"Characters, median over {n} tokens each (max when it differs), issued through the API: a typical "
        f"token (UUID run id, key `user_score`, continuous 0..1), full URL on `{base}`. With the SDK's own "
        "feedback id the token also carries it (`fid`)."
    ).table(table).para(f"Example (ES256, no feedback id): `{typical['example']}`")
    section.data = data
    section.goal(f"typical token URL path < 400 characters (< 300 stretch): {typical['path']:.0f}",
                 typical["path"] < 400)
    return section
