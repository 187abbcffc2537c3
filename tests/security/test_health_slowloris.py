"""Attack: slow sockets take /healthz, /readyz and /metrics down (and Kubernetes restarts the pod).

Before the fix the listener served 16 clients at a time with a 10 s timeout per read, not per
request: 17 sockets sending one byte every 5 s kept /healthz unreachable for as long as they
ran. Now a connection costs no thread while it waits, the whole request must arrive within
a few seconds, and the oldest waiting connection makes room for a new one.
"""

from __future__ import annotations

import socket
import time
import urllib.request

from gateway.edges import httpd


def healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        return int(resp.status)


def _alive(sock: socket.socket) -> bool:
    """Send one more byte of a request that never ends; False once the gateway has closed it."""
    try:
        sock.send(b"G")
        return sock.recv(1, socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True  # nothing to read: still open
    except OSError:
        return False


def test_dripping_sockets_are_cut_and_probes_keep_answering(gw):
    port = gw.gateway.metrics_port
    drippers = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(60)]
    cut: dict[int, float] = {}
    started = time.monotonic()
    probes = []
    while time.monotonic() - started < 15 and len(cut) < len(drippers):
        for n, sock in enumerate(drippers):
            if n not in cut and not _alive(sock):
                cut[n] = time.monotonic() - started
        probes.append(healthz(port))
        time.sleep(0.5)
    for sock in drippers:
        sock.close()
    assert probes and set(probes) == {200}
    assert len(cut) == len(drippers)  # every slow request was cut...
    assert max(cut.values()) < httpd.REQUEST_DEADLINE + 5  # ...at its deadline, not by the test's end


def test_more_idle_sockets_than_places_do_not_keep_a_probe_out(gw):
    port = gw.gateway.metrics_port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(httpd.MAX_WAITING + 44)]
    try:
        assert healthz(port) == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert b"ftpgw_sessions_active" in resp.read()
    finally:
        for sock in idle:
            sock.close()
