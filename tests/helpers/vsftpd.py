"""vsftpd from Debian as the reference server: the FTP server the gateway replaces, on local disk.

Serves the same Unix users and home directories as the test sshd (each user chrooted in its
home, like the gateway's ``root: ~``), so a client script can run against both and the
outcomes be compared (tests/differential). Runs as root (vsftpd needs it for PAM and chroot);
logins go through a PAM service of its own that checks the Unix password only.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.sshd import free_port, wait_port

VSFTPD = shutil.which("vsftpd") or "/usr/sbin/vsftpd"
#: Debian's own service also requires a shell listed in /etc/shells (the test users have none).
PAM_SERVICE = "ftpgw-test-vsftpd"
PAM_CONFIG = "auth required pam_unix.so\naccount required pam_unix.so\nsession required pam_permit.so\n"


@dataclass
class VsftpdServer:
    """vsftpd on 127.0.0.1:port with its own config; passive ports in ``passive``."""

    workdir: Path
    passive: tuple[int, int]
    port: int = field(default_factory=free_port)
    chroot: bool = True  # False: users log in at their home and see the whole file system
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "vsftpd.log"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        empty = self.workdir / "empty"
        empty.mkdir(mode=0o755, exist_ok=True)
        Path("/etc/pam.d", PAM_SERVICE).write_text(PAM_CONFIG)
        cfg = self.workdir / "vsftpd.conf"
        settings = {
            "listen": "YES",
            "listen_ipv6": "NO",
            "listen_address": "127.0.0.1",
            "listen_port": self.port,
            "background": "NO",
            "anonymous_enable": "NO",
            "local_enable": "YES",
            "write_enable": "YES",
            "local_umask": "022",
            "chroot_local_user": "YES" if self.chroot else "NO",
            "allow_writeable_chroot": "YES",
            "pam_service_name": PAM_SERVICE,
            "secure_chroot_dir": empty,
            "pasv_enable": "YES",
            "pasv_min_port": self.passive[0],
            "pasv_max_port": self.passive[1],
            "seccomp_sandbox": "NO",
            "utf8_filesystem": "YES",
            # TYPE A converts line ends, as the gateway does (Debian's default leaves data as is).
            "ascii_upload_enable": "YES",
            "ascii_download_enable": "YES",
            # ABOR during a transfer (Ctrl-C in BSD-style clients) acted on at once.
            "async_abor_enable": "YES",
            "use_localtime": "NO",
            "xferlog_enable": "NO",
            "vsftpd_log_file": self.log,
            "delay_failed_login": 0,
        }
        cfg.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        cfg.chmod(0o600)  # vsftpd refuses a config others can write
        return cfg

    def start(self) -> VsftpdServer:
        cfg = self.write_config()
        self.proc = subprocess.Popen([VSFTPD, str(cfg)], stderr=subprocess.PIPE)
        wait_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
