"""A throwaway PgBouncer in front of a test cluster, on a free loopback port.

Debian's ``pgbouncer`` binary, ``pool_mode = transaction`` unless told
otherwise, trust authentication, its config, log and pidfile in a temporary
directory that is always removed. PgBouncer refuses to run as root: as root it
runs as the cluster's OS user (see ``pgcluster``), like the server.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pgcluster import SUPERUSER, _os_user, free_port

START_TIMEOUT = 20  # seconds to wait for the listening socket


def find_pgbouncer() -> str | None:
    """The pgbouncer binary (PATH, else Debian's /usr/sbin), or ``None``."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None


class PgBouncer:
    """One PgBouncer process. Use :meth:`start`, always :meth:`stop`."""

    def __init__(self, binary: str, base: Path, port: int):
        self.binary, self.base, self.port = binary, base, port
        self.config = base / "pgbouncer.ini"
        self.log = base / "pgbouncer.log"
        self.process: subprocess.Popen | None = None

    @classmethod
    def start(cls, server_port: int, *, binary: str | None = None, pool_mode: str = "transaction",
              default_pool_size: int = 20, max_client_conn: int = 2000, **settings) -> "PgBouncer":
        """Start PgBouncer in front of ``127.0.0.1:server_port`` (every database);
        ``settings`` are more lines of its ``[pgbouncer]`` section."""
        binary = binary or find_pgbouncer()
        if binary is None:
            raise FileNotFoundError("pgbouncer not installed (Debian: apt-get install pgbouncer)")
        user = _os_user()
        base = Path(tempfile.mkdtemp(prefix="marketstore-pgbouncer-"))
        bouncer = cls(binary, base, 0)
        try:
            (base / "userlist.txt").write_text(f'"{SUPERUSER}" ""\n')
            conf = {
                "listen_addr": "127.0.0.1", "unix_socket_dir": str(base),
                "auth_type": "trust", "auth_file": str(base / "userlist.txt"),
                "admin_users": SUPERUSER, "stats_users": SUPERUSER,
                "pool_mode": pool_mode, "default_pool_size": default_pool_size,
                "max_client_conn": max_client_conn, "logfile": str(bouncer.log),
                "pidfile": str(base / "pgbouncer.pid"), "log_connections": 0, "log_disconnections": 0,
                **settings,
            }
            if user is not None:
                os.chown(base, user.pw_uid, user.pw_gid)
                os.chown(base / "userlist.txt", user.pw_uid, user.pw_gid)
            for attempt in range(5):  # the free port can be taken between probe and bind
                bouncer.port = free_port()
                lines = ["[databases]", f"* = host=127.0.0.1 port={server_port}", "[pgbouncer]",
                         f"listen_port = {bouncer.port}"] + [f"{k} = {v}" for k, v in conf.items()]
                bouncer.config.write_text("\n".join(lines) + "\n")
                if user is not None:
                    os.chown(bouncer.config, user.pw_uid, user.pw_gid)
                if bouncer._launch(user):
                    break
                if attempt == 4:
                    raise RuntimeError(f"pgbouncer did not start:\n{bouncer.log_text()[-2000:]}")
        except BaseException:
            bouncer.stop()
            raise
        return bouncer

    def _launch(self, user) -> bool:
        kwargs = {}
        if user is not None:
            kwargs = dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        self.process = subprocess.Popen([self.binary, str(self.config)], cwd=self.base, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:  # exited: e.g. the port was taken
                self.process = None
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.05)
        self.stop()
        return False

    def url(self, dbname: str = "postgres", user: str = SUPERUSER, **params) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}" + (f"?{query}" if query else "")

    def admin_url(self) -> str:
        """The admin console (``SHOW POOLS``, ``SHOW SERVERS``...)."""
        return self.url("pgbouncer")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the process (SIGINT: at once) and delete its files; safe to call twice."""
        process, self.process = self.process, None
        try:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
