"""Settings, read once from the environment into a frozen object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from app.domain.policy import origin


class ConfigError(ValueError):
    """A setting in the environment is malformed."""


@dataclass(frozen=True, repr=False)
class Secret:
    """A value that must never show up in a repr, a log line or a traceback."""

    value: str

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as err:
        raise ConfigError(f"{name} must be a whole number of seconds, got {raw!r}") from err
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as err:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from err
    if not value > 0:
        raise ConfigError(f"{name} must be positive, got {raw!r}")
    return value


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


def _url(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.startswith(("http://", "https://")):
        raise ConfigError(f"{name} must be an http:// or https:// URL, got {raw!r}")
    return raw


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
    # GET /metrics and the counting behind it.
    metrics: bool = True
    # When set, /metrics answers only requests bearing it (Authorization: Bearer ...).
    metrics_token: Secret | None = None
    # Logs on stderr: "json" lines or "text"; one access line per request unless access_log is off.
    log_format: str = "json"
    access_log: bool = True

    @property
    def stream_key(self) -> str:
        return f"{{{self.redis_prefix}}}:feedback"

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
            jwks_url=_url(env, "FEEDBACK_JWKS_URL"),
            jwks_refresh=_float(env, "FEEDBACK_JWKS_REFRESH", cls.jwks_refresh),
            jwks_refetch_floor=_float(env, "FEEDBACK_JWKS_REFETCH_FLOOR", cls.jwks_refetch_floor),
            metrics=_switch(env, "FEEDBACK_METRICS", cls.metrics),
            metrics_token=Secret(token) if (token := env.get("FEEDBACK_METRICS_TOKEN", "").strip()) else None,
            log_format=_choice(env, "FEEDBACK_LOG_FORMAT", cls.log_format, ("json", "text")),
            access_log=_switch(env, "FEEDBACK_ACCESS_LOG", cls.access_log),
        )
