"""A throwaway PostgreSQL cluster that a test can start, stop, restart and kill.

``initdb`` + ``pg_ctl`` on a free TCP port of 127.0.0.1, in a temporary
directory that is always removed. The binaries are the machine's
(``MARKETSTORE_TEST_PG_BINDIR``, ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin``,
``initdb`` on PATH), else the ones bundled with pgserver, so this works on a CI
machine and on a laptop alike. PostgreSQL refuses to run as root: as root, the
cluster runs as an unprivileged OS user (``MARKETSTORE_TEST_PG_OS_USER``, else
``postgres``, ``pgserver`` or ``nobody``) that owns its directory.

Authentication: the superuser ``postgres`` is trusted on 127.0.0.1; every other
role must give its password (scram-sha-256), so tests of secrecy use a real
password that the server really checks. No SSL: ``sslmode=require`` must fail.
"""
from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path
from urllib.parse import quote

import psycopg2

import marketstore

SUPERUSER = "postgres"
START_TIMEOUT = 60  # seconds pg_ctl waits for start/stop


class ClusterUnavailable(RuntimeError):
    """No PostgreSQL binaries (initdb, pg_ctl, postgres) were found."""


def _has_binaries(bindir: str | None) -> bool:
    return bool(bindir) and all(os.access(os.path.join(bindir, b), os.X_OK)
                                for b in ("initdb", "pg_ctl", "postgres"))


def _version_key(path: str) -> tuple:
    return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)


def find_bindir() -> str:
    """The directory holding initdb, pg_ctl and postgres; raises ClusterUnavailable."""
    candidates = [os.environ.get("MARKETSTORE_TEST_PG_BINDIR")]
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                             timeout=10).stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates += sorted(glob.glob("/usr/local/opt/postgresql*/bin") + glob.glob("/opt/homebrew/opt/postgresql*/bin"),
                         key=_version_key, reverse=True)
    initdb = shutil.which("initdb")
    candidates.append(os.path.dirname(initdb) if initdb else None)
    for bindir in candidates:
        if _has_binaries(bindir):
            return bindir
    try:  # the pip-installed PostgreSQL of the 'embedded' extra
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pgserver import _commands
        bindir = str(_commands.POSTGRES_BIN_PATH)
    except Exception:  # noqa: BLE001 - any failure to import pgserver means "not available"
        bindir = None
    if _has_binaries(bindir):
        return bindir
    raise ClusterUnavailable("no PostgreSQL binaries: install PostgreSQL, or marketstore[embedded] (pgserver), "
                             "or set MARKETSTORE_TEST_PG_BINDIR")


