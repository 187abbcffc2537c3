"""Soak test: many concurrent FTP sessions against the gateway for a bounded time, leaks checked.

Starts a throwaway OpenSSH sshd on loopback with one Unix user whose files live on tmpfs and
the gateway as a subprocess (one process, password passthrough), then runs --sessions ftplib
sessions in threads for --minutes doing a weighted mix of operations, every download and
listing checked against what the session wrote: login, LIST/NLST/MLSD, small and medium
STOR/RETR (sha256), SIZE/MDTM, MKD/RMD, RNFR/RNTO, DELE, REST+RETR, APPE, NOOP, PASV and EPSV,
and reconnects (a quarter of the sessions log out and in again every few operations). The
gateway's RSS, threads and open fds are sampled from /proc; at the end the pass criteria are
printed and decide the exit code (0 pass, 1 fail): no failed operation, RSS growth from the
end of the warm-up to the end of the run under 10%, threads and fds back to their baseline
once every session has quit and the pooled SSH connections have expired.

Needs root (it creates a Unix user and runs sshd). Not part of the test run.
Usage (as root): .venv/bin/python bench/soak.py [--sessions 200] [--minutes 10]
       (quick check: --sessions 20 --minutes 1)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ftplib
import hashlib
import io
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import Proc, run  # noqa: E402
from tests.helpers.sshd import OpenSSHServer, ensure_user, free_port, wait_port  # noqa: E402

KiB, MiB = 2**10, 2**20
USER = "gwsoak"
PASSWORD = "Gw-soak-pass-1"
WORK = Path("/dev/shm/ftpgw-soak")  # tmpfs, apart from bench/run.py's directory
KEPT_LOG = Path("/tmp/ftpgw-soak-gateway.log")  # the gateway's log, kept after the cleanup
HOST = "127.0.0.1"
PASSIVE_PORTS = (61000, 62999)  # above Linux's default ephemeral range (32768-60999)
SSHD_MAX_SESSIONS = 10  # OpenSSH's defaults, as a real backend has them
SSHD_MAX_STARTUPS = "10:30:100"
POOL_MAX_SESSIONS = 8  # the gateway's defaults: below MaxSessions / MaxStartups
POOL_MAX_STARTUPS = 8
FTP_TIMEOUT = 60.0  # seconds per client socket operation: bounds every hung operation
BLOCK = 64 * KiB
MAX_FILES = 12  # files a session keeps in its directory (bounds tmpfs use)
SHARED = 4  # seeded 1 MiB files every session downloads
BLOB = os.urandom(8 * MiB)  # every uploaded byte is a slice of this

#: Operation kinds and their weights (per session; "reconnect" differs for churn sessions).
WEIGHTS = {
    "noop": 10,
    "list": 6,
    "nlst": 4,
    "mlsd": 4,
    "stor_small": 9,
    "stor_medium": 2,
    "retr": 8,
    "retr_shared": 2,
    "size_mdtm": 5,
    "mkd_rmd": 2,
    "rename": 3,
    "dele": 3,
    "rest_retr": 3,
    "appe": 3,
    "reconnect": 1,
}
CHURN_RECONNECT_WEIGHT = 14  # about every 5th operation of a churn session


class Mismatch(Exception):
    """A reply or content that differs from what the session wrote."""


@dataclass
class RemoteFile:
    """What a session stored in a file: slices of BLOB, in order."""

    parts: list[tuple[int, int]]
    _sha: str | None = None

    @property
    def size(self) -> int:
        """Length in bytes."""
        return sum(n for _, n in self.parts)

    def data(self) -> bytes:
        """The file's expected content."""
        return b"".join(BLOB[o : o + n] for o, n in self.parts)

    def sha(self) -> str:
        """sha256 hex digest of the content (cached)."""
        if self._sha is None:
            self._sha = hashlib.sha256(self.data()).hexdigest()
        return self._sha


