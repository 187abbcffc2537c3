"""Backend trouble: a stalled backend stalls only its own session; dead, down or impostor backends
give the documented replies (421/426/451), never a hang, a crash or a false 226."""

from __future__ import annotations

import ftplib
import io
import os
import pwd
import subprocess
import threading
import time

import pytest

from tests.conftest import base_config, relay_known_hosts, seed, wait_for
from tests.helpers.sshd import free_port


def relayed_config(sshd, relay, **backend):
    """gwtest2 reaches sshd through the relay; everyone else directly."""
    doc = base_config(sshd)
    doc["backends"]["relayed"] = {
        "host": "127.0.0.1",
        "port": relay.port,
        "known_hosts": str(relay_known_hosts(sshd, relay)),
        **backend,
    }
    doc["routes"].insert(0, {"match": {"user": "gwtest2"}, "backend": "relayed", "root": "~"})
    doc["metrics"] = {"enabled": False}  # no /readyz probes through the relay
    return doc


def read_all(conn):
    data = b""
    try:
        while chunk := conn.recv(1 << 20):
            data += chunk
    except OSError:
        pass
    conn.close()
    return data


def test_stalled_backend_does_not_stall_other_sessions(gateway_factory, sshd, relay, user, user2):
    gw = gateway_factory(relayed_config(sshd, relay))
    seed(user, "a.txt", b"fast path")
    seed(user2, "b.txt", b"slow path")
    slow = gw.login(user2)
    fast = gw.login(user)
    relay.stall()
    result: dict[str, object] = {}

    def slow_listing():
        try:
            result["names"] = slow.nlst()
        except ftplib.all_errors as err:
            result["error"] = err

    stuck = threading.Thread(target=slow_listing)
    stuck.start()
    time.sleep(0.5)
    # While the other session waits on its stalled backend, this one is served normally.
    for _ in range(5):
        assert fast.sendcmd("NOOP").startswith("200")
        assert fast.nlst() == ["a.txt"]
        buf = io.BytesIO()
        fast.retrbinary("RETR a.txt", buf.write)
        assert buf.getvalue() == b"fast path"
    assert stuck.is_alive(), "the stalled session should still be waiting on its backend"
    relay.resume()
    stuck.join(20)
    assert result == {"names": ["b.txt"]}
    assert slow.sendcmd("NOOP").startswith("200")


def test_operation_timeout_gives_451_not_a_hang(gateway_factory, sshd, relay, user2):
    gw = gateway_factory(relayed_config(sshd, relay, operation_timeout=1.5))
    ftp = gw.login(user2)
    relay.stall()
    with pytest.raises(ftplib.error_temp, match=r"^451"):
        ftp.sendcmd("MKD slow")
    assert ftp.sendcmd("NOOP").startswith("200")
    relay.resume()
    # Counted for the operator (the request was cancelled on the loop, so the calling
    # thread reports it).
    registry = gw.gateway.metrics.registry
    labels = {"backend": "relayed", "kind": "backend_timeout"}
    assert registry.get_sample_value("ftpgw_backend_errors_total", labels) == 1


def test_backend_killed_mid_download(gateway_factory, sshd, relay, user2):
    seed(user2, "big.bin", os.urandom(64 * 2**20))
    gw = gateway_factory(relayed_config(sshd, relay))
    ftp = gw.login(user2)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")
    conn.recv(65536)
    relay.reset()
    received = read_all(conn)
    assert len(received) < 64 * 2**20
    with pytest.raises(ftplib.error_temp, match=r"^426"):
        ftp.voidresp()
    assert ftp.getline().startswith("421")
    # The gateway is alive: a new session works once the backend is reachable again.
    again = gw.login(user2)
    again.voidcmd("TYPE I")
    assert again.size("big.bin") == 64 * 2**20


def test_backend_killed_mid_upload_never_reports_success(gateway_factory, sshd, relay, user2):
    gw = gateway_factory(relayed_config(sshd, relay))
    ftp = gw.login(user2)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR up.bin")
    conn.sendall(os.urandom(2**20))
    relay.reset()
    try:
        for _ in range(64):
            conn.sendall(os.urandom(2**20))
    except OSError:
        pass
    conn.close()
    reply = ftp.getline()
    assert reply.startswith("451 "), reply
    assert ftp.getline().startswith("421")


def test_backend_dying_while_idle_ends_the_session_with_421(gateway_factory, sshd, relay, user2):
    gw = gateway_factory(relayed_config(sshd, relay))
    ftp = gw.login(user2)
    relay.reset()
    time.sleep(0.5)
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        ftp.sendcmd("NOOP")


