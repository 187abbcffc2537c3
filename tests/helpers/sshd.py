"""A real OpenSSH sshd for tests: own config, host key, port and Unix users with passwords.

Runs as root (tests and CI do): Unix users are created with useradd and get passwords with
chpasswd so password passthrough is tested against the real sshd password check.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
BASE = Path("/srv/ftpgw-test")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive TCP ports free on 127.0.0.1 right now."""
    while True:
        first = free_port()
        with contextlib.ExitStack() as held:
            try:
                for port in range(first + 1, first + count):
                    held.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
        return first


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on (host, port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port}")


@dataclass
class TestUser:
    name: str
    password: str
    home: Path


@dataclass
class OpenSSHServer:
    """sshd on 127.0.0.1:port with its own host key; ``known_hosts`` trusts exactly that key."""

    workdir: Path
    port: int = field(default_factory=free_port)
    max_sessions: int = 50
    #: sshd_config lines placed first (sshd takes the first value of a keyword).
    extra_config: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def known_hosts(self) -> Path:
        return self.workdir / "known_hosts"

    @property
    def log(self) -> Path:
        return self.workdir / "sshd.log"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        key = self.workdir / "host_ed25519"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        pub = (self.workdir / "host_ed25519.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n")
        cfg = self.workdir / "sshd_config"
        cfg.write_text(
            "\n".join(
                [
                    *self.extra_config,
                    "ListenAddress 127.0.0.1",
                    f"Port {self.port}",
                    f"HostKey {key}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    "StrictModes no",
                    "UsePAM no",
                    "PasswordAuthentication yes",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication no",
                    "PermitRootLogin no",
                    "Subsystem sftp internal-sftp",
                    "ForceCommand internal-sftp",
                    "MaxStartups 200:30:400",
                    f"MaxSessions {self.max_sessions}",
                    "MaxAuthTries 3",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        return cfg

    def start(self) -> OpenSSHServer:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        cfg = self.write_config()
        subprocess.run([SSHD, "-t", "-f", str(cfg)], check=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stderr=log)
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


def ensure_user(name: str, password: str, homes: Path = BASE / "home") -> TestUser:
    """Create (or reset) a Unix user whose home is an empty directory under ``homes``."""
    home = homes / name
    homes.mkdir(mode=0o755, parents=True, exist_ok=True)
    exists = subprocess.run(["id", "-u", name], capture_output=True).returncode == 0
    if not exists:
        subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", str(home), "--shell", "/usr/sbin/nologin", name],
            check=True,
        )
    else:
        subprocess.run(["usermod", "--home", str(home), name], check=True, capture_output=True)
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n".encode(), check=True)
    reset_home(home, name)
    return TestUser(name, password, home)


def reset_home(home: Path, owner: str) -> None:
    """Empty ``home`` and give it to ``owner``."""
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(mode=0o755)
    shutil.chown(home, owner, owner)


def chown_tree(path: Path, owner: str) -> None:
    """Give ``path`` and everything below it to ``owner`` (seeded test files)."""
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            shutil.chown(os.path.join(root, name), owner, owner)
    shutil.chown(path, owner, owner)
