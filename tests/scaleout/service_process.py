"""examples/service run by uvicorn with worker processes on a free loopback port.

Started as its own process group so that :meth:`Service.stop` can always end
the supervisor and every worker it forked, whatever state they are in.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pgcluster import free_port

ROOT = Path(__file__).resolve().parents[2]
APP_DIR = ROOT / "examples" / "service"
START_TIMEOUT = 90  # seconds for every worker to import and run its lifespan startup (2 busy cores)


class Service:
    """One uvicorn: use :meth:`start`, always :meth:`stop`."""

    def __init__(self, process: subprocess.Popen, port: int, log: Path, workers: int):
        self.process, self.port, self.log, self.workers = process, port, log, workers

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, env: dict[str, str], *, workers: int = 2, app: str = "app:app",
              http: str = "serving:HTTPProtocol", loop: str = "auto") -> "Service":
        """uvicorn ``app`` (a module of examples/service) with ``workers`` processes, its ``http``
        protocol and event ``loop``; ``env`` adds to a clean environment (no
        ``MARKETSTORE_*``/``PG*`` of the caller). Returns once every worker has started."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETSTORE_", "PG"))}
        clean.update(env)
        for attempt in range(5):  # the free port can be taken between probe and bind
            port = free_port()
            log = Path(tempfile.mkstemp(prefix="marketstore-service-", suffix=".log")[1])
            with open(log, "w") as out:
                process = subprocess.Popen(
                    [sys.executable, "-m", "uvicorn", app, "--app-dir", str(APP_DIR), "--host", "127.0.0.1",
                     "--port", str(port), "--workers", str(workers), "--no-access-log", "--timeout-keep-alive", "30",
                     "--http", http, "--loop", loop],
                    env=clean, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            service = cls(process, port, log, workers)
            if service._wait_started():
                return service
            text = service.log_text()
            service.stop()
            if "address already in use" not in text.lower() or attempt == 4:
                raise RuntimeError(f"uvicorn did not start:\n{text[-3000:]}")
        raise AssertionError("unreachable")

    def _wait_started(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self.log_text().count("Application startup complete.") >= self.workers:
                return True
            time.sleep(0.1)
        return False

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> str:
        """SIGTERM (graceful: each worker's lifespan shutdown runs), then SIGKILL of the
        group after 20 s; returns the log. Safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # workers left behind, if any
        except ProcessLookupError:
            pass
        self.process.wait(10)
        text = self.log_text()
        self.log.unlink(missing_ok=True)
        return text
