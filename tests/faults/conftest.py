"""Fault-injection fixtures and helpers: sshd instances a test may kill, configs, probes.

A test that kills its backend uses an sshd of its own (``fault_sshd``, or ``sshd_factory``
for special sshd settings), never the session-wide ``sshd`` the other tests share. Relay
faults (stall, blackhole, refuse, reset) go through the ``relay`` fixture in front of the
shared sshd: they never harm the sshd itself.

Every helper returns what the user would see (a reply line, the bytes received, the files
in the home directory) so that a failing assertion shows the observed reply.
"""

from __future__ import annotations

import contextlib
import ftplib
import io
import os
import pwd
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.helpers.gateway_env import RunningGateway, base_config, relay_known_hosts, relayed_config
from tests.helpers.relay import Relay
from tests.helpers.sshd import BASE, OpenSSHServer, TestUser

T = TypeVar("T")

#: Seconds a client waits for any reply or data before giving up (no test may hang).
CLIENT_TIMEOUT = 30
#: The hidden temporary name of an atomic upload in progress (docs/user-guide.md, "Behaviour worth knowing").
TEMP_UPLOAD = re.compile(r"^\.ftpgw-upload-[0-9a-f]{8}-")


# --- sshd instances a test may kill


def _children() -> dict[int, list[int]]:
    """Every process's children, from the ppid field of /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited meanwhile
        ppid = int(text[text.rindex(")") + 2 :].split()[1])  # after "pid (comm) state"
        children.setdefault(ppid, []).append(int(stat.parent.name))
    return children


def descendants(pid: int) -> set[int]:
    """The processes below ``pid`` (children, their children, ...)."""
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def kill_tree(pid: int) -> set[int]:
    """SIGKILL ``pid`` and all its descendants at once; the processes killed.

    Everything is frozen (SIGSTOP) first, rescanning until no new process appears, so that
    neither the listener nor a per-connection sshd can fork a survivor meanwhile.
    """
    frozen: set[int] = set()
    new = {pid}
    while new:
        for p in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGSTOP)
        frozen |= new
        new = descendants(pid) - frozen
    for p in frozen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    return frozen


def kill(server: OpenSSHServer) -> set[int]:
    """``kill -9`` the sshd: the listener and every per-connection process it forked."""
    if server.proc is None:
        return set()
    killed = kill_tree(server.proc.pid)
    server.proc.wait(10)
    server.proc = None
    return killed


def sftp_subsystems(server: OpenSSHServer, user: TestUser) -> set[int]:
    """The processes serving ``user``'s SFTP channels on ``server`` (internal-sftp forks one
    per channel below the user's ``sshd: user@notty`` process, both running as the user)."""
    assert server.proc is not None
    uid = pwd.getpwnam(user.name).pw_uid
    tree = _children()
    return {
        child
        for pid in descendants(server.proc.pid)
        if _uid(pid) == uid
        for child in tree.get(pid, [])
        if _uid(child) == uid
    }


def _uid(pid: int) -> int | None:
    """The real uid of process ``pid`` (None once it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def stop_listener(server: OpenSSHServer) -> None:
    """Stop only the listening sshd (SIGTERM), as ``systemctl restart ssh`` does: sessions live on."""
    server.stop()


@pytest.fixture
def sshd_factory(_users: dict[str, TestUser]) -> Iterator[Callable[..., OpenSSHServer]]:
    """Start sshd instances of this test's own (``OpenSSHServer`` keywords); all killed afterwards."""
    started: list[OpenSSHServer] = []

    def start(name: str = "sshd", **options: Any) -> OpenSSHServer:
        server = OpenSSHServer(BASE / "sshd-faults" / name, **options)
        server.workdir.mkdir(parents=True, exist_ok=True)
        server.log.write_bytes(b"")  # this test's log only
        started.append(server.start())
        return server

    yield start
    for server in started:
        kill(server)


@pytest.fixture
def fault_sshd(sshd_factory: Callable[..., OpenSSHServer]) -> OpenSSHServer:
    """An sshd of this test's own, on its own port, that the test may kill and restart."""
    return sshd_factory()


