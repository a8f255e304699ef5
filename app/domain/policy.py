"""What a token allows beyond its values: how often it may be used, whether a link needs a click
to confirm, where a browser goes after success, and which requests may never consume it.

Use policies, chosen per token at issuance:

    once    one submission; an identical retry is a duplicate (SPEC section 2, the default)
    update  the same feedback, changed as often as the person likes until expiry: each change is
            a new stream entry with a higher ``revision``; the latest wins
    many    each submission is a new feedback with its own id, up to ``max_uses`` when given

The store's submit script applies them atomically; this module only names them. The request
fields that choose them are checked by ``app/domain/shapes.py`` (``TOKEN_REQUEST``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal
from urllib.parse import urlsplit

Use = Literal["once", "update", "many"]
USES: tuple[Use, ...] = ("once", "update", "many")
MAX_USES_CAP = 1_000_000
REDIRECT_URL_CAP = 512

# Requests that a browser or a mail client makes on its own, before (or without) a person's
# click. They never consume a token, whatever its policy.
_PREFETCH = (("sec-purpose", "prefetch"), ("purpose", "prefetch"), ("x-moz", "prefetch"),
             ("x-purpose", "preview"), ("x-purpose", "prefetch"))
# Answer to a prefetch: non-2xx, so a browser discards it and fetches again on the real click;
# 425 Too Early says "not replayable on someone else's behalf" without looking like an outage.
PREFETCH_STATUS = 425


# -- redirects -------------------------------------------------------------------------------------


def origin(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL (lower case, default port dropped), or
    None for anything else, including URLs with credentials or characters browsers rewrite."""
    if not url.isascii() or any(c <= " " or c in "\\\x7f" for c in url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in ("http", "https") or not host or "@" in parts.netloc:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == {"http": 80, "https": 443}[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def allowed_origins(configured: Iterable[str]) -> frozenset[str]:
    return frozenset(o for o in (origin(c.rstrip("/")) for c in configured) if o is not None)


def parse_redirect_url(raw: str | None, allowed: frozenset[str]) -> str | None:
    """The origin rule of a ``redirect_url`` whose shape (a string of 1 to ``REDIRECT_URL_CAP``
    characters) ``shapes.TOKEN_REQUEST`` checked."""
    if raw is None:
        return None
    where = origin(raw)
    if where is None:
        raise ValueError("redirect_url must be an absolute http(s) URL without credentials")
    if where not in allowed:
        raise ValueError(
            f"redirect_url's origin {where} is not one the operator allows (FEEDBACK_REDIRECT_ORIGINS)"
        )
    return raw


def redirect_allowed(url: str | None, allowed: frozenset[str]) -> bool:
    """Checked again at redirect time, so removing an origin from the settings takes effect."""
    return url is not None and origin(url) in allowed


# -- requests that must never consume ---------------------------------------------------------------


def is_prefetch(headers: Mapping[str, str]) -> bool:
    for name, marker in _PREFETCH:
        value = headers.get(name)
        if value and any(part.strip().lower() == marker for part in value.replace(";", ",").split(",")):
            return True
    return False