def _os_user() -> pwd.struct_passwd | None:
    """The unprivileged user to run PostgreSQL as when we are root; None when we are not."""
    if os.geteuid() != 0:
        return None
    names = [os.environ.get("MARKETSTORE_TEST_PG_OS_USER"), "postgres", "pgserver", "nobody"]
    for name in filter(None, names):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise ClusterUnavailable("running as root and no unprivileged user (postgres, pgserver, nobody) to run PostgreSQL")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """One throwaway cluster. Use :meth:`create`, and always :meth:`destroy`."""

    def __init__(self, bindir: str, base: Path, user: pwd.struct_passwd | None):
        self.bindir = bindir
        self.base = base
        self.data = base / "data"
        self.log = base / "server.log"
        self.user = user
        self.port = 0

    # -- lifecycle -------------------------------------------------------------
    @classmethod
    def create(cls, **settings) -> "Cluster":
        """initdb a new cluster and start it on a free port; ``settings`` go to postgresql.conf."""
        bindir, user = find_bindir(), _os_user()
        base = Path(tempfile.mkdtemp(prefix="marketstore-cluster-"))
        cluster = cls(bindir, base, user)
        try:
            if user is not None:
                os.chown(base, user.pw_uid, user.pw_gid)
            cluster._run("initdb", "-D", str(cluster.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                         "--locale=C", "--no-sync")
            cluster._configure(settings)
            for attempt in range(5):  # the free port can be taken between probe and bind
                cluster.port = free_port()
                cluster._write_port()
                try:
                    cluster.start()
                    break
                except subprocess.CalledProcessError:
                    if attempt == 4 or "Address already in use" not in cluster.log_text():
                        raise
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def _configure(self, settings: dict) -> None:
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.base}'",
            "max_connections": 200,
            "shared_buffers": "'32MB'",
            "fsync": "off",  # a throwaway cluster: OS crashes are not under test
            "full_page_writes": "off",
            "deadlock_timeout": "'100ms'",  # deadlock tests finish quickly
            "ssl": "off",
            "log_min_messages": "warning",
            "log_connections": "off",
        }
        conf.update({key: value for key, value in settings.items()})
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write("\n# marketstore reliability tests\n")
            fh.writelines(f"{key} = {value}\n" for key, value in conf.items())
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {SUPERUSER} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            # pg_basebackup and a standby's walreceiver (create_standby)
            f"local replication {SUPERUSER} trust\n"
            f"host replication {SUPERUSER} 127.0.0.1/32 trust\n"
        )

    def create_standby(self, **settings) -> "Cluster":
        """A streaming hot standby of this cluster (``pg_basebackup -R``), started on a free port.

        This cluster needs ``wal_level = replica`` (the default) and free
        ``max_wal_senders``; ``settings`` go to the standby's postgresql.conf.
        Always :meth:`destroy` it.
        """
        base = Path(tempfile.mkdtemp(prefix="marketstore-standby-"))
        standby = type(self)(self.bindir, base, self.user)
        try:
            if self.user is not None:
                os.chown(base, self.user.pw_uid, self.user.pw_gid)
            standby._run("pg_basebackup", "-D", str(standby.data), "-h", "127.0.0.1", "-p", str(self.port),
                         "-U", SUPERUSER, "-R", "-X", "stream", "--no-sync", "-c", "fast")
            # The copied postgresql.conf points at the primary's port and socket
            # directory: later lines win.
            conf = {"unix_socket_directories": f"'{base}'", "hot_standby": "on", **settings}
            with open(standby.data / "postgresql.conf", "a") as fh:
                fh.write("\n# marketstore standby\n")
                fh.writelines(f"{key} = {value}\n" for key, value in conf.items())
            for attempt in range(5):
                standby.port = free_port()
                standby._write_port()
                try:
                    standby.start()
                    break
                except subprocess.CalledProcessError:
                    if attempt == 4 or "Address already in use" not in standby.log_text():
                        raise
        except BaseException:
            standby.destroy()
            raise
        return standby

    def create_database(self, name: str, migrate: bool = True) -> str:
        """Create database ``name`` (migrated by ``run_migrations`` unless ``migrate=False``); returns its URL."""
        admin = psycopg2.connect(self.url())
        admin.autocommit = True
        try:
            with admin.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            admin.close()
        if migrate:
            marketstore.run_migrations(self.url(name))
        return self.url(name)

    def kill(self) -> None:
        """Stop the server at once, as a crash would (``pg_ctl stop -m immediate``); :meth:`start` recovers."""
        self.stop("immediate")

    def _write_port(self) -> None:
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write(f"port = {self.port}\n")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(START_TIMEOUT), "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", str(START_TIMEOUT), "stop")

    def restart(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", mode, "-w",
                  "-t", str(START_TIMEOUT), "restart")

    def is_running(self) -> bool:
        if not self.data.exists():
            return False
        result = self._run("pg_ctl", "-D", str(self.data), "status", check=False)
        return result.returncode == 0

    def ensure_running(self) -> None:
        if not self.is_running():
            self.start()

    def destroy(self) -> None:
        """Stop the server (immediately) and delete every file; safe to call twice."""
        try:
            if self.is_running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    # -- addresses ---------------------------------------------------------------
    def url(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None,
            **params) -> str:
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
        query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(dbname, safe='')}" + (f"?{query}" if query else "")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    # -- running the binaries ----------------------------------------------------
    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        kwargs = {}
        if self.user is not None:
            kwargs = dict(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        if self.user is not None:
            env["HOME"] = str(self.base)
        result = subprocess.run([os.path.join(self.bindir, program), *args], cwd=self.base, env=env,
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=START_TIMEOUT + 30, **kwargs)
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, [program, *args],
                                                result.stdout, result.stderr + "\n--- server log ---\n"
                                                + self.log_text()[-4000:])
        return result
