"""Ctrl-C in a BSD-style client: Telnet IAC IP, IAC DM as urgent data, then ABOR (RFC 959 4.1.3).

Before the fix the gateway answered ``501 Can't decode command`` (0xFF is not UTF-8) and the
whole file kept streaming before the client got control back. Now the Telnet commands are
dropped and the ABOR acts at once, as on vsftpd: the transfer ends with 426, then 226.
"""

from __future__ import annotations

import os
import socket
import threading

from tests.differential.conftest import Server, compare

SIZE = 2 * 2**30  # sparse: costs no disk, but would take many seconds to stream whole


def interrupt(server: Server, user) -> tuple[list[str], bool]:
    ftp = server.login(user)
    ftp.voidcmd("TYPE I")
    data = ftp.transfercmd("RETR big.bin")
    received = [0]
    interrupted = threading.Event()

    def drain() -> None:  # a slow reader (a WAN link), then, after Ctrl-C, read and drop
        while chunk := data.recv(1 << 16):
            received[0] += len(chunk)
            if not interrupted.is_set():
                interrupted.wait(0.005)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    while received[0] < 4 * 2**20:
        threading.Event().wait(0.01)
    ftp.sock.send(b"\xff\xf4\xff")  # IAC IP, IAC
    ftp.sock.send(b"\xf2", socket.MSG_OOB)  # DM, urgent
    ftp.sock.send(b"ABOR\r\nNOOP\r\n")
    interrupted.set()
    replies = [ftp.getline()[:3]]
    while replies[-1] != "200":  # up to the NOOP's: the session goes on
        replies.append(ftp.getline()[:3])
    reader.join(30)
    data.close()
    ftp.quit()
    # vsftpd also answers the ABOR itself once more ("225 No transfer to ABOR"): the first two
    # replies are what a client waits for.
    return replies[:2], received[0] < SIZE


def test_ctrl_c_abor_with_telnet_synch_stops_the_transfer_at_once_as_on_vsftpd(servers, user):
    def seed() -> None:
        path = user.home / "big.bin"
        path.touch()
        os.truncate(path, SIZE)
        os.chown(path, user.home.stat().st_uid, user.home.stat().st_gid)

    outcomes = compare(servers, user, seed, lambda server: interrupt(server, user))
    assert outcomes["gateway"] == (["426", "226"], True)
    assert outcomes["gateway"] == outcomes["vsftpd"]
