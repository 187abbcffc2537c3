"""The reference server beside the gateway: vsftpd on local disk, the same users and files
(ProFTPD where vsftpd lacks the feature).

A differential test runs one client script against both and compares what a user sees:
reply codes, listed names, the files on disk. ``servers`` gives both, vsftpd first; between
the two runs the user's home is emptied and seeded again by the test.
"""

from __future__ import annotations

import ftplib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.helpers.gateway_env import RunningGateway
from tests.helpers.proftpd import ProftpdServer
from tests.helpers.sshd import BASE, TestUser, reset_home
from tests.helpers.vsftpd import VsftpdServer


@pytest.fixture(scope="session")
def vsftpd() -> Iterator[VsftpdServer]:
    server = VsftpdServer(BASE / "vsftpd", passive=(41500, 41549)).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def proftpd() -> Iterator[ProftpdServer]:
    server = ProftpdServer(BASE / "proftpd", passive=(41600, 41619)).start()
    yield server
    server.stop()


@pytest.fixture
def vsftpd_unchrooted() -> Iterator[VsftpdServer]:
    """vsftpd without chroot: users log in at their home directory, absolute paths are real."""
    server = VsftpdServer(BASE / "vsftpd-unchrooted", passive=(41550, 41559), chroot=False).start()
    yield server
    server.stop()


@dataclass
class Server:
    """An FTP server under comparison: its name ("vsftpd" or "gateway") and address."""

    name: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"ftp://{self.host}:{self.port}"

    def connect(self, encoding: str = "utf-8") -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=20, encoding=encoding)
        ftp.connect(self.host, self.port)
        return ftp

    def login(self, user: TestUser, encoding: str = "utf-8") -> ftplib.FTP:
        ftp = self.connect(encoding)
        ftp.login(user.name, user.password)
        return ftp


@pytest.fixture
def servers(vsftpd: VsftpdServer, gw: RunningGateway) -> list[Server]:
    """vsftpd and the gateway (root: ~), both serving the test users' homes."""
    return [Server("vsftpd", "127.0.0.1", vsftpd.port), Server("gateway", gw.host, gw.port)]


@pytest.fixture
def ftp_latin(gw: RunningGateway, user: TestUser) -> Iterator[ftplib.FTP]:
    """A gateway session whose client sends and reads bytes 1:1 (ftplib with Latin-1)."""
    ftp = Server("gateway", gw.host, gw.port).login(user, encoding="latin-1")
    yield ftp
    ftp.close()


def compare(
    servers: list[Server], user: TestUser, seed: Callable[[], Any], script: Callable[[Server], Any]
) -> dict[str, Any]:
    """Run ``script`` against each server on a freshly seeded home; {server name: outcome}."""
    outcomes = {}
    for server in servers:
        reset_home(user.home, user.name)
        seed()
        outcomes[server.name] = script(server)
    return outcomes


def reply(call: Callable[[], Any]) -> str:
    """The reply a command got, error replies included (a string either way)."""
    try:
        return str(call())
    except ftplib.Error as err:
        return str(err)
