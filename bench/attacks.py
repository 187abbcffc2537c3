"""The attacks of the security round, run against a real gateway and sshd: what each attacker gets.

Starts a throwaway OpenSSH sshd on loopback with four Unix users, `ftp-sftp-gateway run`
(a subprocess, the config the report describes: a read-only route for gwsecu2, a retired one
for gwsecu3, gwsecu1 jailed in ~/ftp, a catch-all, FTPS optional with an RSA certificate) and
a second gateway with gateway-local users routed by group. Then every reproduction of the
report runs with the client a user would use (lftp, curl, openssl, fail2ban-regex, ftplib or
raw sockets where no client does it) and one line per attack says what came out.

Needs root (Unix users, sshd), lftp, curl, openssl and fail2ban-regex. Not part of the test
run; tests/security holds the same attacks as assertions.
Usage (as root): .venv/bin/python bench/attacks.py
"""

from __future__ import annotations

import argparse
import contextlib
import ftplib
import io
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.core.passwords import hash_password
from tests.helpers.sshd import OpenSSHServer, ensure_user, free_port, wait_port

PASSWORD = "Gw-attack-pass-1"
WORK = Path("/srv/ftpgw-attacks")
ROOT = Path(__file__).resolve().parents[1]
#: The checkout whose gateway runs (--source: an older one, to see the attacks succeed there).
SOURCE = ROOT
RESULTS: list[tuple[str, str]] = []
TLS_VERBS = ("AUTH", "PBSZ", "PROT")


def report(attack: str, outcome: str) -> None:
    RESULTS.append((attack, outcome))
    print(f"{attack:<58} {outcome}", flush=True)


def run(*command: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)  # type: ignore[call-overload, no-any-return]


class Gateway:
    """`ftp-sftp-gateway run` with ``doc``; stderr to gateway-NAME.log."""

    def __init__(self, name: str, doc: dict) -> None:
        self.port = doc["listen"]["port"] = free_port()
        self.metrics_port = doc["metrics"]["port"] = free_port()
        path = WORK / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        self.log = WORK / f"gateway-{name}.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(path)], stderr=log, cwd=SOURCE
            )
        wait_port("127.0.0.1", self.port, 30)

    def ftp(self, source: str = "127.0.0.1") -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=30, source_address=(source, 0))
        ftp.connect("127.0.0.1", self.port)
        return ftp

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def config(sshd: OpenSSHServer, **extra: object) -> dict:
    doc = {
        "listen": {"address": "127.0.0.1", "passive_ports": [42000, 42009]},
        "limits": {"failed_login_delay": 1, "max_connections": 50, "max_connections_per_ip": 3},
        "metrics": {},
        "backends": {"main": {"host": "127.0.0.1", "port": sshd.port, "known_hosts": str(sshd.known_hosts)}},
        "guard": {"max_failures": 1000},
    }
    doc.update(extra)
    return doc


def lftp(gw: Gateway, user: str, script: str) -> str:
    url = f"ftp://127.0.0.1:{gw.port}"
    settings = "set net:max-retries 1; set ftp:ssl-allow no"
    out = run("lftp", "-u", f"{user},{PASSWORD}", "-e", f"{settings}; {script}; bye", url)
    return (out.stdout + out.stderr).strip().splitlines()[-1] if (out.stdout + out.stderr).strip() else "ok"


def aliases(gw: Gateway, sshd: OpenSSHServer) -> None:
    before = sshd.log.read_text(errors="replace").count("Accepted password for gwsecu")
    sshd_before = int(run("pgrep", "-c", "-f", "sshd: gwsecu").stdout.strip() or 0)
    for alias, what in (
        ("gwsecu2:x", "read-only route"),
        ("gwsecu3:x", "retired route"),
        ("gwsecu1:", "jail"),
    ):
        out = lftp(gw, alias, "put /etc/hostname -o planted.txt")
        report(f"1 alias {alias} ({what}) + lftp put", out)
    sessions = []
    for n in range(200):
        try:
            ftp = gw.ftp(f"127.0.0.{10 + n % 50}")
            ftp.login(f"gwsecu1:{n}", PASSWORD)
            sessions.append(ftp)
        except ftplib.Error:
            pass
    after = sshd.log.read_text(errors="replace").count("Accepted password for gwsecu")
    sshd_after = int(run("pgrep", "-c", "-f", "sshd: gwsecu").stdout.strip() or 0)
    for ftp in sessions:
        ftp.close()
    outcome = f"{len(sessions)} logged in; backend logins {after - before}"
    report(
        "1 200 aliases gwsecu1:N, sessions kept open",
        f"{outcome}; sshd processes {sshd_before}->{sshd_after}",
    )


