"""RETR / STOR / STOU / APPE / REST / TYPE A / ABOR / active and passive modes, end to end."""

from __future__ import annotations

import ftplib
import hashlib
import io
import os
import socket

import pytest

from tests.helpers.gateway_env import base_config, seed, wait_for


def retr(ftp, name, rest=None):
    buf = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", buf.write, rest=rest)
    return buf.getvalue()


def stor(ftp, name, data, cmd="STOR", rest=None):
    return ftp.storbinary(f"{cmd} {name}", io.BytesIO(data), rest=rest)


def test_small_retr_and_stor(ftp, user):
    seed(user, "in.txt", b"hello world\n")
    assert retr(ftp, "in.txt") == b"hello world\n"
    assert stor(ftp, "out.bin", b"\x00\x01\x02" * 1000).startswith("226")
    assert (user.home / "out.bin").read_bytes() == b"\x00\x01\x02" * 1000


def test_empty_file_both_ways(ftp, user):
    seed(user, "empty", b"")
    assert retr(ftp, "empty") == b""
    assert stor(ftp, "empty2", b"").startswith("226")
    assert (user.home / "empty2").read_bytes() == b""


def test_stor_truncates_existing_file(ftp, user):
    seed(user, "f", b"x" * 10000)
    stor(ftp, "f", b"short")
    assert (user.home / "f").read_bytes() == b"short"


@pytest.mark.slow
def test_50_mib_upload_and_download_keep_sha256(ftp, user):
    data = os.urandom(50 * 2**20)
    digest = hashlib.sha256(data).hexdigest()
    assert stor(ftp, "big.bin", data).startswith("226")
    assert hashlib.sha256((user.home / "big.bin").read_bytes()).hexdigest() == digest
    got = hashlib.sha256()
    ftp.retrbinary("RETR big.bin", got.update)
    assert got.hexdigest() == digest


def test_stou_creates_unique_names(ftp, user):
    ftp.voidcmd("TYPE I")
    names = []
    for payload in (b"one", b"two"):
        conn, _ = ftp.ntransfercmd("STOU")
        reply = ftp.lastresp
        conn.sendall(payload)
        conn.close()
        assert ftp.voidresp().startswith("226")
        names.append(reply)
    files = sorted(p.read_bytes() for p in user.home.iterdir())
    assert files == [b"one", b"two"]


def test_stou_reply_names_the_file(ftp, user):
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOU")
    conn.sendall(b"data")
    conn.close()
    ftp.voidresp()
    (created,) = os.listdir(user.home)
    assert created.startswith("ftpd.")


def test_appe_keeps_existing_bytes(ftp, user):
    seed(user, "log.txt", b"line1\n")
    assert stor(ftp, "log.txt", b"line2\n", cmd="APPE").startswith("226")
    assert (user.home / "log.txt").read_bytes() == b"line1\nline2\n"
    assert stor(ftp, "new.txt", b"first\n", cmd="APPE").startswith("226")
    assert (user.home / "new.txt").read_bytes() == b"first\n"


def test_appe_of_a_large_pipelined_upload(ftp, user):
    head = os.urandom(300_000)
    tail = os.urandom(3 * 2**20 + 17)
    seed(user, "f.bin", head)
    stor(ftp, "f.bin", tail, cmd="APPE")
    assert (user.home / "f.bin").read_bytes() == head + tail


def test_rest_retr_resumes_download(ftp, user):
    data = os.urandom(1_000_000)
    seed(user, "f.bin", data)
    ftp.voidcmd("TYPE I")
    assert retr(ftp, "f.bin", rest=600_000) == data[600_000:]
    assert retr(ftp, "f.bin", rest=1_000_000) == b""
    with pytest.raises(ftplib.error_perm, match=r"^554"):
        retr(ftp, "f.bin", rest=1_000_001)


def test_rest_stor_resumes_upload_keeping_the_prefix(ftp, user):
    data = os.urandom(1_000_000)
    seed(user, "f.bin", data[:400_000])
    assert stor(ftp, "f.bin", data[400_000:], rest=400_000).startswith("226")
    assert (user.home / "f.bin").read_bytes() == data


def test_rest_beyond_4_gib_both_directions(ftp, user):
    offset = 4 * 2**30 + 12345
    path = seed(user, "huge.bin", b"")
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(b"tail-marker")
    ftp.voidcmd("TYPE I")
    assert ftp.size("huge.bin") == offset + 11
    assert retr(ftp, "huge.bin", rest=offset) == b"tail-marker"
    stor(ftp, "huge.bin", b"NEW", rest=offset + 11)
    with path.open("rb") as f:
        f.seek(offset)
        assert f.read() == b"tail-markerNEW"
    assert path.stat().st_size == offset + 14


