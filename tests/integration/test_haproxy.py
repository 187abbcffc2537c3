"""The shipped HAProxy recipe (deploy/haproxy/haproxy.cfg) in front of two gateway processes.

All on loopback, with distinct addresses so that each hop is visible (127.0.0.0/8 is all on
``lo`` on Linux): HAProxy listens on 127.0.0.2 (the control port and both instances'
passive ranges) and connects to the gateways (127.0.0.1, one control port each) from
127.0.0.9, the only address the gateways trust to send PROXY headers; the FTP clients
connect from 127.0.0.5. The HAProxy config is the production file with its placeholder
addresses and ports replaced, so the recipe itself is what runs. Checked: logins spread over
both instances, the gateways see the client's address (not the balancer's), PASV and EPSV
transfers through the balancer, an instance killed with SIGKILL (the health check takes it
out, logins go on), and nobody but the balancer can claim another address with a PROXY line.
"""

from __future__ import annotations

import contextlib
import ftplib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers.gateway_env import CLI, GatewayProcess, base_config, seed, wait_for
from tests.helpers.postgres import PASSWORD as POSTGRES_PASSWORD

if TYPE_CHECKING:
    from tests.helpers.sshd import TestUser

HAPROXY = "/usr/sbin/haproxy"
RECIPE = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
BALANCER = "127.0.0.2"  # HAProxy's "public" address: clients connect here
SOURCE = "127.0.0.9"  # HAProxy's connections to the gateways leave from here
CLIENT = "127.0.0.5"  # the FTP clients' address
GATEWAY = "127.0.0.1"  # both instances (GatewayProcess waits for its port there)
RANGE_SIZE = 10  # passive ports per instance, as in the recipe

pytestmark = pytest.mark.skipif(
    not os.access(HAPROXY, os.X_OK), reason=f"{HAPROXY} not installed (Debian package haproxy)"
)

SESSION_LINE = re.compile(r"(?P<ip>[0-9.]+):(?P<port>\d+) sess=(?P<sess>\w+) \[(?P<user>[^\]]*)\]")


# --- helpers -------------------------------------------------------------------------


def port_free(address: str, port: int) -> bool:
    """True if ``port`` can be bound on ``address`` right now."""
    with socket.socket() as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def free_ranges(count: int, size: int, addresses: tuple[str, ...], start: int = 42000) -> list[list[int]]:
    """``count`` adjacent ranges of ``size`` ports, each port free on every one of ``addresses``."""
    low = start
    while low + count * size < 65000:
        ports = range(low, low + count * size)
        busy = [p for p in ports if not all(port_free(a, p) for a in addresses)]
        if not busy:
            return [[low + i * size, low + (i + 1) * size - 1] for i in range(count)]
        low = busy[-1] + 1
    raise RuntimeError("no free passive port ranges")


def free_port_on(address: str) -> int:
    """A TCP port free on ``address`` right now."""
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def substitute(text: str, old: str, new: str) -> str:
    """``text`` with every ``old`` replaced; the recipe must contain it (no silent drift)."""
    assert old in text, f"deploy/haproxy/haproxy.cfg no longer contains {old!r}: update this test"
    return text.replace(old, new)


def loopback_config(
    recipe: str, control_port: int, gateways: list[int], ranges: list[list[int]], admin_socket: Path
) -> str:
    """The production recipe for this machine: loopback addresses, the test's ports, no FTPS,
    no chroot/user/daemon (HAProxy runs in the foreground), logs to stdout."""
    text = recipe.split("# --- implicit FTPS")[0]
    text = re.sub(r"^\s*#.*\n", "", text, flags=re.M)  # comments name the placeholders too
    text = re.sub(r"^    (chroot|user|group|daemon)\b.*\n", "", text, flags=re.M)
    text = substitute(text, "log /dev/log local0", "log stdout format raw local0")
    # maxconn 20000 needs 40,000 file descriptors, above this machine's hard limit.
    text = substitute(text, "maxconn 20000", "maxconn 2000")
    text = substitute(text, "/run/haproxy/admin.sock", str(admin_socket))
    text = substitute(text, "203.0.113.10:21\n", f"{BALANCER}:{control_port}\n")
    text = substitute(text, "source 10.0.0.5", f"source {SOURCE}")
    for index, (port, (low, high)) in enumerate(zip(gateways, ranges, strict=True)):
        recipe_low = 30000 + index * RANGE_SIZE
        host = f"10.0.0.{11 + index}"
        text = substitute(
            text, f"203.0.113.10:{recipe_low}-{recipe_low + RANGE_SIZE - 1}", f"{BALANCER}:{low}-{high}"
        )
        text = substitute(text, f"{host}:2121", f"{GATEWAY}:{port}")
        text = substitute(text, f" {host} ", f" {GATEWAY} ")
    assert not re.search(r"203\.0\.113\.|10\.0\.0\.", text), text
    return text