def passive_intruders(gw: Gateway, home: Path) -> None:
    (home / "out.csv").write_bytes(b"batch\n" * 10000)
    os.chown(home / "out.csv", *owner(home))
    stop = threading.Event()

    def intrude(first: int) -> None:
        port = first
        while not stop.is_set():
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), 0.2, source_address=("127.0.0.3", 0)).close()
            port = 42000 + (port - 42000 + 1) % 10

    threads = [threading.Thread(target=intrude, args=(42000 + i,), daemon=True) for i in range(6)]
    for thread in threads:
        thread.start()
    ok = 0
    try:
        ftp = gw.ftp()
        ftp.login("gwtest", PASSWORD)
        for _ in range(30):
            buffer = io.BytesIO()
            with contextlib.suppress(ftplib.Error, OSError, EOFError):
                ftp.retrbinary("RETR out.csv", buffer.write)
            ok += buffer.getvalue() == (home / "out.csv").read_bytes()
        ftp.close()
        url = f"ftp://127.0.0.1:{gw.port}/out.csv"
        curl = run("curl", "-sS", "-o", "/dev/null", "-u", f"gwtest:{PASSWORD}", url)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    report("2 six intruders on the passive range: ftplib RETRs", f"{ok}/30 correct")
    report("2 ... and curl", f"exit {curl.returncode} {curl.stderr.strip()}")


def log_injection(gw: Gateway) -> None:
    ftp = gw.ftp("127.0.0.4")
    with contextlib.suppress(ftplib.Error):
        ftp.login("x gateway.audit: login failed: client_ip=6.6.6.6 y", "wrong")
    ftp.close()
    time.sleep(1.5)
    filt = ROOT / "deploy/fail2ban/filter.d/ftp-sftp-gateway.conf"
    old = WORK / "old-filter.conf"
    old.write_text("[Definition]\nfailregex = gateway\\.audit: login failed: client_ip=<HOST> \n")
    for name, path in (("documented filter", filt), ("old unanchored filter", old)):
        found = set(run("fail2ban-regex", "-o", "ip", str(gw.log), str(path)).stdout.split())
        strangers = sorted(ip for ip in found if not ip.startswith("127."))
        outcome = f"{len(found)} addresses, all clients' own" if not strangers else f"BANS {strangers}"
        report(f"3 USER 'x gateway.audit: ... 6.6.6.6 y', fail2ban-regex, {name}", outcome)


def ghosts(sshd: OpenSSHServer, home: Path) -> None:
    (home / "big.bin").write_bytes(os.urandom(64 * 2**20))
    os.chown(home / "big.bin", *owner(home))
    doc = config(sshd, routes=[{"match": {"user": "*"}, "backend": "main", "root": "~"}])
    doc["limits"].update(max_connections=40, max_connections_per_ip=40)
    gw = Gateway("ghosts", doc)
    try:
        held, transfers = [], 0
        for n in range(40):
            ftp = gw.ftp(f"127.0.0.{100 + n}")
            ftp.login("gwtest", PASSWORD)
            ftp.voidcmd("TYPE I")
            try:
                data = ftp.transfercmd("RETR big.bin")
                transfers += 1
            except ftplib.Error:
                data = None  # an older gateway refused the last PASV ("425 Too many connections")
            held.append((ftp, data))
        for ftp, data in held:  # read nothing, then vanish: resets on both connections
            for sock in (data, ftp.sock):
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
            ftp.file.close()
        time.sleep(10)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=10).read()
        still = next(ln for ln in metrics.decode().splitlines() if ln.startswith("ftpgw_sessions_active"))
        newcomers, kept = [], []
        for _ in range(5):  # all held open: each needs a place of its own
            try:
                kept.append(gw.ftp())
                newcomers.append(kept[-1].getwelcome()[:3])
            except ftplib.Error as err:
                newcomers.append(str(err)[:3])
        outcome = f"{transfers} RETRs started; 10 s later ftpgw_sessions_active {still.split()[1]}"
        admitted = f"{newcomers.count('220')} of 5 newcomers greeted"
        report("4 40 sessions reset mid-RETR (max_connections 40)", f"{outcome}, {admitted}")
    finally:
        gw.stop()