def test_type_a_converts_line_endings_both_ways(ftp, user):
    seed(user, "unix.txt", b"one\ntwo\nthree\n")
    lines: list[str] = []
    ftp.retrlines("RETR unix.txt", lines.append)
    assert lines == ["one", "two", "three"]
    ftp.voidcmd("TYPE A")
    conn = ftp.transfercmd("RETR unix.txt")
    raw = b""
    while chunk := conn.recv(65536):
        raw += chunk
    conn.close()
    ftp.voidresp()
    assert raw == b"one\r\ntwo\r\nthree\r\n"
    ftp.storlines("STOR dos.txt", io.BytesIO(b"alpha\r\nbeta\r\n"))
    assert (user.home / "dos.txt").read_bytes() == b"alpha\nbeta\n"


def test_rest_is_refused_in_ascii_mode(ftp):
    ftp.voidcmd("TYPE A")
    with pytest.raises(ftplib.error_perm, match=r"^501"):
        ftp.sendcmd("REST 100")


def abort_in_progress(ftp):
    """ABOR with a transfer running: RFC 959 wants 426 for the transfer, then 226 for ABOR."""
    assert ftp.abort().startswith("426 ")
    assert ftp.getresp().startswith("226 ")


def test_abor_during_retr_then_session_goes_on(ftp, user):
    seed(user, "big.bin", os.urandom(32 * 2**20))
    seed(user, "small.txt", b"still works")
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")
    assert len(conn.recv(65536)) > 0
    abort_in_progress(ftp)
    conn.close()
    assert ftp.sendcmd("NOOP").startswith("200")
    assert retr(ftp, "small.txt") == b"still works"


def test_a_client_that_stops_reading_a_download_gets_421_after_the_data_timeout(gateway_factory, sshd, user):
    # The backend side sends downloads by itself; the session's data timer must still see
    # that nothing moves, end the transfer, and let the session's place go.
    seed(user, "big.bin", os.urandom(64 * 2**20))
    gw = gateway_factory(base_config(sshd, limits={"failed_login_delay": 0.2, "data_timeout": 2}))
    ftp = gw.login(user)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")
    assert conn.recv(65536)  # and nothing more: the socket buffers fill up
    ftp.sock.settimeout(30)
    with pytest.raises(ftplib.error_temp, match=r"^421 Data connection timed out"):
        ftp.getresp()
    conn.close()
    seed(user, "small.txt", b"next session")
    assert retr(gw.login(user), "small.txt") == b"next session"


def test_downloads_ended_every_way_leave_no_descriptor_behind(ftp, user):
    # Complete, aborted, and reset by the client, many times: each download holds a
    # duplicate of its data socket and a wake-up pipe while the backend side sends it.
    data = os.urandom(16 * 2**20)
    seed(user, "big.bin", data)
    ftp.voidcmd("TYPE I")

    def descriptors() -> int:
        return len(os.listdir("/proc/self/fd"))  # the gateway runs in this process

    assert retr(ftp, "big.bin") == data
    before = descriptors()
    for _ in range(10):
        assert retr(ftp, "big.bin") == data
        conn = ftp.transfercmd("RETR big.bin")
        assert conn.recv(65536)
        abort_in_progress(ftp)
        conn.close()
        conn = ftp.transfercmd("RETR big.bin")
        assert conn.recv(65536)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()
        with pytest.raises(ftplib.error_temp, match=r"^426"):
            ftp.voidresp()
    assert wait_for(lambda: descriptors() <= before), f"{descriptors() - before} descriptors more than before"
    assert retr(ftp, "big.bin") == data


def test_abor_during_stor_leaves_no_false_success(ftp, user):
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR partial.bin")
    conn.sendall(os.urandom(2 * 2**20))
    abort_in_progress(ftp)
    conn.close()
    assert ftp.sendcmd("NOOP").startswith("200")


def test_client_closing_the_data_connection_early_gives_426(ftp, user):
    seed(user, "big.bin", os.urandom(16 * 2**20))
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")
    conn.recv(1024)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()
    with pytest.raises(ftplib.error_temp, match=r"^426"):
        ftp.voidresp()
    assert ftp.sendcmd("NOOP").startswith("200")


def test_pasv_and_epsv(ftp, user):
    seed(user, "f", b"data")
    ftp.af = socket.AF_INET
    assert retr(ftp, "f") == b"data"
    reply = ftp.sendcmd("EPSV")
    assert reply.startswith("229 ")
    ftp.sock.sendall(b"ABOR\r\n")
    ftp.getresp()
    pasv = ftp.sendcmd("PASV")
    assert pasv.startswith("227 ")
    port = ftplib.parse227(pasv)[1]
    assert 41000 <= port <= 41199