class HAProxy:
    """HAProxy in the foreground (-db) on a generated config; its log in ``log``."""

    def __init__(self, workdir: Path, config: str) -> None:
        self.config = workdir / "haproxy.cfg"
        self.config.write_text(config)
        self.admin = workdir / "admin.sock"
        self.log = workdir / "haproxy.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(self.config)], stdout=out, stderr=subprocess.STDOUT
            )

    def command(self, line: str) -> str:
        """One command on the runtime API (the stats socket), its answer."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.admin))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_status(self, backend: str) -> dict[str, str]:
        """Server name -> status (UP, DOWN, ...) in ``backend``, from `show stat`."""
        try:
            lines = self.command("show stat").splitlines()
        except OSError:
            return {}
        if not lines:
            return {}
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {
            r["svname"]: r["status"]
            for r in rows
            if r.get("pxname") == backend and r["svname"] not in ("FRONTEND", "BACKEND")
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class EpsvFTP(ftplib.FTP):
    """ftplib that uses EPSV (no address in the reply: the control connection's is used)."""

    def makepasv(self) -> tuple[str, int]:
        return ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())


def client(port: int, epsv: bool = False) -> ftplib.FTP:
    """An ftplib session to the balancer from the client address (not logged in)."""
    ftp = (EpsvFTP if epsv else ftplib.FTP)(timeout=20, source_address=(CLIENT, 0))
    ftp.connect(BALANCER, port)
    return ftp


def login(port: int, user: TestUser, epsv: bool = False) -> ftplib.FTP:
    """A logged-in session through the balancer."""
    ftp = client(port, epsv)
    ftp.login(user.name, user.password)
    return ftp


def quit_quietly(ftp: ftplib.FTP) -> None:
    """QUIT, or just close if the session is already gone."""
    try:
        ftp.quit()
    except (ftplib.Error, OSError, EOFError):
        ftp.close()


def sessions(gw: GatewayProcess) -> dict[str, set[str]]:
    """Session id -> the client addresses its log lines name."""
    found: dict[str, set[str]] = {}
    for line in gw.lines:
        if match := SESSION_LINE.search(line):
            found.setdefault(match["sess"], set()).add(match["ip"])
    return found


def logins(gw: GatewayProcess) -> list[str]:
    """The client addresses of the instance's successful logins (its audit lines)."""
    return re.findall(r"login ok: client_ip=(\S+)", "\n".join(gw.lines))


# --- fixture -------------------------------------------------------------------------


class Cluster:
    """Two gateway instances and HAProxy in front of them."""

    def __init__(self, gateways: list[GatewayProcess], haproxy: HAProxy, port: int) -> None:
        self.gateways, self.haproxy, self.port = gateways, haproxy, port


