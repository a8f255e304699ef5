"""Settings, read once from the environment into a frozen object."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from app.domain.policy import origin
from app.store.keyspace import MAX_SHARDS


class ConfigError(ValueError):
    """A setting in the environment is malformed."""


@dataclass(frozen=True, repr=False)
class Secret:
    """A value that must never show up in a repr, a log line or a traceback."""

    value: str

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


def _int(
    env: Mapping[str, str],
    name: str,
    default: int,
    minimum: int = 1,
    maximum: int | None = None,
    unit: str = " of seconds",
) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as err:
        raise ConfigError(f"{name} must be a whole number{unit}, got {raw!r}") from err
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, allow_zero: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as err:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from err
    if not (value >= 0 if allow_zero else value > 0) or value != value or value == float("inf"):
        raise ConfigError(f"{name} must be {'zero or more' if allow_zero else 'positive'}, got {raw!r}")
    return value


def _cluster_mode(env: Mapping[str, str]) -> Literal["auto", "yes", "no"]:
    raw = env.get("FEEDBACK_REDIS_CLUSTER", "").strip().lower() or "auto"
    if raw == "auto":
        return "auto"
    if raw in ("yes", "no"):
        return "yes" if raw == "yes" else "no"
    raise ConfigError(f"FEEDBACK_REDIS_CLUSTER must be auto, yes or no, got {raw!r}")


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    origins = []
    for raw in _list(env, name):
        normal = origin(raw.rstrip("/"))
        if normal is None:
            raise ConfigError(f"{name}: {raw!r} is not an origin like https://app.example.com")
        origins.append(normal)
    return tuple(origins)


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A setting that is on or off, with a default; anything else is refused, not guessed."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be 1 or 0 (on or off), got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower() or default
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in env.get(name, "").split(",") if part.strip())


LOOPBACK_NAMES = frozenset({"localhost"})


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _https_url(env: Mapping[str, str], name: str) -> str | None:
    """An https:// URL, or plain http:// to this machine (development). Keys fetched in the
    clear could be swapped on the way by anyone on the path, who could then forge tokens."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        parts = urlsplit(raw)
        host = parts.hostname
    except ValueError as err:
        raise ConfigError(f"{name} is not a URL: {raw!r}") from err
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"{name} must be an https:// URL, got {raw!r}")
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigError(
            f"{name} must be an https:// URL (plain http:// only to this machine: 127.0.0.1, ::1, "
            f"localhost), got {raw!r}"
        )
    return raw


_UNITS_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


@dataclass(frozen=True)
class Retention:
    """How a feedback stream that no consumer group reads is trimmed: entries older than
    ``amount`` ms (``age``), all but the newest ``amount`` entries (``length``), or not at all
    (``off``). A stream that has a group is trimmed only of what every group acknowledged."""

    kind: Literal["age", "length", "off"]
    amount: int = 0

    @classmethod
    def parse(cls, raw: str, name: str = "FEEDBACK_STREAM_RETENTION") -> Retention:
        text = raw.strip().lower()
        if text == "off":
            return cls("off")
        length = re.fullmatch(r"([0-9]+) *entries", text)
        if length and int(length[1]) > 0:
            return cls("length", int(length[1]))
        age = re.fullmatch(r"([0-9]+)([smhd])", text)
        if age and int(age[1]) > 0:
            return cls("age", int(age[1]) * _UNITS_MS[age[2]])
        raise ConfigError(
            f"{name} must be an age like 7d, 12h, 30m or 600s, a length like '1000000 entries', "
            f"or off; got {raw!r}"
        )

    def __str__(self) -> str:
        if self.kind == "length":
            return f"{self.amount} entries"
        if self.kind == "age":
            for unit in "dhms":
                if self.amount % _UNITS_MS[unit] == 0:
                    return f"{self.amount // _UNITS_MS[unit]}{unit}"
            return f"{self.amount / 1000}s"
        return "off"


