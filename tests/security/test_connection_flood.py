"""Connection floods: per-address and total limits answer 421 before any backend work."""

from __future__ import annotations

import socket

from tests.helpers.gateway_env import base_config, wait_for


def greeting(gw, source: str) -> bytes:
    with socket.create_connection((gw.host, gw.port), source_address=(source, 0), timeout=10) as sock:
        return sock.makefile("rb").readline()


def test_one_address_cannot_take_every_session(gateway_factory, sshd, user):
    doc = base_config(sshd)
    doc["limits"].update(max_connections_per_ip=3, max_connections=5)
    gw = gateway_factory(doc)
    held = [socket.create_connection((gw.host, gw.port), source_address=("127.0.0.2", 0)) for _ in range(3)]
    for sock in held:
        assert sock.makefile("rb").readline().startswith(b"220")
    assert greeting(gw, "127.0.0.2").startswith(b"421")
    assert greeting(gw, "127.0.0.1").startswith(b"220")  # others still get in
    # That session's place is free once the gateway has seen its client go (not at once).
    assert wait_for(lambda: gw.gateway.sessions_open() == 3)
    for i in (3, 4):
        held.append(socket.create_connection((gw.host, gw.port), source_address=(f"127.0.0.{i}", 0)))
        assert held[-1].makefile("rb").readline().startswith(b"220")
    assert greeting(gw, "127.0.0.5").startswith(b"421")  # the total
    registry = gw.gateway.metrics.registry
    assert not registry.get_sample_value("ftpgw_backend_connects_total", {"backend": "main", "result": "ok"})
    for sock in held:
        sock.close()


def test_the_implicit_ftps_listener_shares_the_limits(gateway_factory, sshd, tls_files):
    from tests.helpers.gateway_env import tls_config

    doc = tls_config(sshd, tls_files)
    doc["limits"].update(max_connections_per_ip=2)
    gw = gateway_factory(doc)
    host, implicit_port = gw.gateway.implicit_address
    held = [socket.create_connection((gw.host, gw.port), source_address=("127.0.0.2", 0))]
    assert held[0].makefile("rb").readline().startswith(b"220")
    held.append(socket.create_connection((host, implicit_port), source_address=("127.0.0.2", 0)))
    assert wait_for(lambda: gw.gateway.sessions_open() == 2)  # the implicit one waits in its handshake
    assert greeting(gw, "127.0.0.2").startswith(b"421")  # 1 plain + 1 implicit = the per-IP limit
    for sock in held:
        sock.close()
