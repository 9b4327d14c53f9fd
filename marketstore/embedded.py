"""The embedded PostgreSQL default, run through the optional ``pgserver`` package.

The server is started on first use and deliberately left running when Python
exits, so later runs (and other processes) reuse it in milliseconds.
"""
from __future__ import annotations

import logging
import os
import re
import stat
import time
import warnings
from pathlib import Path
from urllib.parse import quote

from .config import URL_VAR
from .errors import EmbeddedUnavailable
from .extras import require

logger = logging.getLogger(__name__)

__all__ = ["EmbeddedUnavailable", "data_dir", "embedded_url", "stop"]


def _pgserver():
    with warnings.catch_warnings():
        # pgserver resolves platformdirs.user_runtime_path() at import time, which
        # warns on every run when XDG_RUNTIME_DIR is unset (containers, CI, cron).
        warnings.simplefilter("ignore")
        return require("pgserver", "embedded", otherwise=f"set {URL_VAR} to a PostgreSQL server")


def data_dir() -> Path:
    """Return the embedded cluster's data directory (PGDATA).

    ``$MARKETSTORE_EMBEDDED_DIR`` if set, else ``$XDG_DATA_HOME/marketstore/pgdata``,
    else ``~/.local/share/marketstore/pgdata``.
    """
    override = os.environ.get("MARKETSTORE_EMBEDDED_DIR", "").strip()
    if override:
        return Path(override).expanduser()
    # Not platformdirs.user_data_path(): the same on Linux, but on macOS it is under
    # "Application Support", and pgserver cannot start a cluster in a path with a space.
    xdg = os.environ.get("XDG_DATA_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "marketstore" / "pgdata"


def _running(pgdata: Path):
    """PostmasterInfo of a server that is up and accepting connections, else None."""
    from pgserver.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):  # postmaster.pid is written in stages
        return None
    if info is None or not info.is_running() or info.status != "ready":
        return None
    if info.socket_path is not None and not info.socket_path.exists():
        return None  # stale postmaster.pid whose pid was reused, e.g. after a container restart
    return info


def embedded_url(database: str = "postgres") -> str:
    """Start the embedded PostgreSQL if needed and return a libpq URL for ``database``.

    The URL (``postgresql://postgres@/DB?host=SOCKET_DIR&port=5432``) connects over a
    unix socket as the trusted superuser ``postgres``; only the ``postgres`` database
    exists at first. Raises MissingExtraError when pgserver is not installed,
    EmbeddedUnavailable when the data directory cannot be used.
    """
    pgserver = _pgserver()
    pgdata = data_dir().expanduser().resolve()
    info = _running(pgdata)
    # pgserver passes "-k DATADIR" unquoted through pg_ctl to /bin/sh, and -k splits on commas.
    if info is None and os.name == "posix" and re.search(r"[^\w@%+=:./~-]", str(pgdata)):
        raise EmbeddedUnavailable(f"the embedded PostgreSQL cannot use {pgdata} (spaces or shell "
                                  "characters in the path): set MARKETSTORE_EMBEDDED_DIR elsewhere")
    if info is None:
        import fasteners

        # pgserver.get_server() races on mkdir(exist_ok=False) and locks under XDG_RUNTIME_DIR,
        # which differs between sessions: make the dir here, lock beside it.
        pgdata.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        with fasteners.InterProcessLock(str(pgdata.parent / f".{pgdata.name}.lock")):
            as_root = os.name == "posix" and os.geteuid() == 0
            dirs = (pgdata, pgserver._commands.POSTGRES_BIN_PATH, pgserver.PostgresServer.runtime_path / "x")
            before = {p: p.stat().st_mode for d in dirs for p in d.parents if p.exists()} if as_root else {}
            # cleanup_mode=None: keep the server running after exit so the next run reuses it.
            info = pgserver.PostgresServer(pgdata, cleanup_mode=None).get_postmaster_info()
            if as_root:
                # As root, pgserver runs postgres as uid 'pgserver' but gid 0 (subprocess user=
                # without group=) and makes every ancestor of the data, binary and socket dirs
                # g+rx,o+rx, so /root turns 0755. Traversal is all postgres and pg_ctl need:
                # put back the original modes plus g+x,o+x (/root ends 0711, not listable).
                for path, mode in before.items():
                    wanted = stat.S_IMODE(mode) | stat.S_IXGRP | stat.S_IXOTH
                    if stat.S_IMODE(path.stat().st_mode) != wanted:
                        path.chmod(wanted)
        logger.info("embedded PostgreSQL ready in %.1fs, data in %s", time.monotonic() - started, pgdata)
    if info.socket_dir is not None:
        # The port is pinned because postgres took it from the starter's PGPORT, and libpq
        # would look for .s.PGSQL.$PGPORT from the caller's.
        return f"postgresql://postgres@/{quote(database, safe='')}?host={quote(str(info.socket_dir))}&port={info.port}"
    return f"postgresql://postgres@{info.hostname}:{info.port}/{quote(database, safe='')}"


def stop() -> None:
    """Stop the embedded PostgreSQL for data_dir() if it is running (for tests and maintenance)."""
    pgserver = _pgserver()
    pgdata = data_dir().expanduser().resolve()
    if _running(pgdata) is None:
        return
    # pg_ctl refuses to run as root; run it as the cluster's owner ('pgserver' when started by root).
    user = pgdata.owner() if os.name == "posix" and os.geteuid() == 0 else None
    pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)
    logger.info("embedded PostgreSQL stopped, data in %s", pgdata)