@pytest.fixture
def cluster(sshd, tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(sshd, tmp_path, {}) as started:
        yield started


@contextlib.contextmanager
def running_cluster(sshd, tmp_path: Path, sections: dict[str, Any]) -> Iterator[Cluster]:
    """Two gateway processes (config: ``base_config`` plus ``sections``) behind HAProxy."""
    ranges = free_ranges(2, RANGE_SIZE, (GATEWAY, BALANCER))
    gateways: list[GatewayProcess] = []
    haproxy: HAProxy | None = None
    try:
        for index, passive in enumerate(ranges):
            doc = base_config(sshd)
            doc["listen"] = {
                "address": GATEWAY,
                "port": 0,  # GatewayProcess picks one
                "passive_ports": passive,
                "masquerade_address": BALANCER,
                "proxy_protocol": {"trusted": [f"{SOURCE}/32"], "header_timeout": 5},
            }
            doc["log"] = {"level": "info"}  # session lines: "<client ip>:<port> sess=..."
            doc.update(sections)
            workdir = tmp_path / f"gw{index + 1}"
            workdir.mkdir()
            gateways.append(GatewayProcess(workdir, doc))
        port = free_port_on(BALANCER)
        config = loopback_config(
            RECIPE.read_text(), port, [gw.port for gw in gateways], ranges, tmp_path / "admin.sock"
        )
        haproxy = HAProxy(tmp_path, config)
        up = wait_for(lambda: haproxy.server_status("ftp_control") == {"gw1": "UP", "gw2": "UP"}, 20)
        states = [(gw.port, gw.proc.poll(), gw.lines[-5:]) for gw in gateways]  # (port, exit code, log)
        assert up, f"HAProxy: {haproxy.server_status('ftp_control')}\n{haproxy.log.read_text()}\n{states}"
        yield Cluster(gateways, haproxy, port)
    finally:
        if haproxy is not None:
            haproxy.stop()
        for gw in gateways:
            if gw.proc.poll() is None:
                gw.proc.kill()
            gw.proc.wait(10)


# --- tests ---------------------------------------------------------------------------


def test_haproxy_balances_logins_and_passes_the_client_address(cluster: Cluster, user: TestUser) -> None:
    for _ in range(10):
        ftp = login(cluster.port, user)
        assert ftp.pwd() == "/"
        quit_quietly(ftp)
    gw1, gw2 = cluster.gateways
    # Both instances served logins, every one from the client's own address.
    assert wait_for(lambda: len(logins(gw1)) + len(logins(gw2)) == 10)
    assert logins(gw1) and logins(gw2), (logins(gw1), logins(gw2))
    assert set(logins(gw1) + logins(gw2)) == {CLIENT}
    for gw in cluster.gateways:
        assert any("client address from a PROXY v2 header" in line for line in gw.lines)
        by_session = sessions(gw)
        client_sessions = [ips for ips in by_session.values() if CLIENT in ips]
        assert client_sessions and all(ips == {CLIENT} for ips in client_sessions)
        # The balancer's own address appears only for its health checks (v2 LOCAL headers),
        # never for a session that logged in.
        logged_in = {m["sess"] for line in gw.lines if (m := SESSION_LINE.search(line)) and m["user"]}
        assert all(by_session[sess] == {CLIENT} for sess in logged_in), by_session


def test_passive_transfers_through_the_balancer(cluster: Cluster, user: TestUser) -> None:
    payload = os.urandom(300_000)
    seed(user, "seeded.bin", payload)
    for epsv in (False, True):
        for _ in range(2):  # two sessions: most likely one on each instance
            ftp = login(cluster.port, user, epsv=epsv)
            # PASV replies name the balancer (listen.masquerade_address), never the gateway.
            if not epsv:
                assert ftp.sendcmd("PASV").split("(")[1].startswith("127,0,0,2,")
                ftp.trust_server_pasv_ipv4_address = True  # connect where the reply says
            name = f"up-{'epsv' if epsv else 'pasv'}-{os.urandom(3).hex()}.bin"
            ftp.storbinary(f"STOR {name}", io.BytesIO(payload))
            got = io.BytesIO()
            ftp.retrbinary(f"RETR {name}", got.write)
            assert got.getvalue() == payload
            got = io.BytesIO()
            ftp.retrbinary("RETR seeded.bin", got.write)
            assert got.getvalue() == payload
            assert name in ftp.nlst()
            quit_quietly(ftp)
            assert (user.home / name).read_bytes() == payload
    # A real client too: curl uses EPSV and binds to the client address.
    curl = shutil.which("curl")
    if curl:
        url = f"ftp://{BALANCER}:{cluster.port}/seeded.bin"
        credentials = f"{user.name}:{user.password}"
        result = subprocess.run(
            [curl, "-sS", "--max-time", "30", "--interface", CLIENT, "-u", credentials, url],
            capture_output=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == payload
    # The data connections came through HAProxy with the client's address: none refused.
    for gw in cluster.gateways:
        assert not any("without a PROXY header" in line for line in gw.lines)


def test_a_killed_instance_is_taken_out(cluster: Cluster, user: TestUser) -> None:
    gw1, gw2 = cluster.gateways
    gw2.proc.kill()
    gw2.proc.wait(10)
    # HAProxy's health check marks it down (inter 2s, fall 2); until then a connection that
    # fails is redispatched (option redispatch) or retried here.
    ok = 0
    deadline = time.monotonic() + 30
    while ok < 6 and time.monotonic() < deadline:
        try:
            ftp = login(cluster.port, user)
        except (OSError, EOFError, ftplib.Error):
            time.sleep(0.5)
            continue
        with contextlib.closing(ftp):
            ftp.retrlines("LIST", lambda _: None)  # a passive transfer on the survivor
            quit_quietly(ftp)
        ok += 1
    assert ok == 6, f"only {ok} logins after the kill\n{cluster.haproxy.log.read_text()}"
    status = cluster.haproxy.server_status
    assert wait_for(lambda: status("ftp_control").get("gw2", "").startswith("DOWN"), 15)
    assert cluster.haproxy.server_status("ftp_passive_gw2").get("gw2", "").startswith("DOWN")
    before = len(logins(gw1))
    for _ in range(3):
        quit_quietly(login(cluster.port, user))
    assert wait_for(lambda: len(logins(gw1)) == before + 3)


def test_only_the_balancer_may_name_the_client(cluster: Cluster, user: TestUser) -> None:
    gw1 = cluster.gateways[0]
    spoof = f"PROXY TCP4 10.9.9.9 {GATEWAY} 1234 {gw1.port}"
    # Straight to an instance from an untrusted address: the line is just a bad FTP command.
    direct = ftplib.FTP(timeout=20, source_address=(CLIENT, 0))
    direct.connect(GATEWAY, gw1.port)
    with pytest.raises(ftplib.error_perm, match=r"^50"):
        direct.sendcmd(spoof)
    direct.login(user.name, user.password)
    quit_quietly(direct)
    # Through the balancer: its own header comes first, the client's line is a command again.
    proxied = client(cluster.port)
    with pytest.raises(ftplib.error_perm, match=r"^50"):
        proxied.sendcmd(spoof.replace(str(gw1.port), str(cluster.port)))
    proxied.login(user.name, user.password)
    quit_quietly(proxied)
    assert wait_for(lambda: len(logins(gw1)) + len(logins(cluster.gateways[1])) == 2)
    for gw in cluster.gateways:
        assert set(logins(gw)) <= {CLIENT}
        assert not any("10.9.9.9" in line and "PROXY" not in line for line in gw.lines)
        assert not any(line.startswith("10.9.9.9") or "client_ip=10.9.9.9" in line for line in gw.lines)
        assert not any(m["ip"] == "10.9.9.9" for line in gw.lines if (m := SESSION_LINE.search(line)))


def test_two_instances_share_one_usage_record_and_one_guard_in_postgresql(
    sshd, postgres, user: TestUser, tmp_path: Path
) -> None:
    # The shared store: one report from the sessions of both instances, and one guard: a
    # client that fails its logins alternately at both is banned after max_failures in all.
    secret = tmp_path / "db-password"
    secret.write_text(POSTGRES_PASSWORD)
    shared = {
        "report": {"database": postgres.url(), "password_file": str(secret), "ready_after": {"days": 0}},
        "guard": {"shared": True, "max_failures": 3},
    }
    with running_cluster(sshd, tmp_path, shared) as cluster:
        for n in range(8):
            ftp = login(cluster.port, user)
            ftp.storbinary(f"STOR s{n}.bin", io.BytesIO(b"x" * 100))
            quit_quietly(ftp)
        gw1, gw2 = cluster.gateways
        assert logins(gw1) and logins(gw2), "the balancer used one instance only"
        for gw in (gw1, gw2, gw1):  # straight to each instance, from the client's address
            ftp = ftplib.FTP(timeout=20, source_address=(CLIENT, 0))
            ftp.connect(GATEWAY, gw.port)
            with pytest.raises(ftplib.error_perm, match=r"^530"):
                ftp.login(user.name, "wrong-password")
            ftp.close()

        def refused_at(port: int) -> bool:
            ftp = ftplib.FTP(timeout=20, source_address=(CLIENT, 0))
            ftp.connect(GATEWAY, port)
            try:
                ftp.login(user.name, user.password)
            except ftplib.Error:
                return True
            finally:
                ftp.close()
            return False

        assert wait_for(lambda: refused_at(gw1.port) and refused_at(gw2.port), 10), "not banned at both"
        with pytest.raises(ftplib.Error):
            login(cluster.port, user)  # nor through the balancer
        for gw in cluster.gateways:
            assert gw.stop() == 0  # SIGTERM: each writes what it still holds
    config_file = tmp_path / "gw1" / "gateway.yaml"
    out = subprocess.run(
        [*CLI, "report", "--config", str(config_file), "--format", "json"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    (row,) = [u for u in json.loads(out)["users"] if u["user"] == user.name]
    # Every session of both instances, from the client's own address: the 8 uploads, and
    # the 3 failed logins (more attempts were refused by the ban).
    assert row["transfers"]["uploads"] == 8 and row["transfers"]["bytes_up"] == 800
    assert row["failed_logins"]["bad_credentials"] == 3 and row["verdict"] == "locked out"
    assert row["client_ips"] == [CLIENT]
