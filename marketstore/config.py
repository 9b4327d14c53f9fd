"""Settings from the environment, validated once; the password is never printed.

``MARKETSTORE_DATABASE_URL`` (any libpq URL: ``sslmode`` and the other query
parameters pass straight through to libpq), else libpq's ``PG*`` variables.
Pool settings default to the original design: 10 kept, 20 overflow, 30 s wait,
1 h recycle, pre-ping on. ``MARKETSTORE_POOLER=transaction`` when the URL is a
PgBouncer in transaction mode; ``MARKETSTORE_REPLICA_URLS`` (comma-separated)
and ``MARKETSTORE_MAX_REPLICA_LAG`` (seconds) for reads served by standbys.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

import psycopg2.extensions

from .errors import ConfigurationError

URL_VAR = "MARKETSTORE_DATABASE_URL"

# option name -> (environment variable, parser, default)
_POOL_OPTIONS = {
    "pool_size": ("MARKETSTORE_POOL_SIZE", "int>=1", 10),
    "max_overflow": ("MARKETSTORE_MAX_OVERFLOW", "int>=0", 20),
    "pool_timeout": ("MARKETSTORE_POOL_TIMEOUT", "float>=0", 30.0),
    "pool_recycle": ("MARKETSTORE_POOL_RECYCLE", "float>=0", 3600.0),
    "pool_pre_ping": ("MARKETSTORE_POOL_PRE_PING", "bool", True),
    "statement_timeout": ("MARKETSTORE_STATEMENT_TIMEOUT", "int>=0", None),
    "application_name": ("MARKETSTORE_APPLICATION_NAME", "str", "marketstore"),
    # Scale-out (docs/SCALING.md): PgBouncer in transaction mode, read replicas.
    "pooler": ("MARKETSTORE_POOLER", "pooler", None),
    "replica_urls": ("MARKETSTORE_REPLICA_URLS", "urls", ()),
    "max_replica_lag": ("MARKETSTORE_MAX_REPLICA_LAG", "float>=0.01", 1.0),
}
POOLERS = ("transaction",)

# libpq environment variables we read when no URL is given.
_PG_VARS = {
    "PGHOST": "host",
    "PGHOSTADDR": "hostaddr",
    "PGPORT": "port",
    "PGUSER": "user",
    "PGPASSWORD": "password",
    "PGDATABASE": "dbname",
    "PGSSLMODE": "sslmode",
    "PGSERVICE": "service",
    "PGCONNECT_TIMEOUT": "connect_timeout",
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(name: str, kind: str, raw: Any) -> Any:
    """Parse one option; ``name`` is what the user typed, so errors name it."""
    if raw is None:
        return None
    if kind == "pooler":
        text = raw.strip().lower() if isinstance(raw, str) else raw
        if text in ("", "none"):
            return None
        if text not in POOLERS:
            raise ConfigurationError(f"{name}={raw!r}: expected one of {', '.join(POOLERS)} (or unset)")
        return text
    if kind == "urls":
        items = raw.split(",") if isinstance(raw, str) else raw
        if isinstance(items, (bytes, dict)) or not hasattr(items, "__iter__"):
            raise ConfigurationError(f"{name}: expected postgresql:// URLs (a list, or comma-separated)")
        urls = tuple(u.strip() for u in items if not isinstance(u, str) or u.strip())
        for number, url in enumerate(urls, 1):
            parse_url(url, f"{name} #{number}")  # names the entry, never echoes it (a password)
        return urls
    if kind == "str":
        if not isinstance(raw, str) or not raw.strip():
            raise ConfigurationError(f"{name}={raw!r}: expected a non-empty string")
        return raw
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ConfigurationError(f"{name}={raw!r}: expected one of on/off, true/false, 1/0")
    base, _, minimum = kind.partition(">=")
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = int(str(raw).strip()) if base == "int" else float(str(raw).strip())
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r}: expected a number ({base})") from None
    if value != value or value in (float("inf"), float("-inf")) or value < float(minimum):
        raise ConfigurationError(f"{name}={raw!r}: expected a finite number >= {minimum}")
    return value


@dataclass(frozen=True)
class Settings:
    """Validated connection and pool settings. ``repr`` never shows the password."""

    connect_params: Mapping[str, str] = field(default_factory=dict)
    pool_size: int = 10
    max_overflow: int = 20
    pool_timeout: float = 30.0
    pool_recycle: float = 3600.0
    pool_pre_ping: bool = True
    statement_timeout: int | None = None
    application_name: str = "marketstore"
    pooler: str | None = None
    replica_urls: tuple[str, ...] = ()
    max_replica_lag: float = 1.0

    @property
    def max_connections(self) -> int:
        return self.pool_size + self.max_overflow

    @property
    def database(self) -> str:
        params = self.connect_params
        return params.get("dbname") or params.get("user") or "postgres"

    def safe_url(self) -> str:
        """The connection target for messages and logs, password masked."""
        return safe_url(self.connect_params)

    def replica_safe_urls(self) -> list[str]:
        """The replicas' targets, passwords masked."""
        return [safe_url(parse_url(url)) for url in self.replica_urls]

    def for_replica(self, url: str) -> "Settings":
        """These settings (pool limits, pooler, timeouts) for the replica at ``url``."""
        return replace(self, connect_params=parse_url(url), replica_urls=())

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
            if f.name not in ("connect_params", "replica_urls")
        )
        replicas = f", replicas={self.replica_safe_urls()!r}" if self.replica_urls else ""
        return f"Settings(url={self.safe_url()!r}, {shown}{replicas})"

    __str__ = __repr__