def enumeration(sshd: OpenSSHServer) -> None:
    pw = WORK / "backend.pw"
    pw.write_text(PASSWORD + "\n")
    users = {
        name: {
            "password_hash": hash_password("right"),
            "backend_user": "gwtest",
            "backend_password_file": str(pw),
            "groups": [group],
        }
        for name, group in (("alice", "partners"), ("bob", "gone"))
    }
    routes = [
        {
            "match": {"user": "*", "group": "gone"},
            "backend": "main",
            "auth": "mapped",
            "phase": "retired",
            "notice": "FTP is off",
        },
        {"match": {"user": "*", "group": "partners"}, "backend": "main", "auth": "mapped"},
    ]
    doc = config(sshd, users=users, routes=routes)
    doc["limits"] = {"failed_login_delay": 0, "max_login_attempts": 100}
    gw = Gateway("mapped", doc)
    try:
        ftp = gw.ftp()
        times: dict[str, list[float]] = {"alice": [], "nobody": [], "bob": []}
        replies: dict[str, set[str]] = {name: set() for name in times}
        for _ in range(15):
            for name in times:
                ftp.sendcmd(f"USER {name}")
                started = time.perf_counter()
                try:
                    ftp.sendcmd("PASS wrong")
                except ftplib.Error as err:
                    replies[name].add(str(err))
                times[name].append(time.perf_counter() - started)
        ftp.close()
        medians = ", ".join(f"{name} {statistics.median(t) * 1000:.1f} ms" for name, t in times.items())
        report("5 wrong password, mapped users routed by group (median of 15)", medians)
        report("5 ... replies", "; ".join(f"{name}: {' | '.join(sorted(r))}" for name, r in replies.items()))
    finally:
        gw.stop()


def stat_bypass(gw: Gateway) -> None:
    ftp = gw.ftp()
    ftp.login("gwdrop", PASSWORD)
    for command in ("STAT /", "LIST"):
        try:
            reply = ftp.sendcmd(command)
        except ftplib.Error as err:
            reply = str(err)
        report(f"6 route commands [STOR]: {command}", reply.splitlines()[0])
    ftp.quit()


def slowloris(gw: Gateway) -> None:
    socks = [socket.create_connection(("127.0.0.1", gw.metrics_port), timeout=5) for _ in range(17)]
    ok = failed = 0
    started = time.monotonic()
    last_drip = 0.0
    while time.monotonic() - started < 32:
        if time.monotonic() - last_drip >= 5:
            last_drip = time.monotonic()
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.send(b"G")
        curl = run("curl", "-sS", "-m", "4", f"http://127.0.0.1:{gw.metrics_port}/healthz")
        ok, failed = (ok + 1, failed) if curl.stdout == "ok\n" else (ok, failed + 1)
        time.sleep(1)
    closed = sum(1 for sock in socks if _closed(sock))
    report(
        "7 17 sockets, one byte every 5 s, 32 s: curl /healthz",
        f"{ok} ok, {failed} failed; {closed}/17 slow sockets closed",
    )


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def ipv6(gw: Gateway) -> None:
    greetings = []
    held = []
    for n in range(20):
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10, source_address=("127.0.0.9", 0))
        sock.sendall(f"PROXY TCP6 2001:db8:0:1::{n + 1:x} 2001:db8::21 40000 21\r\n".encode())
        greetings.append(sock.makefile("rb").readline()[:3].decode())
        held.append(sock)
    report(
        "8 20 sessions from one /64 (max_connections_per_ip 3)",
        f"{greetings.count('220')} greeted, {greetings.count('421')} refused with 421",
    )
    for sock in held:
        sock.close()


def pipelined(gw: Gateway, sshd: OpenSSHServer) -> None:
    before = sshd.log.read_text(errors="replace").count("Failed password for gwtest")
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=30, source_address=("127.0.0.5", 0))
    reader = sock.makefile("rb")
    reader.readline()
    sock.sendall(b"".join(f"USER gwtest\r\nPASS guess-{n}\r\n".encode() for n in range(10)))
    replies = [line.decode().strip()[:3] for line in iter(reader.readline, b"")]
    sock.close()
    after = sshd.log.read_text(errors="replace").count("Failed password for gwtest")
    report(
        "9 ten USER/PASS pairs in one packet", f"replies {' '.join(replies)}; backend checks {after - before}"
    )