@dataclass
class Stats:
    """Operation counts, latencies, errors and bytes of every session (thread-safe)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failed: Counter[str] = field(default_factory=Counter)
    errors: dict[str, tuple[int, str]] = field(default_factory=dict)  # key -> (count, first example)
    data_modes: Counter[str] = field(default_factory=Counter)
    bytes_up: int = 0
    bytes_down: int = 0

    def record(self, kind: str, seconds: float, error: BaseException | None = None) -> None:
        """Count one operation (failed when ``error`` is given)."""
        with self.lock:
            self.latencies.setdefault(kind, []).append(seconds)
            if error is not None:
                self.failed[kind] += 1
                text = f"{kind}: {error.__class__.__name__}: {str(error)[:200]}"
                key = re.sub(r"\d+", "N", text)
                count, first = self.errors.get(key, (0, text))
                self.errors[key] = (count + 1, first)

    def moved(self, up: int = 0, down: int = 0) -> None:
        """Count payload bytes."""
        with self.lock:
            self.bytes_up += up
            self.bytes_down += down

    def total(self) -> int:
        """Operations so far."""
        with self.lock:
            return sum(len(v) for v in self.latencies.values())

    def total_failed(self) -> int:
        """Failed operations so far."""
        with self.lock:
            return sum(self.failed.values())


class SoakFTP(ftplib.FTP):
    """ftplib with EPSV on IPv4 too (ftplib itself sends EPSV only over IPv6)."""

    epsv = False

    def makepasv(self) -> tuple[str, int]:
        """Open passive mode with EPSV or PASV, as ``epsv`` says."""
        if self.epsv:
            assert self.sock is not None
            _, port = ftplib.parse229(self.sendcmd("EPSV"), self.sock.getpeername())
            return self.host, port
        return super().makepasv()


class Session:
    """One FTP client thread: logs in, runs random operations until the end, checks every reply."""

    def __init__(self, index: int, port: int, stats: Stats, stop: threading.Event, end: float, seed: int):
        self.index, self.port, self.stats, self.stop, self.end = index, port, stats, stop, end
        self.rng = random.Random(seed * 100_003 + index)
        self.dir = f"s{index:03d}"
        self.files: dict[str, RemoteFile] = {}
        self.counter = 0
        self.ftp: SoakFTP | None = None
        self.churn = index % 4 == 0
        weights = dict(WEIGHTS, reconnect=CHURN_RECONNECT_WEIGHT if self.churn else WEIGHTS["reconnect"])
        self.kinds, self.weights = list(weights), list(weights.values())
        self.finished = False

    # --- plumbing

    def run(self, start_at: float, think: float) -> None:
        """The session's life: staggered start, operations until the end, QUIT."""
        try:
            self._sleep_until(start_at)
            while not self._over():
                if self.ftp is None:
                    if not self.op("login", self.login):
                        self._sleep(1.0)  # the failure is recorded; try again
                    continue
                kind = self.rng.choices(self.kinds, self.weights)[0]
                if not self.op(kind, getattr(self, f"do_{kind}")):
                    self.hang_up()  # state unknown after a failure: start afresh
                self._sleep(self.rng.uniform(0, 2 * think))
            if self.ftp is not None:
                self.op("quit", self.quit)
        except Exception as err:  # a defect of the soak itself: counted, never silent
            self.stats.record("session", 0.0, err)
        self.hang_up()
        self.finished = True

    def _over(self) -> bool:
        return self.stop.is_set() or time.monotonic() >= self.end

    def _sleep(self, seconds: float) -> None:
        self.stop.wait(max(0.0, min(seconds, self.end - time.monotonic())))

    def _sleep_until(self, when: float) -> None:
        self.stop.wait(max(0.0, when - time.monotonic()))

    def op(self, kind: str, action: Callable[[], None]) -> bool:
        """Run and time one operation; record it, failed if it raised."""
        started = time.perf_counter()
        try:
            action()
        except Exception as err:
            self.stats.record(kind, time.perf_counter() - started, err)
            return False
        self.stats.record(kind, time.perf_counter() - started)
        return True

    def hang_up(self) -> None:
        """Drop the control connection without QUIT (after a failure, or as churn)."""
        if self.ftp is not None:
            with contextlib.suppress(OSError):
                self.ftp.close()
        self.ftp = None

    def conn(self) -> SoakFTP:
        """The logged-in client, with the data mode of the next transfer drawn at random."""
        assert self.ftp is not None
        self.ftp.epsv = self.rng.random() < 0.5
        with self.stats.lock:
            self.stats.data_modes["EPSV" if self.ftp.epsv else "PASV"] += 1
        return self.ftp

    def new_name(self, prefix: str = "f") -> str:
        """A file or directory name this session has not used yet."""
        self.counter += 1
        return f"{prefix}{self.counter:05d}.dat"

    def pick(self, min_size: int = 0) -> tuple[str, RemoteFile] | None:
        """A random file of this session (at least ``min_size`` bytes), or None."""
        names = [n for n, f in self.files.items() if f.size >= min_size]
        if not names:
            return None
        name = self.rng.choice(sorted(names))
        return name, self.files[name]

    def pick_or_store(self, min_size: int = 0, max_size: int | None = None) -> tuple[str, RemoteFile] | None:
        """A file of this session to work on, or None after storing a new small one instead."""
        picked = self.pick(min_size)
        if picked is None or (max_size is not None and picked[1].size > max_size):
            self.do_stor_small()
            return None
        return picked

    def slice_of(self, size: int) -> tuple[int, int]:
        """A random slice of BLOB of ``size`` bytes."""
        return self.rng.randrange(0, len(BLOB) - size + 1), size

    def download(self, name: str, rest: int | None = None) -> tuple[str, int]:
        """RETR ``name`` (from ``rest``): (sha256 hex, size) of what came."""
        digest, size = hashlib.sha256(), 0

        def take(chunk: bytes) -> None:
            nonlocal size
            digest.update(chunk)
            size += len(chunk)

        self.conn().retrbinary(f"RETR {name}", take, BLOCK, rest)
        self.stats.moved(down=size)
        return digest.hexdigest(), size

    def upload(self, command: str, data: bytes) -> None:
        """STOR or APPE ``data``."""
        self.conn().storbinary(command, io.BytesIO(data), BLOCK)
        self.stats.moved(up=len(data))

    def check_file(self, name: str, rf: RemoteFile) -> None:
        """Download ``name`` and compare it with what was written."""
        sha, size = self.download(name)
        if (sha, size) != (rf.sha(), rf.size):
            raise Mismatch(
                f"RETR {self.dir}/{name}: {size} bytes sha {sha[:12]}, expected {rf.size} {rf.sha()[:12]}"
            )

    def store(self, size: int) -> None:
        """STOR a new file of ``size`` bytes, check it comes back identical, make room if needed."""
        if len(self.files) >= MAX_FILES:
            self.do_dele()
        name, rf = self.new_name(), RemoteFile([self.slice_of(size)])
        self.upload(f"STOR {name}", rf.data())
        self.files[name] = rf
        self.check_file(name, rf)

    # --- operations

    def login(self) -> None:
        """Connect, USER/PASS, CWD to the session's directory, TYPE I."""
        ftp = SoakFTP()
        try:
            ftp.connect(HOST, self.port, timeout=FTP_TIMEOUT)
            ftp.login(USER, PASSWORD)
            ftp.cwd(self.dir)
            ftp.voidcmd("TYPE I")
        except BaseException:
            ftp.close()
            raise
        self.ftp = ftp

    def quit(self) -> None:
        """QUIT and close."""
        assert self.ftp is not None
        ftp, self.ftp = self.ftp, None
        try:
            ftp.quit()
        finally:
            ftp.close()

    def do_reconnect(self) -> None:
        """Log out (QUIT, or one time in five just drop the connection) and log in again."""
        if self.rng.random() < 0.2:
            self.hang_up()
        else:
            self.quit()
        self.login()

    def do_noop(self) -> None:
        """NOOP."""
        assert self.ftp is not None
        self.ftp.voidcmd("NOOP")

    def do_list(self) -> None:
        """LIST: every file of the session is in it (and the shared directory lists its files)."""
        lines: list[str] = []
        shared = self.rng.random() < 0.2
        self.conn().retrlines("LIST /shared" if shared else "LIST", lines.append)
        names = {line.split()[-1] for line in lines if line.strip()}
        expected = {f"shared-{i}.bin" for i in range(SHARED)} if shared else set(self.files)
        if not expected <= names:
            raise Mismatch(f"LIST lacks {sorted(expected - names)[:3]}")

    def do_nlst(self) -> None:
        """NLST: exactly the session's files."""
        names = set(self.conn().nlst())
        if names != set(self.files):
            extra, missing = sorted(names - set(self.files))[:3], sorted(set(self.files) - names)[:3]
            raise Mismatch(f"NLST: extra {extra}, missing {missing}")

    def do_mlsd(self) -> None:
        """MLSD: exactly the session's files, with their sizes."""
        got = {
            name: int(facts["size"])
            for name, facts in self.conn().mlsd(facts=["type", "size"])
            if facts.get("type") == "file"
        }
        want = {name: rf.size for name, rf in self.files.items()}
        if got != want:
            diff = sorted(set(got.items()) ^ set(want.items()))[:3]
            raise Mismatch(f"MLSD differs: {diff}")

    def do_stor_small(self) -> None:
        """STOR 0 bytes to 64 KiB, then RETR and compare."""
        size = (
            0
            if self.rng.random() < 0.05
            else self.rng.choice((self.rng.randint(1, 4 * KiB), self.rng.randint(1, 64 * KiB)))
        )
        self.store(size)

    def do_stor_medium(self) -> None:
        """STOR 256 KiB to 2 MiB, then RETR and compare."""
        self.store(self.rng.randint(256 * KiB, 2 * MiB))

    def do_retr(self) -> None:
        """RETR one of the session's files and compare (a new small one if it has none)."""
        picked = self.pick_or_store()
        if picked is None:
            return
        self.check_file(*picked)

    def do_retr_shared(self) -> None:
        """RETR a seeded 1 MiB file that every session reads, and compare."""
        i = self.rng.randrange(SHARED)
        self.check_file(f"/shared/shared-{i}.bin", RemoteFile([(i * MiB, MiB)]))

    def do_size_mdtm(self) -> None:
        """SIZE and MDTM of one of the session's files: the size written, a time near now."""
        picked = self.pick_or_store()
        if picked is None:
            return
        name, rf = picked
        assert self.ftp is not None
        self.ftp.voidcmd("TYPE I")  # LIST/NLST switched to ASCII, where SIZE is refused
        size = self.ftp.size(name)
        if size != rf.size:
            raise Mismatch(f"SIZE {name}: {size}, expected {rf.size}")
        reply = self.ftp.sendcmd(f"MDTM {name}")
        stamp = datetime.strptime(reply.split()[1][:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
        if abs(stamp - datetime.now(UTC)) > timedelta(hours=1):
            raise Mismatch(f"MDTM {name}: {reply!r} is not near now")

    def do_mkd_rmd(self) -> None:
        """MKD a directory, CWD into it and back (CDUP), RMD it."""
        assert self.ftp is not None
        name = self.new_name("d")
        self.ftp.mkd(name)
        self.ftp.cwd(name)
        pwd = self.ftp.pwd()
        if pwd != f"/{self.dir}/{name}":
            raise Mismatch(f"PWD in {name}: {pwd!r}")
        self.ftp.voidcmd("CDUP")
        self.ftp.rmd(name)

    def do_rename(self) -> None:
        """RNFR/RNTO one of the session's files; SIZE of the new name."""
        picked = self.pick_or_store()
        if picked is None:
            return
        old, rf = picked
        new = self.new_name("r")
        assert self.ftp is not None
        self.ftp.rename(old, new)
        self.files[new] = self.files.pop(old)
        self.ftp.voidcmd("TYPE I")
        if (size := self.ftp.size(new)) != rf.size:
            raise Mismatch(f"SIZE {new} after rename: {size}, expected {rf.size}")

    def do_dele(self) -> None:
        """DELE one of the session's files; SIZE of it is then 550."""
        picked = self.pick()
        if picked is None:
            return
        name, _ = picked
        assert self.ftp is not None
        self.ftp.delete(name)
        del self.files[name]
        self.ftp.voidcmd("TYPE I")
        try:
            self.ftp.size(name)
        except ftplib.error_perm as err:
            if not str(err).startswith("550"):
                raise
        else:
            raise Mismatch(f"SIZE {name} answered after DELE")

    def do_rest_retr(self) -> None:
        """REST to a random offset, RETR, compare with the tail of the file."""
        picked = self.pick_or_store(min_size=1)
        if picked is None:
            return
        name, rf = picked
        offset = self.rng.randrange(rf.size)
        sha, size = self.download(name, rest=offset)
        tail = rf.data()[offset:]
        if (sha, size) != (hashlib.sha256(tail).hexdigest(), len(tail)):
            raise Mismatch(
                f"REST {offset} + RETR {name}: {size} bytes, expected {len(tail)} (or other content)"
            )

    def do_appe(self) -> None:
        """APPE 1 byte to 64 KiB to one of the session's files (below 3 MiB); SIZE after."""
        picked = self.pick_or_store(max_size=3 * MiB)
        if picked is None:
            return
        name, rf = picked
        part = self.slice_of(self.rng.randint(1, 64 * KiB))
        self.upload(f"APPE {name}", BLOB[part[0] : part[0] + part[1]])
        self.files[name] = rf = RemoteFile([*rf.parts, part])
        assert self.ftp is not None
        self.ftp.voidcmd("TYPE I")
        if (size := self.ftp.size(name)) != rf.size:
            raise Mismatch(f"SIZE {name} after APPE: {size}, expected {rf.size}")


@dataclass
class Sample:
    """The gateway process at one moment."""

    t: float  # seconds since the load started (negative: before)
    rss: float  # MiB
    threads: int
    fds: int


class Gateway:
    """The gateway subprocess: its /proc figures."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc, self.stats = proc, Proc(proc.pid)

    def sample(self, t: float) -> Sample:
        """RSS, threads and open fds now."""
        pid = self.proc.pid
        return Sample(
            t,
            self.stats.status("VmRSS"),
            len(os.listdir(f"/proc/{pid}/task")),
            len(os.listdir(f"/proc/{pid}/fd")),
        )


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the soak process dies (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (e.g. from `timeout`) stops the soak like Ctrl-C, so that cleanup runs."""
    raise KeyboardInterrupt


class Soak:
    """Setup, load, measures, verdict and cleanup of one soak run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.duration = args.minutes * 60
        # RSS rises for about five minutes, then holds (200 sessions: 103 MiB at 2 min, 126
        # at 5, 126 at 10) while the Python heap is flat from the first minutes (tracemalloc,
        # in-process): glibc's heaps reaching their working size. Half the run, up to five
        # minutes, is warm-up; a leak shows as growth over the rest.
        self.warmup = min(300.0, 0.5 * self.duration)
        self.window = min(30.0, 0.1 * self.duration)  # RSS is compared as medians over such windows
        self.interval = args.sample or max(1.0, min(5.0, self.duration / 30))
        self.stats = Stats()
        self.stop = threading.Event()
        self.samples: list[Sample] = []
        self.sshd: OpenSSHServer | None = None
        self.gateway: Gateway | None = None
        self.created_user = False
        self.notes: list[str] = []
        self.cold: Sample | None = None
        self.baseline: Sample | None = None
        self.settled: Sample | None = None
        self.sessions: list[Session] = []
        self.load_seconds = 0.0
        self.cpu = 0.0
        self.version = "?"

    # --- setup

    def setup(self) -> None:
        """sshd, user with seeded files on tmpfs, gateway; then the baseline."""
        shutil.rmtree(WORK, ignore_errors=True)
        WORK.mkdir(parents=True)
        self.source = self.gateway_source()
        self.sshd = OpenSSHServer(
            WORK / "sshd",
            max_sessions=SSHD_MAX_SESSIONS,
            extra_config=(f"MaxStartups {SSHD_MAX_STARTUPS}",),
        ).start()
        self.created_user = subprocess.run(["id", "-u", USER], capture_output=True).returncode != 0
        home = ensure_user(USER, PASSWORD, homes=WORK / "home").home
        (home / "shared").mkdir()
        for i in range(SHARED):
            (home / "shared" / f"shared-{i}.bin").write_bytes(BLOB[i * MiB : (i + 1) * MiB])
        for i in range(self.args.sessions + 1):  # the last one for the priming session
            (home / f"s{i:03d}").mkdir()
        run(["chown", "-R", f"{USER}:{USER}", str(home)])
        self.start_gateway()
        self.take_baseline()

    def gateway_config(self, port: int, metrics_port: int) -> dict[str, object]:
        """The soak's gateway configuration (see docs/configuration.md for each key)."""
        assert self.sshd is not None
        return {
            "listen": {"address": HOST, "port": port, "passive_ports": list(PASSIVE_PORTS)},
            "limits": {
                # every client is 127.0.0.1; room for sessions still closing during churn
                "max_connections": 4 * self.args.sessions + 64,
                "max_connections_per_ip": 4 * self.args.sessions + 64,
            },
            "guard": {
                "enabled": True,
                # logins in flight count like failures: 5 would queue 200 concurrent logins
                "max_failures": 1000,
                "max_unauthenticated": 4 * self.args.sessions + 64,
                "max_unauthenticated_per_ip": 4 * self.args.sessions + 64,
            },
            "backends": {
                "main": {
                    "host": HOST,
                    "port": self.sshd.port,
                    "known_hosts": str(self.sshd.known_hosts),
                    "pool": {
                        "max_sessions": POOL_MAX_SESSIONS,
                        "max_startups": POOL_MAX_STARTUPS,
                        "idle_timeout": self.args.pool_idle,
                    },
                }
            },
            "routes": [{"match": {"user": "*"}, "backend": "main", "root": "~"}],
            "metrics": {"enabled": True, "address": HOST, "port": metrics_port},
            "log": {"level": "warning"},
        }

    def gateway_source(self) -> Path:
        """The directory holding the `gateway` package to run: the working tree, or --ref exported."""
        if not self.args.ref:
            dirty = run(["git", "-C", str(ROOT), "status", "--porcelain", "gateway"]).stdout.strip()
            self.version = "working tree" + (" (uncommitted changes in gateway/)" if dirty else "")
            return ROOT
        commit = run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{self.args.ref}^{{commit}}"])
        self.version = f"git {commit.stdout.decode().strip()[:12]} ({self.args.ref})"
        src = WORK / "src"
        src.mkdir()
        archive = run(["git", "-C", str(ROOT), "archive", self.args.ref, "gateway"]).stdout
        run(["tar", "-x", "-C", str(src)], input=archive)
        return src

    def start_gateway(self) -> None:
        """Write the config, start `python -m gateway run` and wait until /readyz says ready."""
        self.port, self.metrics_port = free_port(), free_port()
        cfg = WORK / "gateway.yaml"
        cfg.write_text(yaml.safe_dump(self.gateway_config(self.port, self.metrics_port)))
        log = (WORK / "gateway.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
            cwd=self.source,  # `-m gateway` imports the package found there first
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        self.gateway = Gateway(proc)
        wait_port(HOST, self.port, timeout=30)
        deadline = time.monotonic() + 60
        while self.http("/readyz")[0] != 200:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"gateway not ready: {self.http('/readyz')}")
            time.sleep(0.5)

    def http(self, path: str) -> tuple[int, str]:
        """(status, body) of a GET on the gateway's metrics listener; (0, error) if it fails."""
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}{path}", timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError as err:
            return 0, str(err)

    def take_baseline(self) -> None:
        """Cold sample, one priming session, then the baseline once its pooled connection has gone."""
        assert self.gateway is not None
        self.cold = self.gateway.sample(0.0)
        prime = Session(
            self.args.sessions, self.port, Stats(), threading.Event(), time.monotonic() + 60, self.args.seed
        )
        prime.login()
        for kind in ("stor_small", "stor_medium", "list", "mlsd", "retr", "rest_retr", "dele"):
            getattr(prime, f"do_{kind}")()
        prime.do_dele()
        prime.quit()
        # Lazily created process-lifetime things (the asyncssh imports, the loop's executor
        # thread for the health probe) now exist; the primed connection expires after the
        # pool's idle timeout (the reaper runs every 5 s at most).
        time.sleep(self.args.pool_idle + 6)
        self.baseline = self.lowest(5, 1.0)

    def lowest(self, count: int, pause: float) -> Sample:
        """The lowest threads and fds (and RSS) over ``count`` samples (a health probe's socket is brief)."""
        assert self.gateway is not None
        seen = []
        for i in range(count):
            if i:
                time.sleep(pause)
            seen.append(self.gateway.sample(0.0))
        return Sample(
            seen[-1].t, min(s.rss for s in seen), min(s.threads for s in seen), min(s.fds for s in seen)
        )

    # --- load

    def run_load(self) -> None:
        """Start the sessions (staggered), sample the gateway until the end, join the sessions."""
        assert self.gateway is not None
        a = self.args
        start = time.monotonic()
        end = start + self.duration
        self.cpu = self.gateway.stats.cpu()
        ramp = min(10.0, 0.05 * self.duration)
        threads = []
        for i in range(a.sessions):
            session = Session(i, self.port, self.stats, self.stop, end, a.seed)
            self.sessions.append(session)
            thread = threading.Thread(
                target=session.run, args=(start + ramp * i / a.sessions, a.think_ms / 1000), daemon=True
            )
            thread.start()
            threads.append(thread)
        next_print = start + 30
        while (now := time.monotonic()) < end and not self.stop.is_set():
            self.samples.append(self.gateway.sample(now - start))
            if now >= next_print or self.gateway.proc.poll() is not None:
                self.progress(now - start)
                next_print += 30
            if self.gateway.proc.poll() is not None:
                self.notes.append(f"gateway exited during the load (status {self.gateway.proc.returncode})")
                self.stop.set()
            self.stop.wait(min(self.interval, max(0.0, end - time.monotonic())))
        self.load_end = self.gateway.sample(time.monotonic() - start)
        self.samples.append(self.load_end)
        self.load_seconds = time.monotonic() - start
        deadline = time.monotonic() + FTP_TIMEOUT * 2 + 10  # one operation may still run: bounded
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [s.index for s in self.sessions if not s.finished]
        if stuck:
            for index in stuck:
                self.stats.record("finish", 0.0, TimeoutError(f"session s{index:03d} did not finish"))
        self.cpu = self.gateway.stats.cpu() - self.cpu

    def progress(self, elapsed: float) -> None:
        """One line on stderr: where the run is."""
        last = self.samples[-1]
        total = self.stats.total()
        print(
            f"[{elapsed:5.0f}s] ops {total} ({total / max(elapsed, 1e-9):.0f}/s),"
            f" failed {self.stats.total_failed()}, gateway RSS {last.rss:.0f} MiB,"
            f" threads {last.threads}, fds {last.fds}",
            file=sys.stderr,
            flush=True,
        )

    def settle(self) -> None:
        """After every session quit: wait (up to --settle s) for threads and fds to reach the baseline."""
        assert self.gateway is not None and self.baseline is not None
        base = self.baseline
        deadline = time.monotonic() + self.args.settle
        while True:
            self.settled = self.gateway.sample(0.0)
            if self.settled.threads <= base.threads and self.settled.fds <= base.fds:
                return
            if time.monotonic() >= deadline or self.gateway.proc.poll() is not None:
                return
            time.sleep(1.0)

    # --- report

    def window_rss(self, until: float) -> float:
        """Median RSS of the samples in the ``self.window`` seconds up to ``until``."""
        values = [s.rss for s in self.samples if until - self.window <= s.t <= until]
        if not values:
            values = [min(self.samples, key=lambda s: abs(s.t - until)).rss]
        return statistics.median(values)

    def report(self) -> bool:
        """Print the figures and the pass criteria; True if every criterion passes."""
        assert self.baseline is not None and self.settled is not None and self.cold is not None
        a, st = self.args, self.stats
        load = self.samples
        lat = st.latencies
        total = sum(len(v) for v in lat.values())
        failed = sum(st.failed.values())
        print(
            f"\nsoak of the gateway ({self.version}): {a.sessions} sessions for {self.load_seconds:.0f} s"
            f" (think time 0-{2 * a.think_ms} ms)"
        )
        print(f"{'operation':<14}{'ops':>9}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
        for kind in sorted(lat):
            ms = lat[kind]
            print(
                f"{kind:<14}{len(ms):>9}{st.failed[kind]:>8}{1000 * percentile(ms, 50):>9.1f}"
                f"{1000 * percentile(ms, 99):>9.1f}{1000 * max(ms):>9.1f}"
            )
        print(f"{'total':<14}{total:>9}{failed:>8}")
        probes = lat.get("noop", []) + lat.get("list", [])
        print(f"ops/s: {total / self.load_seconds:.1f}")
        if probes:
            print(
                f"probe latency (NOOP + LIST, {len(probes)}): p50 {1000 * percentile(probes, 50):.1f} ms,"
                f" p99 {1000 * percentile(probes, 99):.1f} ms"
            )
        print(
            f"bytes moved: {st.bytes_up / MiB:.1f} MiB up, {st.bytes_down / MiB:.1f} MiB down;"
            f" data connections: {st.data_modes['PASV']} PASV, {st.data_modes['EPSV']} EPSV"
        )
        print(
            f"gateway CPU during the load: {self.cpu:.0f} s"
            f" ({100 * self.cpu / self.load_seconds:.0f}% of a core)"
        )
        if st.errors:
            print(f"distinct errors ({len(st.errors)}), first {min(10, len(st.errors))}:")
            for count, first in list(st.errors.values())[:10]:
                print(f"  {count}x {first}")
        warm_rss = self.window_rss(self.warmup)
        end_rss = self.window_rss(self.load_seconds)
        growth = 100 * (end_rss - warm_rss) / warm_rss
        base = self.baseline
        print(
            f"\ngateway process (pid {self.gateway.proc.pid if self.gateway else '?'}):"
            f" warm-up {self.warmup:.0f} s; RSS as medians over {self.window:.0f} s windows, sampled every"
            f" {self.interval:.0f} s"
        )
        print(f"{'':<10}{'cold':>10}{'baseline':>10}{'warm-up':>10}{'peak':>10}{'end load':>10}{'quit':>10}")
        print(
            f"{'RSS MiB':<10}{self.cold.rss:>10.1f}{base.rss:>10.1f}{warm_rss:>10.1f}"
            f"{max(s.rss for s in load):>10.1f}{end_rss:>10.1f}{self.settled.rss:>10.1f}"
        )
        for name in ("threads", "fds"):
            values = [getattr(s, name) for s in load]
            print(
                f"{name:<10}{getattr(self.cold, name):>10}{getattr(base, name):>10}{'':>10}{max(values):>10}"
                f"{getattr(self.load_end, name):>10}{getattr(self.settled, name):>10}"
            )
        alive = self.gateway is not None and self.gateway.proc.poll() is None
        criteria = [
            ("failed operations", f"{failed}", "0", failed == 0),
            ("RSS growth warm-up -> end", f"{growth:+.1f}%", "< 10%", growth < 10),
            (
                "threads after quit",
                f"{self.settled.threads}",
                f"<= {base.threads}",
                self.settled.threads <= base.threads,
            ),
            ("fds after quit", f"{self.settled.fds}", f"<= {base.fds}", self.settled.fds <= base.fds),
            ("gateway alive", "yes" if alive else "no", "yes", alive),
        ]
        print(f"\n{'criterion':<28}{'value':>10}{'limit':>10}  result")
        for name, value, limit, ok in criteria:
            print(f"{name:<28}{value:>10}{limit:>10}  {'PASS' if ok else 'FAIL'}")
        self.print_logs()
        if self.settled.threads > base.threads:
            self.print_threads()
        for note in self.notes:
            print(note)
        return all(ok for *_, ok in criteria)

    def print_logs(self) -> None:
        """The gateway's warnings, sshd's errors and a few of the gateway's own counters."""
        status, metrics = self.http("/metrics")
        if status == 200:
            wanted = (
                "ftpgw_backend_connections",
                "ftpgw_backend_connects_total",
                "ftpgw_backend_errors_total",
                "ftpgw_guard_bans_total",
                "ftpgw_sessions_active",
                "ftpgw_transfers_total",
            )
            lines = [ln for ln in metrics.splitlines() if ln.startswith(wanted)]
            print("\ngateway metrics after the run:\n  " + "\n  ".join(lines))
        for name, path, pattern in (
            ("gateway log", WORK / "gateway.log", r"WARNING|ERROR|CRITICAL|Traceback"),
            ("sshd log", WORK / "sshd" / "sshd.log", r"error|fatal|Disconnecting|refused|drop"),
        ):
            lines = [ln for ln in read_lines(path) if re.search(pattern, ln)]
            print(f"{name}: {len(lines)} line(s) matching /{pattern}/")
            distinct: dict[str, str] = {}
            for line in lines:
                distinct.setdefault(re.sub(r"\d+", "N", line[line.find(" ") + 1 :])[:160], line)
            for line in list(distinct.values())[:8]:
                print(f"  {line[:300]}")

    def print_threads(self) -> None:
        """The gateway's thread stacks (py-spy, when installed): what did not end."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if self.gateway is None or not Path(spy).exists():
            print("threads left over; `pip install py-spy` to see their stacks here")
            return
        command = [spy, "dump", "--pid", str(self.gateway.proc.pid)]
        dump = subprocess.run(command, capture_output=True, text=True)
        print("threads left over (py-spy dump):\n" + dump.stdout + dump.stderr)

    # --- cleanup

    def teardown(self) -> None:
        """Stop sessions, gateway and sshd; delete the files (and the user, if this run created it)."""
        self.stop.set()
        if self.gateway is not None and self.gateway.proc.poll() is None:
            self.gateway.proc.terminate()
            try:
                self.gateway.proc.wait(45)
            except subprocess.TimeoutExpired:
                self.gateway.proc.kill()
                self.gateway.proc.wait(10)
        if self.sshd is not None:
            self.sshd.stop()
        with contextlib.suppress(OSError):
            shutil.copyfile(WORK / "gateway.log", KEPT_LOG)
            print(f"gateway log kept in {KEPT_LOG}", file=sys.stderr)
        if self.created_user:
            for _ in range(20):  # its sshd session processes end with their connections
                if subprocess.run(["userdel", USER], capture_output=True).returncode in (0, 6):
                    break
                time.sleep(0.5)
        shutil.rmtree(WORK, ignore_errors=True)


def read_lines(path: Path) -> Iterator[str]:
    """The lines of a log file (none if it is missing)."""
    with contextlib.suppress(OSError), path.open(errors="replace") as f:
        yield from (line.rstrip("\n") for line in f)


def main() -> int:
    """Parse the arguments, run the soak, print the verdict; 0 pass, 1 fail, 2 usage."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200, help="concurrent FTP sessions (default 200)")
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="load duration, fractions allowed (default 10)"
    )
    parser.add_argument("--think-ms", type=int, default=50, help="mean pause between a session's operations")
    parser.add_argument("--pool-idle", type=float, default=10.0, help="the gateway's pool.idle_timeout, s")
    parser.add_argument(
        "--settle", type=float, default=30.0, help="s to wait after the load for the baseline"
    )
    parser.add_argument(
        "--sample", type=float, default=0.0, help="s between samples (default: 1-5 by duration)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--ref", help="run the gateway of this git revision (e.g. HEAD), not the working tree"
    )
    args = parser.parse_args()
    if not (1 <= args.sessions <= 1000) or not (0 < args.minutes <= 240):
        parser.error("--sessions 1..1000, --minutes up to 240")
    if os.geteuid() != 0:
        print("bench/soak.py needs root (it creates a Unix user and runs sshd)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_interrupt)
    soak = Soak(args)
    try:
        soak.setup()
        print(
            f"gateway ({soak.version}) pid {soak.gateway.proc.pid if soak.gateway else '?'}"
            f" on {HOST}:{soak.port};"
            f" sshd MaxSessions {SSHD_MAX_SESSIONS}, MaxStartups {SSHD_MAX_STARTUPS};"
            f" pool max_sessions {POOL_MAX_SESSIONS},"
            f" idle_timeout {args.pool_idle:g} s; passive ports {PASSIVE_PORTS[0]}-{PASSIVE_PORTS[1]}",
            file=sys.stderr,
            flush=True,
        )
        soak.run_load()
        soak.settle()
        return 0 if soak.report() else 1
    except KeyboardInterrupt:
        print("interrupted: cleaning up", file=sys.stderr)
        return 130
    except Exception:
        tail = list(read_lines(WORK / "gateway.log"))[-20:]
        print("soak failed; the gateway log ends with:\n  " + "\n  ".join(tail), file=sys.stderr)
        raise
    finally:
        soak.teardown()


if __name__ == "__main__":
    raise SystemExit(main())
