"""Which known_hosts lines the gateway's checks trust: exactly those asyncssh's connect uses."""

from __future__ import annotations

import asyncssh

from gateway.backends.sftp.backend import trusted_keys


def _keys(n: int) -> list[str]:
    return [
        asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip() for _ in range(n)
    ]


def test_port_22_matches_the_bare_name_only_as_openssh_writes_it():
    bracketed, bare = _keys(2)
    known = asyncssh.import_known_hosts(f"[sftp.invalid]:22 {bracketed}\nsftp.invalid {bare}\n")
    host_keys, _ = trusted_keys(known, "sftp.invalid", 22)
    assert [k.export_public_key().decode().strip() for k in host_keys] == [bare]


def test_other_ports_match_the_bracketed_form_and_names_need_not_resolve():
    (key,) = _keys(1)
    known = asyncssh.import_known_hosts(f"[sftp.invalid]:2222 {key}\n")
    assert trusted_keys(known, "sftp.invalid", 2222)[0]
    assert not trusted_keys(known, "sftp.invalid", 2223)[0]
    assert not trusted_keys(known, "other.invalid", 2222)[0]