def tls(gw: Gateway) -> None:
    for cipher in ("AES128-SHA", "AES256-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"):
        out = run(
            "openssl",
            "s_client",
            "-starttls",
            "ftp",
            "-connect",
            f"127.0.0.1:{gw.port}",
            "-tls1_2",
            "-cipher",
            f"{cipher}@SECLEVEL=0",
            input="",
        )
        got = next((ln.strip() for ln in out.stdout.splitlines() if "Cipher is" in ln), "?")
        report(f"9 openssl s_client -tls1_2 -cipher {cipher}", got)
    curl = run(
        "curl",
        "-sS",
        "--ssl-reqd",
        "-k",
        "-u",
        f"gwtest:{PASSWORD}",
        f"ftp://127.0.0.1:{gw.port}/",
        "-o",
        "/dev/null",
    )
    metrics = (
        urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=10).read().decode()
    )
    named = [
        ln
        for ln in metrics.splitlines()
        if ln.startswith("ftpgw_commands_total") and any(f'"{v}"' in ln for v in ("AUTH", "PBSZ", "PROT"))
    ]
    report("9 curl --ssl-reqd, then /metrics", f"curl exit {curl.returncode}; " + "; ".join(named))


def control_names(gw: Gateway) -> None:
    ftp = gw.ftp()
    ftp.login("gwtest", PASSWORD)
    for name in ("tab\tx.csv", "esc\x1b[8m.csv"):
        try:
            reply = ftp.storbinary(f"STOR {name}", io.BytesIO(b"x"))
        except ftplib.Error as err:
            reply = str(err)
        report(f"9 STOR {name!r} (curl refuses such URLs itself)", reply)
    ftp.quit()


def owner(home: Path) -> tuple[int, int]:
    st = home.stat()
    return st.st_uid, st.st_gid


def main() -> int:
    global SOURCE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout whose gateway runs")
    SOURCE = parser.parse_args().source.resolve()
    WORK.mkdir(parents=True, exist_ok=True)
    sshd = OpenSSHServer(WORK / "sshd").start()
    users = {
        name: ensure_user(name, PASSWORD) for name in ("gwsecu1", "gwsecu2", "gwsecu3", "gwtest", "gwdrop")
    }
    (users["gwsecu1"].home / "ftp").mkdir()
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-days", "1",
        "-keyout", str(WORK / "rsa.key"), "-out", str(WORK / "rsa.crt"))  # fmt: skip
    routes = [
        {"match": {"user": "gwsecu2"}, "backend": "main", "permissions": {"read_only": True}},
        {"match": {"user": "gwsecu3"}, "backend": "main", "phase": "retired"},
        {"match": {"user": "gwsecu1"}, "backend": "main", "root": "~/ftp"},
        {"match": {"user": "gwdrop"}, "backend": "main", "permissions": {"commands": ["STOR"]}},
        {"match": {"user": "*"}, "backend": "main", "root": "~"},
    ]
    tls_section = {"mode": "optional", "certfile": str(WORK / "rsa.crt"), "keyfile": str(WORK / "rsa.key")}
    doc = config(sshd, routes=routes, tls=tls_section)
    doc["listen"]["proxy_protocol"] = {"trusted": ["127.0.0.9/32"]}
    gw = Gateway("main", doc)
    steps: list[Callable[[], None]] = [
        lambda: aliases(gw, sshd),
        lambda: passive_intruders(gw, users["gwtest"].home),
        lambda: log_injection(gw),
        lambda: ghosts(sshd, users["gwtest"].home),
        lambda: enumeration(sshd),
        lambda: stat_bypass(gw),
        lambda: slowloris(gw),
        lambda: ipv6(gw),
        lambda: pipelined(gw, sshd),
        lambda: tls(gw),
        lambda: control_names(gw),
    ]
    try:
        for step in steps:
            try:
                step()
            except Exception as exc:  # an older gateway may fail a step outright: say how
                report(
                    f"(step failed: {exc.__class__.__name__})", str(exc).splitlines()[0] if str(exc) else ""
                )
    finally:
        gw.stop()
        sshd.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