def safe_url(params: Mapping[str, str]) -> str:
    """The connection target of libpq ``params`` for messages and logs, password masked."""
    user = params.get("user", "")
    auth = f"{user}:***@" if params.get("password") else (f"{user}@" if user else "")
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = f":{params['port']}" if params.get("port") else ""
    database = params.get("dbname") or user or "postgres"
    if host.startswith("/"):  # unix socket directory
        return f"postgresql://{auth}/{database}?host={host}"
    return f"postgresql://{auth}{host}{port}/{database}"


def parse_url(url: str, name: str = URL_VAR) -> dict[str, str]:
    """Split a libpq URL into connection parameters (every query parameter kept);
    ``name`` (the setting it came from) is what errors name."""
    if not isinstance(url, str) or not url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError(f"{name}: expected a postgresql://user:password@host:port/dbname URL")
    try:
        params = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError:
        params = None
    if params is None:
        # Raised outside the except block: libpq's message quotes the URL, password
        # included, and would otherwise travel along as __context__.
        raise ConfigurationError(f"{name}: not a valid libpq URL")
    if "port" in params:
        _parse(f"{name} port", "int>=1", params["port"])
    return params


def is_configured(environ: Mapping[str, str] | None = None) -> bool:
    """True when the environment names a server (URL or a libpq host/database/service)."""
    env = os.environ if environ is None else environ
    return bool(env.get(URL_VAR)) or any(env.get(v) for v in ("PGHOST", "PGHOSTADDR", "PGDATABASE", "PGSERVICE"))


def load_settings(url: str | None = None, environ: Mapping[str, str] | None = None, **options) -> Settings:
    """Build :class:`Settings` from ``url``/``options`` over the environment.

    Raises :class:`ConfigurationError` naming the variable or option at fault,
    including when no server is configured at all.
    """
    env = os.environ if environ is None else environ
    unknown = set(options) - set(_POOL_OPTIONS)
    if unknown:
        raise ConfigurationError(f"unknown option(s) {sorted(unknown)}: expected {sorted(_POOL_OPTIONS)}")
    url = url or env.get(URL_VAR)
    if url:
        params = parse_url(url)
    elif is_configured(env):
        params = {key: env[var] for var, key in _PG_VARS.items() if env.get(var)}
        if "port" in params:
            _parse("PGPORT", "int>=1", params["port"])
    else:
        raise ConfigurationError(
            f"no database configured: set {URL_VAR} (or PGHOST/PGDATABASE), "
            "or use the embedded server (marketstore[embedded])"
        )
    values = {}
    for name, (var, kind, default) in _POOL_OPTIONS.items():
        if name in options:
            values[name] = _parse(name, kind, options[name])
        elif env.get(var) not in (None, ""):
            values[name] = _parse(var, kind, env[var])
        else:
            values[name] = default
    if values["pooler"]:
        # PgBouncer refuses the startup packet outright ("unsupported startup parameter").
        for where, given in [("the URL", params)] + [(f"replica URL #{n}", parse_url(u))
                                                      for n, u in enumerate(values["replica_urls"], 1)]:
            if "options" in given:
                raise ConfigurationError(f"options (in {where}): not allowed with pooler='transaction'; "
                                         "PgBouncer refuses it at connect")
    return Settings(connect_params=params, **values)

