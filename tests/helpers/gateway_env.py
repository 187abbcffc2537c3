"""What the tests share besides fixtures: configs for the test sshd, the gateway run in
process or as a process, a legacy FTP server, and small waits and seeds."""

from __future__ import annotations

import contextlib
import ftplib
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway import config
from tests.helpers.relay import Relay
from tests.helpers.sshd import OpenSSHServer, TestUser, free_port, free_ports, wait_port

#: The test users' password; the passive ports of in-process gateways.
PASSWORD = "Gw-test-pass-1"
PASSIVE = [41000, 41199]


def base_config(sshd: OpenSSHServer, **sections: Any) -> dict[str, Any]:
    """A config document with backend ``main`` on the test sshd and one catch-all route."""
    doc: dict[str, Any] = {
        "listen": {"address": "127.0.0.1", "port": 0, "passive_ports": PASSIVE},
        "limits": {"failed_login_delay": 0.2},
        "metrics": {"port": 0},
        "backends": {
            "main": {
                "host": "127.0.0.1",
                "port": sshd.port,
                "known_hosts": str(sshd.known_hosts),
                "operation_timeout": 10,
            }
        },
        "routes": [{"match": {"user": "*"}, "backend": "main", "auth": "passthrough", "root": "~"}],
    }
    doc.update(sections)
    return doc


class RunningGateway:
    """A gateway serving in a background thread of the test process."""

    def __init__(self, doc: dict[str, Any]) -> None:
        from gateway.edges.app import Gateway  # here: unit tests need not load the whole stack

        self.gateway = Gateway(config.parse(doc))
        self.host, self.port = self.gateway.address
        self._thread = threading.Thread(target=self.gateway.serve_forever, daemon=True)
        self._thread.start()

    def connect(self, timeout: float = 20) -> ftplib.FTP:
        """An ftplib client connected (not logged in)."""
        ftp = ftplib.FTP()
        ftp.connect(self.host, self.port, timeout=timeout)
        return ftp

    def login(self, user: TestUser, timeout: float = 20) -> ftplib.FTP:
        """An ftplib client logged in as ``user``."""
        ftp = self.connect(timeout)
        ftp.login(user.name, user.password)
        return ftp

    @property
    def url(self) -> str:
        return f"ftp://{self.host}:{self.port}"

    def stop(self) -> None:
        self.gateway.stop()
        self._thread.join(15)


def seed(user: TestUser, rel: str, data: bytes | str) -> Path:
    """Create a file in the user's backend home directly on disk (owned by the user)."""
    import shutil

    path = user.home / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    for p in [path, *path.relative_to(user.home).parents]:
        shutil.chown(user.home / p, user.name, user.name)
    return path


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def relay_known_hosts(sshd: OpenSSHServer, relay: Relay) -> Path:
    """A known_hosts file trusting the sshd's key under the relay's address."""
    path = sshd.workdir / f"known_hosts_relay_{relay.port}"
    path.write_text(f"[127.0.0.1]:{relay.port} " + sshd.known_hosts.read_text().split(" ", 1)[1])
    return path


def relayed_config(sshd: OpenSSHServer, relay: Relay, **backend: Any) -> dict[str, Any]:
    """gwtest2 reaches sshd through ``relay`` (backend ``relayed``); everyone else directly (``main``).

    No metrics listener: its /readyz probes would reach the backend through the relay too.
    """
    doc = base_config(sshd)
    doc["backends"]["relayed"] = {
        "host": "127.0.0.1",
        "port": relay.port,
        "known_hosts": str(relay_known_hosts(sshd, relay)),
        **backend,
    }
    doc["routes"].insert(0, {"match": {"user": "gwtest2"}, "backend": "relayed", "root": "~"})
    doc["metrics"] = {"enabled": False}
    return doc


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        """A client context trusting exactly this certificate (valid for 127.0.0.1)."""
        return ssl.create_default_context(cafile=str(self.cert))


def tls_config(
    sshd: OpenSSHServer, tls_files: TLSFiles, mode: str = "required", **extra: Any
) -> dict[str, Any]:
    """``base_config`` with FTPS (and an implicit listener on a free port)."""
    tls = {"mode": mode, "certfile": str(tls_files.cert), "keyfile": str(tls_files.key), "implicit_port": 0}
    return base_config(sshd, tls={**tls, **extra})


CLI = [sys.executable, "-m", "gateway"]


def write_config(tmp_path: Path, doc) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