def _webhook_secret(env: Mapping[str, str], name: str) -> Secret | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    body = raw.removeprefix("whsec_")
    try:
        # Padding is optional in the wild (the standardwebhooks package adds it back too).
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True) if body != raw else b""
    except binascii.Error:
        key = b""
    if not 24 <= len(key) <= 64:
        raise ConfigError(
            f"{name} must be whsec_ followed by 24 to 64 random bytes in base64 (the Standard Webhooks "
            "form; make one with: python3 -c 'import base64, os; "
            "print(\"whsec_\" + base64.b64encode(os.urandom(32)).decode())')"
        )
    return Secret(raw)


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    public_url: str = "http://127.0.0.1:8000"
    keys_dir: Path = Path("keys")
    api_keys: tuple[Secret, ...] = ()
    default_ttl: int = 3 * 3600
    max_ttl: int = 30 * 24 * 3600
    redis_prefix: str = "fbt"
    issuer: str = "fbt"
    # Seconds of clock skew tolerated between nodes when checking exp and iat.
    leeway: int = 30
    # How often each process looks at the keyring for changes (SPEC: within 5 s).
    keyring_poll: float = 1.0
    # Upper bound on any one Redis call, so a hung Redis cannot hang requests.
    redis_timeout: float = 2.0
    # Seconds a client is told to wait when the store is unavailable.
    retry_after: int = 5
    # Origins that a token's success redirect may point to.
    redirect_origins: tuple[str, ...] = field(default_factory=tuple)
    # Development only: serve /demo, which issues tokens without an API key.
    demo: bool = False
    # Verify-only node fed by an issuer's JWK Set instead of a keys directory.
    jwks_url: str | None = None
    # Seconds between JWKS fetches: a key retired at the issuer stops verifying here within
    # this (plus one issuer reload), so it stays under SPEC's 5 s by default.
    jwks_refresh: float = 4.0
    # Least seconds between the extra fetches that unknown kids trigger (forged kids are free).
    jwks_refetch_floor: float = 10.0
    # A verify-only node whose JWK Set copy is older than this fails closed (503 keys_stale).
    jwks_max_age: float = 600.0
    # The largest clock difference between any node and Redis the fleet tolerates: records of
    # used and revoked tokens live this long past exp + leeway (docs/durability.md).
    max_clock_skew: int = 60
    # Shards of the keyspace (hash tags; one feedback stream each). See app/store/keyspace.py.
    shards: int = 16
    # auto: ask the server whether it is a Redis Cluster node; yes / no: don't ask.
    redis_cluster: Literal["auto", "yes", "no"] = "auto"
    # Connections per Redis server and process; when all are busy a request answers 503 at once.
    redis_pool_size: int = 64
    # Most live tokens one run may hold in one shard (one request's tokens share a shard).
    max_run_tokens: int = 1000
    # Seconds between SIGTERM and closing: /readyz answers 503 and answers say Connection: close,
    # so load balancers and clients move away before the listener closes.
    shutdown_drain: float = 3.0
    # Signs webhook deliveries (`feedback-tokens deliver --to webhook:URL`), whsec_<base64>.
    webhook_secret: Secret | None = None
    # How streams that no consumer group reads are trimmed (streams with groups: see Retention).
    stream_retention: Retention = field(default_factory=lambda: Retention("age", 7 * _UNITS_MS["d"]))
    # A group this many entries behind (not yet acknowledged) is logged as a warning.
    lag_warning: int = 100_000
    # Seconds between the service's looks at its streams (retention trimming, lag warnings).
    stream_check_interval: float = 60.0
    # GET /metrics and the counting behind it.
    metrics: bool = True
    # When set, /metrics answers only requests bearing it (Authorization: Bearer ...).
    metrics_token: Secret | None = None
    # Logs on stderr: "json" lines or "text"; one access line per request unless access_log is off.
    log_format: str = "json"
    access_log: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        default_ttl = _int(env, "FEEDBACK_DEFAULT_TTL", cls.default_ttl)
        max_ttl = _int(env, "FEEDBACK_MAX_TTL", cls.max_ttl)
        if default_ttl > max_ttl:
            raise ConfigError(
                f"FEEDBACK_DEFAULT_TTL ({default_ttl}) exceeds FEEDBACK_MAX_TTL ({max_ttl})"
            )
        prefix = env.get("FEEDBACK_REDIS_PREFIX", "").strip() or cls.redis_prefix
        if any(c in prefix for c in "{}: \t\r\n"):
            raise ConfigError("FEEDBACK_REDIS_PREFIX may not contain braces, colons or spaces")
        return cls(
            redis_url=env.get("REDIS_URL", "").strip() or cls.redis_url,
            public_url=(env.get("FEEDBACK_PUBLIC_URL", "").strip() or cls.public_url).rstrip("/"),
            keys_dir=Path(env.get("FEEDBACK_KEYS_DIR", "").strip() or "keys"),
            api_keys=tuple(Secret(k) for k in _list(env, "FEEDBACK_API_KEYS")),
            default_ttl=default_ttl,
            max_ttl=max_ttl,
            redis_prefix=prefix,
            issuer=env.get("FEEDBACK_ISSUER", "").strip() or cls.issuer,
            leeway=_int(env, "FEEDBACK_LEEWAY", cls.leeway, minimum=0),
            keyring_poll=_float(env, "FEEDBACK_KEYRING_POLL", cls.keyring_poll),
            redis_timeout=_float(env, "FEEDBACK_REDIS_TIMEOUT", cls.redis_timeout),
            redirect_origins=_origins(env, "FEEDBACK_REDIRECT_ORIGINS"),
            demo=_flag(env, "FEEDBACK_DEMO"),
            jwks_url=_https_url(env, "FEEDBACK_JWKS_URL"),
            jwks_refresh=_float(env, "FEEDBACK_JWKS_REFRESH", cls.jwks_refresh),
            jwks_refetch_floor=_float(env, "FEEDBACK_JWKS_REFETCH_FLOOR", cls.jwks_refetch_floor),
            jwks_max_age=_float(env, "FEEDBACK_JWKS_MAX_AGE", cls.jwks_max_age),
            max_clock_skew=_int(env, "FEEDBACK_MAX_CLOCK_SKEW", cls.max_clock_skew, minimum=0),
            shards=_int(env, "FEEDBACK_SHARDS", cls.shards, maximum=MAX_SHARDS, unit=""),
            redis_cluster=_cluster_mode(env),
            redis_pool_size=_int(env, "FEEDBACK_REDIS_POOL", cls.redis_pool_size, unit=""),
            max_run_tokens=_int(env, "FEEDBACK_MAX_RUN_TOKENS", cls.max_run_tokens, unit=""),
            shutdown_drain=_float(env, "FEEDBACK_SHUTDOWN_DRAIN", cls.shutdown_drain, allow_zero=True),
            webhook_secret=_webhook_secret(env, "FEEDBACK_WEBHOOK_SECRET"),
            stream_retention=Retention.parse(env.get("FEEDBACK_STREAM_RETENTION", "").strip() or "7d"),
            lag_warning=_int(env, "FEEDBACK_LAG_WARNING", cls.lag_warning, unit=" of entries"),
            stream_check_interval=_float(env, "FEEDBACK_STREAM_CHECK_INTERVAL", cls.stream_check_interval),
            metrics=_switch(env, "FEEDBACK_METRICS", cls.metrics),
            metrics_token=Secret(token) if (token := env.get("FEEDBACK_METRICS_TOKEN", "").strip()) else None,
            log_format=_choice(env, "FEEDBACK_LOG_FORMAT", cls.log_format, ("json", "text")),
            access_log=_switch(env, "FEEDBACK_ACCESS_LOG", cls.access_log),
        )
