"""Settings from the environment, validated once; the password is never printed.

``MARKETSTORE_DATABASE_URL`` (any libpq URL: ``sslmode`` and the other query
parameters pass straight through to libpq), else libpq's ``PG*`` variables.
Every other setting is one field of :class:`Settings`, which states its
environment variable, default and parser once (:func:`setting`); the
README's Configuration table is tested against those fields.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping

import psycopg2.extensions

from .errors import ConfigurationError

URL_VAR = "MARKETSTORE_DATABASE_URL"
POOLERS = ("transaction",)
TELEMETRY = ("on", "off")

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

# A parser takes the name the user typed (the variable or the option, which
# errors name) and the raw value, and returns the value or raises.
Parser = Callable[[str, Any], Any]


def integer(minimum: int) -> Parser:
    """A parser of whole numbers ``>= minimum``."""
    def parse(name: str, raw: Any) -> int:
        return _number(name, raw, int, minimum)
    return parse


def number(minimum: float) -> Parser:
    """A parser of finite numbers ``>= minimum`` (returned as ``float``)."""
    def parse(name: str, raw: Any) -> float:
        return _number(name, raw, float, minimum)
    return parse


def _number(name: str, raw: Any, kind: type, minimum: float):
    try:
        if isinstance(raw, bool):
            raise ValueError
        value = kind(str(raw).strip())
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r}: expected a number ({kind.__name__})") from None
    if value != value or value in (float("inf"), float("-inf")) or value < minimum:
        raise ConfigurationError(f"{name}={raw!r}: expected a finite number >= {minimum}")
    return value


def boolean(name: str, raw: Any) -> bool:
    """on/off, true/false, yes/no, 1/0 (any case), or a ``bool``."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigurationError(f"{name}={raw!r}: expected one of on/off, true/false, 1/0")


def text(name: str, raw: Any) -> str:
    """A non-empty string."""
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigurationError(f"{name}={raw!r}: expected a non-empty string")
    return raw


def choice(values: tuple[str, ...]) -> Parser:
    """A parser of one of ``values`` (any case), or ``None`` (unset, empty or "none")."""
    def parse(name: str, raw: Any) -> str | None:
        value = raw.strip().lower() if isinstance(raw, str) else raw
        if value in ("", "none"):
            return None
        if value not in values:
            raise ConfigurationError(f"{name}={raw!r}: expected one of {', '.join(values)} (or unset)")
        return value
    return parse


pooler = choice(POOLERS)
"""One of :data:`POOLERS` (any case), or ``None`` for none."""


def urls(name: str, raw: Any) -> tuple[str, ...]:
    """postgresql:// URLs: a list, or one comma-separated string; each must parse."""
    items = raw.split(",") if isinstance(raw, str) else raw
    if isinstance(items, (bytes, dict)) or not hasattr(items, "__iter__"):
        raise ConfigurationError(f"{name}: expected postgresql:// URLs (a list, or comma-separated)")
    found = tuple(u.strip() for u in items if not isinstance(u, str) or u.strip())
    for position, url in enumerate(found, 1):
        parse_url(url, f"{name} #{position}")  # names the entry, never echoes it (a password)
    return found


def setting(variable: str, parse: Parser, default: Any, *, libpq: str | None = None):
    """A field of :class:`Settings` read from ``variable`` (and, unset, from libpq's
    ``libpq`` variable) with ``parse``; ``default`` when neither is set."""
    return field(default=default, metadata={"variable": variable, "parse": parse, "libpq": libpq})


