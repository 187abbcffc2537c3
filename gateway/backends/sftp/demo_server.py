"""A tiny embedded SFTP server (asyncssh) for ``ftp-sftp-gateway demo``: one user, one folder.

For first runs and demonstrations only: it serves ``data_dir`` chrooted to user ``demo``
with a password, on a loopback port, with a host key generated for this run.
"""

from __future__ import annotations

import hmac
from pathlib import Path

import asyncssh

from gateway.backends.sftp.loop import BackgroundLoop


class _DemoSSHServer(asyncssh.SSHServer):
    def __init__(self, user: str, password: str) -> None:
        self._user, self._password = user, password

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == self._user and hmac.compare_digest(password.encode(), self._password.encode())


def start_demo_sftp(
    loop: BackgroundLoop, data_dir: Path, state_dir: Path, user: str, password: str
) -> tuple[int, Path]:
    """Start the SFTP server on 127.0.0.1; returns (port, known_hosts file for it)."""
    key = asyncssh.generate_private_key("ssh-ed25519")

    async def start() -> int:
        server = await asyncssh.create_server(
            lambda: _DemoSSHServer(user, password),
            "127.0.0.1",
            0,
            server_host_keys=[key],
            sftp_factory=lambda chan: asyncssh.SFTPServer(chan, chroot=str(data_dir).encode()),
            allow_scp=False,
        )
        return int(server.sockets[0].getsockname()[1])

    port = loop.run(start(), 30)
    known_hosts = state_dir / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {key.export_public_key().decode().strip()}\n")
    return port, known_hosts
