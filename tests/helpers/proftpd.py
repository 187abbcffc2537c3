"""ProFTPD from Debian as the reference where vsftpd has no such feature: checksums
(mod_digest), SITE UTIME (mod_site_misc) and symbolic SITE CHMOD.

Serves the same Unix users and home directories as the test sshd, each user confined to its
home (``DefaultRoot ~``, like the gateway's ``root: ~``); logins check the Unix password.
Debian's proftpd-core conflicts with its vsftpd package (both are the "ftp-server"), so
tests/run.sh unpacks it under ``UNPACKED`` rather than installing it.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.sshd import wait_port
from tests.helpers.vsftpd import VsftpdServer

#: Where tests/run.sh unpacks Debian's proftpd-core package.
UNPACKED = Path("/opt/ftpgw-test/proftpd")


@dataclass
class ProftpdServer(VsftpdServer):
    """proftpd on 127.0.0.1:port in the foreground (its lifecycle is vsftpd's)."""

    @property
    def log(self) -> Path:
        return self.workdir / "proftpd.log"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "proftpd.conf"
        settings = [
            "ServerType standalone",
            f"Port {self.port}",
            "DefaultAddress 127.0.0.1",
            "SocketBindTight on",
            "UseIPv6 off",
            "User nobody",
            "Group nogroup",
            f"PidFile {self.workdir / 'proftpd.pid'}",
            f"ScoreboardFile {self.workdir / 'proftpd.scoreboard'}",
            "DelayTable none",
            "WtmpLog off",
            "UseReverseDNS off",
            "RequireValidShell off",  # the test users have no login shell
            "AuthOrder mod_auth_unix.c",
            "DefaultRoot ~",
            "Umask 022",
            "AllowOverwrite on",
            f"PassivePorts {self.passive[0]} {self.passive[1]}",
            f"SystemLog {self.log}",
            "TransferLog none",
            f"ModulePath {UNPACKED / 'usr/lib/proftpd'}",
            "LoadModule mod_digest.c",
            "LoadModule mod_site_misc.c",
        ]
        cfg.write_text("".join(f"{line}\n" for line in settings))
        return cfg

    def start(self) -> ProftpdServer:
        cfg = self.write_config()
        proftpd = UNPACKED / "usr/sbin/proftpd"
        self.proc = subprocess.Popen([proftpd, "--nodaemon", "--config", str(cfg)], stderr=subprocess.PIPE)
        wait_port("127.0.0.1", self.port)
        return self