def test_active_mode_port_and_eprt(ftp, user):
    seed(user, "f.txt", b"active data")
    ftp.set_pasv(False)
    assert retr(ftp, "f.txt") == b"active data"
    stor(ftp, "up.txt", b"uploaded actively")
    assert (user.home / "up.txt").read_bytes() == b"uploaded actively"
    # EPRT: ftplib uses it for IPv6 only, so drive it by hand.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        assert ftp.sendcmd(f"EPRT |1|127.0.0.1|{port}|").startswith("200")
        ftp.voidcmd("TYPE I")
        ftp.sock.sendall(b"RETR f.txt\r\n")
        conn, _ = listener.accept()
        assert ftp.getresp()[:3] in ("125", "150")
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
        conn.close()
    assert data == b"active data"
    assert ftp.voidresp().startswith("226")


def test_upload_into_forbidden_directory_is_550_before_150(ftp, user):
    locked = user.home / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        stor(ftp, "locked/f.txt", b"x")
    assert not (locked / "f.txt").exists()
    with pytest.raises(ftplib.error_perm, match=r"^550"):
        stor(ftp, "missing-dir/f.txt", b"x")
    (user.home / "adir").mkdir()
    with pytest.raises(ftplib.error_perm, match=r"^550 Is a directory"):
        stor(ftp, "adir", b"x")
    assert (user.home / "adir").is_dir()


def test_upload_cut_by_a_reset_is_426_not_226(ftp, user):
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR cut.bin")
    conn.sendall(os.urandom(1_000_000))
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()  # RST, not an orderly end of the upload
    # 426; or 425 when the reset came before the gateway had taken the data connection (the
    # client may send before the gateway's accept: the 150 comes first). Never 226.
    with pytest.raises(ftplib.error_temp, match=r"^42[56]"):
        ftp.voidresp()
    assert not (user.home / "cut.bin").exists()
    assert ftp.sendcmd("NOOP").startswith("200")


@pytest.mark.parametrize("verb", ["STOR", "RETR"])
def test_a_data_connection_reset_on_arrival_gets_a_reply_not_a_hang(ftp, user, verb):
    seed(user, "f.bin", os.urandom(2**20))
    ftp.voidcmd("TYPE I")
    for _ in range(5):  # the reset races the gateway's accept: either order must get a reply
        host, port = ftplib.parse227(ftp.sendcmd("PASV"))
        ftp.putcmd(f"{verb} f.bin")
        assert ftp.getresp().startswith("150")  # announced, data connection still to come
        conn = socket.create_connection((host, port))
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # RST at once
        reply = ftp.getline()
        # 425: the gateway found it dead on accept; 426: it died under the transfer;
        # 226: a download small enough to be sent before the reset was seen.
        assert reply[:3] in ("425", "426") or (verb == "RETR" and reply.startswith("226")), reply
        assert ftp.sendcmd("NOOP").startswith("200")
    assert (user.home / "f.bin").stat().st_size == 2**20  # no truncated upload


def test_abor_of_a_queued_transfer_does_not_leak_into_the_next_one(ftp, user):
    seed(user, "a.txt", b"contents of a")
    seed(user, "b.txt", b"contents of b")
    ftp.voidcmd("TYPE I")
    ftp.sendcmd("PASV")
    # 150 is sent, the transfer waits for a data connection that never comes...
    assert ftp.sendcmd("RETR a.txt")[:3] in ("125", "150")
    assert ftp.abort()[:3] in ("225", "226")
    # ...and must not be what the next data connection carries.
    assert retr(ftp, "b.txt") == b"contents of b"
    ftp.sendcmd("PASV")
    assert ftp.sendcmd("STOR queued.txt")[:3] in ("125", "150")
    assert ftp.abort()[:3] in ("225", "226")
    assert retr(ftp, "a.txt") == b"contents of a"
    assert not (user.home / "queued.txt").exists() or (user.home / "queued.txt").read_bytes() == b""


def test_rein_during_a_download_lets_it_finish(ftp, user):
    data = os.urandom(8 * 2**20)
    seed(user, "big.bin", data)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")
    first = conn.recv(65536)
    assert ftp.sendcmd("REIN").startswith("220")
    received = first
    while chunk := conn.recv(1 << 20):
        received += chunk
    conn.close()
    assert ftp.voidresp().startswith("226")
    assert received == data
    ftp.login(user.name, user.password)
    assert ftp.nlst() == ["big.bin"]


