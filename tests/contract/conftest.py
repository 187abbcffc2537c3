"""The storage contract's subjects: one ``tree`` fixture, an empty directory on each storage.

``memory`` and ``shadow-memory`` need nothing; ``sftp`` logs a test user in on the real sshd,
``ftp`` logs in on a real legacy FTP server (pyftpdlib on local disk), and ``shadow`` is the
legacy server with every write replayed on the sshd, as a session in phase shadow has it.
For both shadows, the SFTP copy must end up as the legacy tree (checked after each test).
"""

from __future__ import annotations

import contextlib
import dataclasses
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from gateway import config
from gateway.core.memory_storage import MemoryStorage
from gateway.core.storage import Kind, Storage
from gateway.edges.logins import Logins
from gateway.features.metrics import Metrics
from gateway.features.shadow import ShadowStorage
from tests.helpers.gateway_env import PASSWORD, base_config, legacy_config, legacy_server
from tests.helpers.postgres import PASSWORD as POSTGRES_PASSWORD

KINDS = ["memory", "shadow-memory", "sftp", "ftp", "shadow"]
#: A legacy FTP server is what it is: the gateway relays its behaviour in phases legacy and
#: shadow. Where it differs from the interface's promise, these say how.
LEGACY = ("ftp", "shadow")


@dataclass
class Tree:
    """A storage and an empty directory on it to work in."""

    kind: str
    storage: Storage
    root: str
    #: Set by a test whose legacy server leaves the shadow's two copies different (why).
    diverges: str | None = None

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)


def snapshot(storage: Storage, root: str) -> dict[str, bytes | None]:
    """Every file (content) and directory (None) below ``root``."""
    found: dict[str, bytes | None] = {}
    for entry in storage.list_dir(root):
        path = posixpath.join(root, entry.name)
        if entry.attrs.kind is Kind.DIR:
            found[entry.name + "/"] = None
            found.update({f"{entry.name}/{k}": v for k, v in snapshot(storage, path).items()})
        elif entry.attrs.kind is Kind.FILE:
            stream, content = storage.open_read(path), b""
            while chunk := stream.read(65536):
                content += bytes(chunk)
            stream.close()
            found[entry.name] = content
    return found


@pytest.fixture(params=KINDS)
def tree(request: pytest.FixtureRequest) -> Iterator[Tree]:
    kind = request.param
    problems: list[str] = []
    stack = contextlib.ExitStack()
    request.addfinalizer(stack.close)

    def report(op: str, path: str, problem: str) -> None:
        problems.append(f"{op} {path}: {problem}")

    if kind == "memory":
        yield Tree(kind, MemoryStorage("/home/u"), "/home/u")
        return
    if kind == "shadow-memory":
        legacy, sftp = MemoryStorage("/home/u"), MemoryStorage("/srv/u")
        yield (tree := Tree(kind, ShadowStorage(legacy, "/home/u", sftp, "/srv/u", report), "/home/u"))
        if tree.diverges is None:
            assert problems == []
            assert snapshot(sftp, "/srv/u") == snapshot(legacy, "/home/u")
        return
    sshd = request.getfixturevalue("sshd")
    if kind == "sftp":
        user = request.getfixturevalue("user")
        cfg = config.parse(base_config(sshd))
        name, password = user.name, user.password
    else:
        legacy_ftp = stack.enter_context(legacy_server(request.getfixturevalue("tmp_path")))
        phase = "legacy" if kind == "ftp" else "shadow"
        doc = legacy_config(sshd, legacy_ftp, phase=phase, operation_timeout=5)  # a reply that never comes
        if kind == "shadow":
            user2 = request.getfixturevalue("user2")
            doc["routes"][0]["match"]["user"] = user2.name  # gwtest2 has an account on both
            name, password = user2.name, PASSWORD
        else:
            name, password = legacy_ftp.user, legacy_ftp.password
        cfg = config.parse(doc)
    logins = Logins(cfg, Metrics())
    route = next(r for r in cfg.routes if r.name != "partners") if kind == "sftp" else cfg.routes[0]
    login = logins.login(dataclasses.replace(route), name, password)
    try:
        yield (tree := Tree(kind, login.storage, login.root))
        if kind == "shadow" and tree.diverges is None:
            assert login.shadow_problems.take() == []
            assert isinstance(login.storage, ShadowStorage)
            sftp_root = posixpath.join("/", str(request.getfixturevalue("user2").home).lstrip("/"))
            assert snapshot(login.storage.sftp, sftp_root) == snapshot(login.storage.legacy, login.root)
    finally:
        login.storage.close()
        logins.close_backends()


@pytest.fixture(params=["sqlite", "postgres"])
def record_db(request: pytest.FixtureRequest, tmp_path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Where a usage record lives: an SQLite file, or a new database on the test PostgreSQL
    server (its password in PGPASSWORD, where libpq looks when the config gives none)."""
    if request.param == "sqlite":
        return str(tmp_path / "usage.sqlite")
    server = request.getfixturevalue("postgres")
    monkeypatch.setenv("PGPASSWORD", POSTGRES_PASSWORD)
    return server.url()
