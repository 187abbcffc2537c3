"""Attack: sessions whose client is gone keep their place in ``max_connections``.

The cause found: when a download's data connection and its control connection are both
reset, the 426 for the data connection is written to the dead control connection, which
closes the session from inside the data channel's close; pyftpdlib then restarted the
session's idle timer, and that timer alone kept the session's thread, and its place under
``limits.max_connections``, for ``idle_timeout`` (300 s): forty such clients locked everyone
out for five minutes with no connection left open. Few sessions rarely hit the race; forty
at once always did. Sessions are now counted from accept to close, and a closed session
starts no timer.
"""

from __future__ import annotations

import ftplib
import os
import socket
import struct

from tests.helpers.gateway_env import base_config, seed, wait_for
from tests.integration.test_metrics import scrape, value

SESSIONS = 40


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset (what a killed client's unread data causes)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_clients_gone_mid_download_free_their_places_at_once(gateway_factory, sshd, user):
    seed(user, "big.bin", os.urandom(64 * 2**20))
    limits = {"max_connections": SESSIONS, "max_connections_per_ip": SESSIONS, "idle_timeout": 300}
    gw = gateway_factory(base_config(sshd, limits=limits))
    ghosts = []
    for i in range(SESSIONS):
        ftp = ftplib.FTP(timeout=20, source_address=(f"127.0.0.{2 + i % 10}", 0))
        ftp.connect(gw.host, gw.port)
        ftp.login(user.name, user.password)
        ftp.voidcmd("TYPE I")
        ghosts.append((ftp, ftp.transfercmd("RETR big.bin")))  # the last place can transfer too
    assert value(scrape(gw), "ftpgw_sessions_active") == SESSIONS
    for ftp, data in ghosts:  # read nothing, then vanish
        reset(data)
        ftp.file.close()
        reset(ftp.sock)
    assert wait_for(lambda: value(scrape(gw), "ftpgw_sessions_active") == 0, timeout=20)
    assert wait_for(lambda: gw.gateway.sessions_open() == 0, timeout=20)  # the threads ended too
    newcomer = gw.login(user)  # not "421 Too many connections"
    assert newcomer.voidcmd("NOOP").startswith("200")
    newcomer.quit()