def test_backend_down_at_login_is_421_without_details(gateway_factory, sshd, user):
    doc = base_config(sshd)
    doc["backends"]["main"]["port"] = free_port()  # nothing listens there
    doc["backends"]["main"]["connect_timeout"] = 3
    ftp = gateway_factory(doc).connect()
    ftp.sendcmd(f"USER {user.name}")
    with pytest.raises(ftplib.error_temp) as exc:
        ftp.sendcmd(f"PASS {user.password}")
    text = str(exc.value)
    assert text.startswith("421 ")
    for leak in ("refused", "Errno", "127.0.0.1", str(doc["backends"]["main"]["port"])):
        assert leak not in text


def test_host_key_mismatch_is_421_and_no_password_is_sent(gateway_factory, sshd, user, tmp_path, caplog):
    impostor_key = tmp_path / "impostor"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {impostor_key}")
    known = tmp_path / "known_hosts"
    pub = (tmp_path / "impostor.pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    doc = base_config(sshd)
    doc["backends"]["main"]["known_hosts"] = str(known)
    log_before = sshd.log.read_text()
    ftp = gateway_factory(doc).connect()
    ftp.sendcmd(f"USER {user.name}")
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        ftp.sendcmd(f"PASS {user.password}")
    time.sleep(0.3)
    new_log = sshd.log.read_text()[len(log_before) :]
    assert "password for" not in new_log  # neither "Accepted" nor "Failed password for"
    # The log names the key the backend showed, for the operator to compare out of band.
    real = host_key_fingerprint(sshd)
    assert any(real in r.getMessage() and "does not trust" in r.getMessage() for r in caplog.records)


def host_key_fingerprint(sshd) -> str:
    """The SHA256 fingerprint of the test sshd's host key, as ssh-keygen prints it."""
    pub = str(sshd.workdir / "host_ed25519.pub")
    return subprocess.run(
        ["ssh-keygen", "-lf", pub], capture_output=True, text=True, check=True
    ).stdout.split()[1]


@pytest.fixture
def full_disk(user):
    """A 1 MiB tmpfs mounted at <home>/small, owned by the user."""
    mnt = user.home / "small"
    mnt.mkdir()
    pw = pwd.getpwnam(user.name)
    subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size=1m,uid={pw.pw_uid},gid={pw.pw_gid},mode=0755",
            "tmpfs",
            str(mnt),
        ],
        check=True,
    )
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_during_upload_is_452_never_226(ftp, full_disk):
    try:
        ftp.storbinary("STOR small/big.bin", io.BytesIO(os.urandom(4 * 2**20)))
        reply = "226 (the upload was reported complete)"
    except ftplib.error_temp as err:
        reply = str(err)
    except OSError:
        # The gateway dropped the data connection while we were still sending (as an FTP
        # server does on an aborted upload): the verdict is waiting on the control channel.
        reply = ftp.getline()
    assert reply.startswith("452"), reply
    assert ftp.sendcmd("NOOP").startswith("200")
    # Space freed: the same session uploads fine.
    (full_disk / "big.bin").unlink()
    assert ftp.storbinary("STOR small/ok.bin", io.BytesIO(b"fits")).startswith("226")
    assert (full_disk / "ok.bin").read_bytes() == b"fits"


def test_without_pool_the_backend_connection_closes_with_the_ftp_session(gateway_factory, sshd, relay, user2):
    gw = gateway_factory(relayed_config(sshd, relay, pool={"enabled": False}))
    ftp = gw.login(user2)
    assert wait_for(lambda: relay.connections == 2)
    ftp.quit()
    assert wait_for(lambda: relay.connections == 0)
    # A client that vanishes without QUIT frees its backend connection too.
    ftp = gw.login(user2)
    assert wait_for(lambda: relay.connections == 2)
    ftp.close()  # no QUIT: the TCP connection just goes away
    assert wait_for(lambda: relay.connections == 0)
    # A failed login leaves no backend connection behind.
    bad = gw.connect()
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        bad.login(user2.name, "wrong")
    assert wait_for(lambda: relay.connections == 0)


def test_pinned_fingerprint_instead_of_known_hosts(gateway_factory, sshd, user, tmp_path):
    real = host_key_fingerprint(sshd)
    doc = base_config(sshd)
    del doc["backends"]["main"]["known_hosts"]
    doc["backends"]["main"]["host_key_fingerprints"] = [real]
    ftp = gateway_factory(doc).login(user)
    assert ftp.sendcmd("NOOP").startswith("200")
    ftp.quit()
    # A wrong pin is a mismatch like any other: 421 and no password sent.
    other = "SHA256:" + "A" * 43
    doc["backends"]["main"]["host_key_fingerprints"] = [other]
    ftp = gateway_factory(doc).connect()
    ftp.sendcmd(f"USER {user.name}")
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        ftp.sendcmd(f"PASS {user.password}")