def test_a_latin1_name_is_created_as_its_bytes(ftp, user):
    ftp.sock.sendall(b"MKD caf\xe9\r\n")  # Latin-1, not UTF-8: the bytes as they are (vsftpd)
    assert ftp.sock.recv(1024) == b'257 "/caf\xe9" directory created.\r\n'  # the reply echoes the bytes
    assert os.listdir(os.fsencode(user.home)) == [b"caf\xe9"]
    assert ftp.sendcmd("NOOP").startswith("200")


def test_a_tiny_transfer_budget_bounds_memory_and_keeps_data_intact(gateway_factory, sshd, user):
    import threading

    from tests.helpers.gateway_env import base_config

    doc = base_config(sshd)
    doc["limits"]["transfer_buffer_mib"] = 1
    gw = gateway_factory(doc)
    budget = gw.gateway.logins.budget
    payloads = {f"f{i}.bin": os.urandom(6 * 2**20 + i) for i in range(4)}
    for name, data in payloads.items():
        seed(user, name, data)
    peak, errors, stop = [0], [], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], budget.used)

    def download(name):
        try:
            client = gw.login(user)
            assert retr(client, name) == payloads[name]
            stor(client, "up-" + name, payloads[name])
            client.quit()
        except Exception as err:  # collected and asserted below
            errors.append(err)

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=download, args=(name,)) for name in payloads]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    stop.set()
    watcher.join()
    assert errors == []
    assert 0 < peak[0] <= 2**20
    assert budget.used == 0
    for name, data in payloads.items():
        assert (user.home / ("up-" + name)).read_bytes() == data


def test_passive_range_exhausted_is_425_never_a_port_outside_it(gateway_factory, sshd, user):
    from tests.helpers.gateway_env import base_config
    from tests.helpers.sshd import free_port

    port = free_port()
    doc = base_config(sshd)
    doc["listen"]["passive_ports"] = [port, port]  # a single passive port
    gw = gateway_factory(doc)
    seed(user, "f.txt", b"data")
    first, second = gw.login(user), gw.login(user)
    assert ftplib.parse227(first.sendcmd("PASV"))[1] == port  # holds the only port
    with pytest.raises(ftplib.error_temp, match=r"^425"):
        second.sendcmd("PASV")
    first.sendcmd("ABOR")  # frees it
    second.voidcmd("TYPE I")
    assert retr(second, "f.txt") == b"data"


def test_a_passive_port_whose_listen_fails_is_skipped(gateway_factory, sshd, user, monkeypatch):
    # SO_REUSEADDR (needed: passive ports sit in TIME_WAIT after transfers) lets two sessions
    # bind the same port at once; the second listen() then fails with EADDRINUSE (seen in
    # bench/soak.py with 200 sessions: the session was dropped). The race is injected here:
    # listen() on the first port of the range fails, as it would for the losing session.
    import asyncore
    import errno

    from tests.helpers.gateway_env import base_config
    from tests.helpers.sshd import free_port

    low = free_port()

    class RacedSocket(socket.socket):
        def listen(self, *args):
            if self.getsockname()[1] in busy:
                raise OSError(errno.EADDRINUSE, "Address already in use")
            return super().listen(*args)

    busy = {low}
    monkeypatch.setattr(asyncore.socket, "socket", RacedSocket)  # pyftpdlib's create_socket
    doc = base_config(sshd)
    doc["listen"]["passive_ports"] = [low, low + 1]
    gw = gateway_factory(doc)
    seed(user, "f.txt", b"data")
    ftp = gw.login(user)
    ftp.voidcmd("TYPE I")
    for _ in range(8):  # the port is picked at random: both get tried
        assert ftplib.parse227(ftp.sendcmd("PASV"))[1] == low + 1
    assert retr(ftp, "f.txt") == b"data"
    busy.add(low + 1)
    with pytest.raises(ftplib.error_temp, match=r"^425"):
        ftp.sendcmd("PASV")  # no usable port left: 425, and the session goes on
    assert ftp.sendcmd("NOOP").startswith("200")


def test_finished_transfers_leave_no_timers_behind(ftp, user):
    # pyftpdlib keeps a closed data channel's cancelled idle timer (and its passive
    # listener's) in the session's scheduler until it would have fired, data_timeout (300 s)
    # later: at hundreds of transfers a second, tens of thousands of them (bench/soak.py).
    import gc

    from pyftpdlib.ioloop import _CallLater

    seed(user, "f.txt", b"x")
    for _ in range(50):
        assert ftp.nlst() == ["f.txt"]
        assert retr(ftp, "f.txt") == b"x"
    gc.collect()
    dead = [o for o in gc.get_objects() if isinstance(o, _CallLater) and o.cancelled]
    assert len(dead) < 10, f"{len(dead)} cancelled timers of finished transfers still scheduled"
