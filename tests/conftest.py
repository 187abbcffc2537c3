"""Shared fixtures: a real OpenSSH sshd with real Unix users, and the real gateway in front."""

from __future__ import annotations

import ftplib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.gateway_env import (
    PASSWORD,
    GatewayProcess,
    LegacyFTP,
    RunningGateway,
    TLSFiles,
    base_config,
    legacy_server,
)
from tests.helpers.postgres import PostgresServer, binaries
from tests.helpers.relay import Relay
from tests.helpers.sshd import BASE, OpenSSHServer, TestUser, ensure_user, reset_home


@pytest.fixture(scope="session")
def sshd() -> Iterator[OpenSSHServer]:
    server = OpenSSHServer(BASE / "sshd").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the tests' own (skipped, saying why, where none is installed)."""
    if binaries() is None:
        pytest.skip("PostgreSQL is not installed: bash tests/run.sh installs Debian's postgresql package")
    server = PostgresServer(BASE / "postgres").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _users() -> dict[str, TestUser]:
    return {name: ensure_user(name, PASSWORD) for name in ("gwtest1", "gwtest2")}


@pytest.fixture
def user(_users: dict[str, TestUser]) -> TestUser:
    """gwtest1 with an empty home directory (its backend root)."""
    u = _users["gwtest1"]
    reset_home(u.home, u.name)
    return u


@pytest.fixture
def user2(_users: dict[str, TestUser]) -> TestUser:
    """gwtest2 with an empty home directory."""
    u = _users["gwtest2"]
    reset_home(u.home, u.name)
    return u


@pytest.fixture
def gateway_factory(sshd: OpenSSHServer) -> Iterator[Callable[..., RunningGateway]]:
    """Start gateways from config documents (``base_config`` plus overrides)."""
    running: list[RunningGateway] = []

    def start(doc: dict[str, Any] | None = None) -> RunningGateway:
        gw = RunningGateway(doc or base_config(sshd))
        running.append(gw)
        return gw

    yield start
    for gw in running:
        gw.stop()


@pytest.fixture
def gw(gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    """The default gateway: every user routed to the test sshd, root = login directory."""
    return gateway_factory()


@pytest.fixture
def ftp(gw: RunningGateway, user: TestUser) -> Iterator[ftplib.FTP]:
    """An ftplib session logged in as gwtest1."""
    client = gw.login(user)
    yield client
    try:
        client.quit()
    except (ftplib.Error, OSError, EOFError):
        client.close()


@pytest.fixture
def relay(sshd: OpenSSHServer) -> Iterator[Relay]:
    """A TCP relay in front of the test sshd (can stall or reset connections)."""
    r = Relay(("127.0.0.1", sshd.port))
    yield r
    r.close()


@pytest.fixture(scope="session")
def tls_files() -> TLSFiles:
    """A self-signed certificate for 127.0.0.1 and its key (made with openssl)."""
    workdir = BASE / "tls"
    workdir.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(workdir / "gateway.crt", workdir / "gateway.key")
    if not files.cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "30",
             "-keyout", str(files.key), "-out", str(files.cert)],
            check=True, capture_output=True,
        )  # fmt: skip
    return files


@pytest.fixture
def process(tmp_path):
    started: list[GatewayProcess] = []

    def start(doc) -> GatewayProcess:
        started.append(GatewayProcess(tmp_path, doc))
        return started[-1]

    yield start
    for gw in started:
        if gw.proc.poll() is None:
            gw.proc.kill()
            gw.proc.wait(10)


@pytest.fixture(params=["plain"])
def legacy_ftp(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LegacyFTP]:
    """An organisation's old FTP server: user partner-a, home a local folder.

    Parametrize indirectly with "ftps" for one that requires explicit FTPS (the test
    certificate of ``tls_files``).
    """
    files = request.getfixturevalue("tls_files") if request.param == "ftps" else None
    with legacy_server(tmp_path, files) as legacy:
        yield legacy