@pytest.fixture
def full_disk(user: TestUser) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted at <home>/small, owned by the user."""
    mnt = user.home / "small"
    mnt.mkdir()
    pw = pwd.getpwnam(user.name)
    options = f"size=1m,uid={pw.pw_uid},gid={pw.pw_gid},mode=0755"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


# --- gateway configs


def fault_config(server: OpenSSHServer, relay: Relay | None = None, **backend: Any) -> dict[str, Any]:
    """Every user on backend ``main`` = ``server`` (through ``relay`` if given); ``backend`` overrides.

    Short timeouts (connect 3 s, operations 5 s) unless overridden; no metrics listener, so no
    /readyz probes reach the backend.
    """
    doc = base_config(server)
    main = doc["backends"]["main"]
    main.update({"connect_timeout": 3, "operation_timeout": 5})
    if relay is not None:
        main.update({"port": relay.port, "known_hosts": str(relay_known_hosts(server, relay))})
    main.update(backend)
    doc["metrics"] = {"enabled": False}
    return doc


def split_config(sshd: OpenSSHServer, relay: Relay, **backend: Any) -> dict[str, Any]:
    """gwtest2 reaches sshd through ``relay`` (backend ``relayed``); everyone else directly (``main``).

    Short connect timeouts (3 s) on both backends unless overridden.
    """
    doc = relayed_config(sshd, relay, **{"connect_timeout": 3, **backend})
    doc["backends"]["main"].update({"connect_timeout": 3, "operation_timeout": 5})
    return doc


# --- what the user sees


def pooled(gw: RunningGateway) -> dict[str, int]:
    """The gateway's SSH connections to backend ``main``, by state (active: a session's SFTP
    channel is open on it; idle: none), as ``ftpgw_backend_connections`` reports them."""
    counts = gw.gateway._connection_counts()
    return {state: n for (backend, state), n in counts.items() if backend == "main"}


def attempt(call: Callable[[], T]) -> T | str:
    """The result of ``call``, or the FTP reply (or client error) it failed with, as text."""
    try:
        return call()
    except ftplib.Error as err:
        return str(err)  # the reply line: "451 ...", "421 ...", ...
    except EOFError:
        return "EOF: the gateway closed the control connection"
    except OSError as err:
        return f"{type(err).__name__}: {err}"


def command(ftp: ftplib.FTP, line: str) -> str:
    """The reply to the command ``line``, whatever its code."""
    return attempt(lambda: ftp.sendcmd(line))


def retr(ftp: ftplib.FTP, name: str) -> bytes | str:
    """The content of ``name`` (binary RETR), or the reply it failed with."""

    def run() -> bytes:
        buf = io.BytesIO()
        ftp.retrbinary(f"RETR {name}", buf.write)
        return buf.getvalue()

    return attempt(run)


def stor(ftp: ftplib.FTP, name: str, data: bytes, verb: str = "STOR") -> str:
    """The final reply to a binary STOR (or ``verb``: APPE) of ``data``, also when the gateway
    cut the data connection."""
    try:
        return ftp.storbinary(f"{verb} {name}", io.BytesIO(data))
    except ftplib.Error as err:
        return str(err)
    except OSError:
        # The gateway dropped the data connection while we were still sending (as an FTP
        # server does on an aborted upload): the verdict is waiting on the control channel.
        return attempt(ftp.getresp)


def login(gw: RunningGateway, user: TestUser) -> ftplib.FTP:
    """A session of ``user`` on the gateway, every socket bounded by CLIENT_TIMEOUT."""
    ftp = gw.login(user, timeout=CLIENT_TIMEOUT)
    ftp.voidcmd("TYPE I")
    return ftp


def read_until_eof(conn: Any) -> int:
    """Bytes read from a data connection until it ends (EOF, reset or timeout)."""
    received = 0
    try:
        while chunk := conn.recv(1 << 20):
            received += len(chunk)
    except OSError:
        pass
    conn.close()
    return received


def cut_download(ftp: ftplib.FTP, name: str, fault: Callable[[], object]) -> tuple[int, str, float]:
    """RETR ``name``, inject ``fault`` after the first bytes: (bytes received, final reply, seconds)."""
    conn = ftp.transfercmd(f"RETR {name}")
    received = len(conn.recv(65536))
    fault()
    started = time.monotonic()
    received += read_until_eof(conn)
    reply = attempt(ftp.getresp)
    return received, reply, time.monotonic() - started


def cut_upload(
    ftp: ftplib.FTP, name: str, fault: Callable[[], object], size: int = 32 * 2**20
) -> tuple[str, float]:
    """STOR ``name``, inject ``fault`` after 1 MiB, keep sending up to ``size``: (final reply, seconds)."""
    conn = ftp.transfercmd(f"STOR {name}")
    conn.sendall(os.urandom(2**20))
    fault()
    started = time.monotonic()
    block = os.urandom(2**20)
    with contextlib.suppress(OSError):  # the gateway may drop the data connection: that is fine
        for _ in range(size // 2**20 - 1):
            conn.sendall(block)
    conn.close()
    reply = attempt(ftp.getresp)
    return reply, time.monotonic() - started


def strays(directory: Path, expected: set[str]) -> set[str]:
    """Names in ``directory`` that are neither ``expected`` nor an atomic upload's temporary file."""
    return (
        {p.name for p in directory.iterdir()}
        - expected
        - {p.name for p in directory.iterdir() if TEMP_UPLOAD.match(p.name)}
    )


def temp_files(directory: Path) -> set[str]:
    """The atomic-upload temporary files in ``directory``."""
    return {p.name for p in directory.iterdir() if TEMP_UPLOAD.match(p.name)}


def assert_alive(gw: RunningGateway, user: TestUser, expect: list[str] | None = None) -> None:
    """The gateway serves a new login: NOOP, NLST (equal to ``expect`` if given), QUIT."""
    ftp = login(gw, user)
    try:
        assert command(ftp, "NOOP").startswith("200")
        names = attempt(ftp.nlst)
        assert isinstance(names, list), names
        if expect is not None:
            assert sorted(names) == sorted(expect)
    finally:
        with contextlib.suppress(ftplib.all_errors):
            ftp.quit()