@dataclass(frozen=True)
class Settings:
    """Validated connection and pool settings. ``repr`` never shows the password."""

    connect_params: Mapping[str, str] = field(default_factory=dict)
    pool_size: int = setting("MARKETSTORE_POOL_SIZE", integer(1), 10)
    max_overflow: int = setting("MARKETSTORE_MAX_OVERFLOW", integer(0), 20)
    pool_timeout: float = setting("MARKETSTORE_POOL_TIMEOUT", number(0), 30.0)
    pool_recycle: float = setting("MARKETSTORE_POOL_RECYCLE", number(0), 3600.0)
    # Seconds a connection beyond pool_size idle waits to be taken again before it
    # is closed (0: at once): a steady load above pool_size in flight reuses its
    # connections instead of opening a backend per request.
    pool_idle_grace: float = setting("MARKETSTORE_POOL_IDLE_GRACE", number(0), 1.0)
    pool_pre_ping: bool = setting("MARKETSTORE_POOL_PRE_PING", boolean, True)
    statement_timeout: int | None = setting("MARKETSTORE_STATEMENT_TIMEOUT", integer(0), None)
    application_name: str = setting("MARKETSTORE_APPLICATION_NAME", text, "marketstore")
    # Seconds per host address tried: libpq waits for the OS otherwise (minutes
    # for a black-holed host). A connect_timeout in the URL wins over it.
    connect_timeout: int = setting("MARKETSTORE_CONNECT_TIMEOUT", integer(1), 10, libpq="PGCONNECT_TIMEOUT")
    # Scale-out (docs/SCALING.md): PgBouncer in transaction mode, read replicas.
    pooler: str | None = setting("MARKETSTORE_POOLER", pooler, None)
    replica_urls: tuple[str, ...] = setting("MARKETSTORE_REPLICA_URLS", urls, ())
    max_replica_lag: float = setting("MARKETSTORE_MAX_REPLICA_LAG", number(0.01), 1.0)
    # OpenTelemetry (marketstore.telemetry): unset, on when opentelemetry-api is installed.
    telemetry: str | None = setting("MARKETSTORE_TELEMETRY", choice(TELEMETRY), None)
    # The libpq parameters of each replica URL, in order: parsed once, by load_settings().
    replica_params: tuple[Mapping[str, str], ...] = field(default=(), repr=False)

    def __post_init__(self):
        if len(self.replica_params) != len(self.replica_urls):  # built directly, not by load_settings()
            object.__setattr__(self, "replica_params", tuple(parse_url(u) for u in self.replica_urls))

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
        return [safe_url(params) for params in self.replica_params]

    def replicas(self) -> list["Settings"]:
        """These settings (pool limits, pooler, timeouts) for each replica, in order."""
        return [replace(self, connect_params=params, replica_urls=(), replica_params=())
                for params in self.replica_params]

    def for_replica(self, url: str) -> "Settings":
        """These settings for the replica at ``url`` (one of :attr:`replica_urls`)."""
        return self.replicas()[self.replica_urls.index(url)]

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
            if f.name not in ("connect_params", "replica_urls", "replica_params")
        )
        replicas = f", replicas={self.replica_safe_urls()!r}" if self.replica_urls else ""
        return f"Settings(url={self.safe_url()!r}, {shown}{replicas})"

    __str__ = __repr__


SETTINGS = tuple(f for f in fields(Settings) if "variable" in f.metadata)
"""The fields of :class:`Settings` read from the environment (or given as options), in order."""


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
        integer(1)(f"{name} port", params["port"])
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
    names = {f.name for f in SETTINGS}
    unknown = set(options) - names
    if unknown:
        raise ConfigurationError(f"unknown option(s) {sorted(unknown)}: expected {sorted(names)}")
    url = url or env.get(URL_VAR)
    if url:
        params = parse_url(url)
    elif is_configured(env):
        params = {key: env[var] for var, key in _PG_VARS.items() if env.get(var)}
        if "port" in params:
            integer(1)("PGPORT", params["port"])
    else:
        raise ConfigurationError(
            f"no database configured: set {URL_VAR} (or PGHOST/PGDATABASE), "
            "or use the embedded server (marketstore[embedded])"
        )
    values = {}
    for setting_field in SETTINGS:
        name, meta = setting_field.name, setting_field.metadata
        parse, variable, libpq = meta["parse"], meta["variable"], meta["libpq"]
        if name in options:
            values[name] = None if options[name] is None else parse(name, options[name])
        elif env.get(variable) not in (None, ""):
            values[name] = parse(variable, env[variable])
        elif libpq and env.get(libpq) not in (None, ""):
            values[name] = parse(libpq, env[libpq])
        else:
            values[name] = setting_field.default
    replica_params = tuple(parse_url(u, f"replica URL #{n}") for n, u in enumerate(values["replica_urls"], 1))
    if values["pooler"]:
        # PgBouncer refuses the startup packet outright ("unsupported startup parameter").
        for where, given in [("the URL", params)] + [(f"replica URL #{n}", p)
                                                      for n, p in enumerate(replica_params, 1)]:
            if "options" in given:
                raise ConfigurationError(f"options (in {where}): not allowed with pooler='transaction'; "
                                         "PgBouncer refuses it at connect")
    return Settings(connect_params=params, replica_params=replica_params, **values)