class GatewayProcess:
    """``ftp-sftp-gateway run`` as a child process (config in tmp_path); stderr collected line by line."""

    def __init__(self, tmp_path, doc) -> None:
        self.port = doc["listen"]["port"] = free_port()
        workers = doc.get("workers", 1)  # worker i serves metrics on metrics.port + i
        workers = min(64, len(os.sched_getaffinity(0))) if workers == "auto" else int(workers)
        metrics = free_ports(workers)
        while self.port in range(metrics, metrics + workers):  # free_port may give a port twice
            metrics = free_ports(workers)
        doc["metrics"]["port"] = self.metrics_port = metrics
        path = write_config(tmp_path, doc)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [*CLI, "run", "--config", str(path)], stderr=subprocess.PIPE, text=True, env=env
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_port("127.0.0.1", self.port, timeout=30)
        if doc["metrics"].get("enabled", True):  # every worker up, not just the first
            for port in range(self.metrics_port, self.metrics_port + workers):
                wait_port("127.0.0.1", port, timeout=30)
        assert self.proc.poll() is None, "\n".join(["the gateway exited:", *self.lines])

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code


def connect_ftp(port: int) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=30)
    ftp.connect("127.0.0.1", port)
    return ftp


def start_upload(port: int, user: TestUser, name: str) -> tuple[ftplib.FTP, Any, bytes]:
    """A logged-in session with a STOR under way: (session, data socket, the 256 KiB block sent)."""
    ftp = connect_ftp(port)
    ftp.login(user.name, user.password)
    ftp.voidcmd("TYPE I")
    data = ftp.transfercmd(f"STOR {name}")
    chunk = os.urandom(256 * 1024)
    data.sendall(chunk)
    return ftp, data, chunk


@dataclass
class LegacyFTP:
    """A legacy FTP server (pyftpdlib, serving a local folder) for the migration tests."""

    port: int
    home: Path
    twin_home: Path  # the home of gwtest2's account there (the same name and password as on SFTP)
    user: str = "partner-a"
    password: str = "legacy-pw-1"
    #: An administrator account whose home holds every user's (for sync's service account).
    admin: str = "ftp-admin"
    admin_password: str = "legacy-admin-pw-1"
    stop: Callable[[], None] = lambda: None  # kills the server and every session (a crash)


@contextlib.contextmanager
def legacy_server(tmp_path: Path, tls: TLSFiles | None = None) -> Iterator[LegacyFTP]:
    """``legacy_ftp`` outside a fixture (requiring FTPS with ``tls``)."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
    from pyftpdlib.ioloop import IOLoop
    from pyftpdlib.servers import ThreadedFTPServer

    homes = tmp_path / "legacy"
    home, twin_home = homes / "partner-a", homes / "gwtest2"
    home.mkdir(parents=True)
    twin_home.mkdir()
    authorizer = DummyAuthorizer()
    legacy = LegacyFTP(0, home, twin_home)
    authorizer.add_user(legacy.user, legacy.password, str(home), perm="elradfmwMT")
    authorizer.add_user(legacy.admin, legacy.admin_password, str(homes), perm="elradfmwMT")
    authorizer.add_user("gwtest2", PASSWORD, str(twin_home), perm="elradfmwMT")
    attrs: dict[str, Any] = {"authorizer": authorizer, "banner": "legacy ftpd"}
    base: type = FTPHandler
    if tls is not None:
        base = TLS_FTPHandler
        attrs.update(
            certfile=str(tls.cert), keyfile=str(tls.key), tls_control_required=True, ssl_context=None
        )
        attrs.update(tls_data_required=True)
    handler = type("LegacyHandler", (base,), attrs)
    server = ThreadedFTPServer(("127.0.0.1", 0), handler, ioloop=IOLoop())
    server._exit, server._lock = threading.Event(), threading.Lock()
    legacy.port = server.socket.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            server.serve_forever(timeout=0.1, blocking=False, handle_exit=False)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def crash() -> None:
        stop.set()
        thread.join(5)
        server.close_all()

    legacy.stop = crash
    try:
        yield legacy
    finally:
        crash()


def legacy_config(
    sshd: OpenSSHServer, legacy: LegacyFTP, phase: str = "legacy", **ftp: Any
) -> dict[str, Any]:
    """``base_config`` with the legacy FTP backend and a route for its user in ``phase``."""
    doc = base_config(sshd)
    doc["backends"]["old-ftp"] = {"type": "ftp", "host": "127.0.0.1", "port": legacy.port, **ftp}
    route = {"name": "partners", "match": {"user": "partner-*"}, "backend": "main", "legacy": "old-ftp"}
    doc["routes"].insert(0, {**route, "phase": phase})
    return doc
