"""Attack: anyone who can reach the passive ports breaks other users' sessions.

Before the fix, a connection from a foreign address to a session's passive port made the
gateway send that session an unsolicited ``425 Rejected data connection from foreign address``;
its client took it for the reply to its next command and every reply after was one off (0 of
30 ftplib RETRs succeeded with six intruders looping over the range; curl failed with
"(17) Couldn't set desired mode"). Now the stranger is dropped silently and counted.
"""

from __future__ import annotations

import io
import socket
import subprocess
import threading
import time

from tests.helpers.gateway_env import base_config, seed
from tests.integration.test_metrics import scrape, value

PORTS = [41300, 41309]


def intruders(stop: threading.Event, count: int = 6) -> list[threading.Thread]:
    """``count`` threads connecting from 127.0.0.3 to every passive port, over and over."""

    def loop(offset: int) -> None:
        port = PORTS[0] + offset
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), 0.2, source_address=("127.0.0.3", 0)):
                    pass
            except OSError:
                pass
            port = port + 1 if port < PORTS[1] else PORTS[0]

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads


def test_intruders_on_the_passive_ports_do_not_disturb_a_session(gateway_factory, sshd, user):
    payload = b"batch file\n" * 5000
    seed(user, "out.csv", payload)
    doc = base_config(sshd)
    doc["listen"]["passive_ports"] = PORTS
    gw = gateway_factory(doc)
    stop = threading.Event()
    threads = intruders(stop)
    try:
        ftp = gw.login(user)
        got = []
        for _ in range(30):
            buffer = io.BytesIO()
            ftp.retrbinary("RETR out.csv", buffer.write)  # fails on any reply out of step
            got.append(buffer.getvalue() == payload)
            assert ftp.voidcmd("NOOP").startswith("200")
        ftp.quit()
        curl = subprocess.run(
            ["curl", "-sS", "--max-time", "30", f"{gw.url}/out.csv", "-u", f"{user.name}:{user.password}"],
            capture_output=True,
            timeout=60,
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    assert got == [True] * 30
    assert curl.returncode == 0, curl.stderr
    assert curl.stdout == payload
    rejected = sum(
        value(scrape(gw), "ftpgw_data_connections_total", mode=mode, result="rejected") or 0
        for mode in ("pasv", "epsv")
    )
    assert rejected > 0  # the intruders did reach listeners, and were counted


def test_a_stranger_on_the_port_gets_nothing_and_the_client_still_connects(ftp, user):
    payload = b"only for the client\n" * 1000
    seed(user, "private.txt", payload)
    port = int(ftp.sendcmd("EPSV").split("|")[3])
    with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0), timeout=5) as thief:
        assert thief.recv(1024) == b""  # closed, no data
    time.sleep(0.5)
    ftp.sock.sendall(b"TYPE I\r\n")
    assert ftp.getline().startswith("200")  # its own reply first: nothing unsolicited came before
    ftp.sock.sendall(b"RETR private.txt\r\n")  # the listener is still there for the client
    with socket.create_connection(("127.0.0.1", port), timeout=5) as data:
        assert ftp.getline()[:3] in ("125", "150")
        got = data.makefile("rb").read()
    assert ftp.getline().startswith("226")
    assert got == payload
