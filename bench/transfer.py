"""Throughput of the gateway against direct SFTP to the same sshd, measured in the same run.

Starts a private OpenSSH sshd (as the tests do; needs root) and the gateway in a subprocess,
then moves one file of --size-mib each way:

* direct: asyncssh ``get``/``put`` (AES-GCM, server-advertised block size) in a subprocess;
* gateway: ``curl`` through the gateway (PASV, TYPE I).

Prints MiB/s (best of --runs) and the gateway/direct ratio. Not part of the test run.
Usage: .venv/bin/python -m bench.transfer [--size-mib 256] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.helpers.sshd import BASE, OpenSSHServer, ensure_user, free_port, wait_port

PASSWORD = "Gw-bench-pass-1"

DIRECT = """
import asyncio, sys, asyncssh
async def main(port, known_hosts, user, password, op, remote, local):
    async with asyncssh.connect("127.0.0.1", port, username=user, password=password,
            known_hosts=known_hosts, client_keys=None, agent_path=None, config=None,
            encryption_algs=["aes128-gcm@openssh.com"], compression_algs=None) as conn:
        async with conn.start_sftp_client() as sftp:
            if op == "get":
                await sftp.get(remote, local)
            else:
                await sftp.put(local, remote)
asyncio.run(main(int(sys.argv[1]), *sys.argv[2:]))
"""


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    sshd = OpenSSHServer(BASE / "bench-sshd").start()
    user = ensure_user("gwbench", PASSWORD)
    scratch = Path(tempfile.mkdtemp(dir="/dev/shm"))
    source = scratch / "source.bin"
    with source.open("wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(2**20))
    subprocess.run(["cp", str(source), str(user.home / "down.bin")], check=True)
    os.chown(user.home / "down.bin", *(lambda s: (s.st_uid, s.st_gid))(user.home.stat()))

    port = free_port()
    cfg = scratch / "gateway.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "listen": {"address": "127.0.0.1", "port": port, "passive_ports": [42000, 42099]},
                "backends": {
                    "main": {"host": "127.0.0.1", "port": sshd.port, "known_hosts": str(sshd.known_hosts)}
                },
                "routes": [{"match": {"user": "*"}, "backend": "main", "root": "~"}],
                "log": {"level": "warning"},
            }
        )
    )
    gateway = subprocess.Popen([sys.executable, "-m", "gateway", "run", "--config", str(cfg)])
    try:
        wait_port("127.0.0.1", port)
        url = f"ftp://{user.name}:{PASSWORD}@127.0.0.1:{port}"
        direct = [sys.executable, "-c", DIRECT, str(sshd.port), str(sshd.known_hosts), user.name, PASSWORD]
        cases = {
            "download": (
                [*direct, "get", "down.bin", str(scratch / "direct-down.bin")],
                ["curl", "-sS", "-o", str(scratch / "gw-down.bin"), f"{url}/down.bin"],
            ),
            "upload": (
                [*direct, "put", "direct-up.bin", str(source)],
                ["curl", "-sS", "-T", str(source), f"{url}/gw-up.bin"],
            ),
        }
        print(f"{args.size_mib} MiB, best of {args.runs}, loopback, sshd {sshd.port}")
        print(f"{'':10}{'direct SFTP':>14}{'gateway':>12}{'ratio':>8}")
        for name, (direct_cmd, gw_cmd) in cases.items():
            best_direct = min(timed(direct_cmd) for _ in range(args.runs))
            best_gw = min(timed(gw_cmd) for _ in range(args.runs))
            mib_direct, mib_gw = args.size_mib / best_direct, args.size_mib / best_gw
            print(f"{name:10}{mib_direct:>10.0f} MiB/s{mib_gw:>8.0f} MiB/s{mib_gw / mib_direct:>8.2f}")
    finally:
        gateway.terminate()
        gateway.wait(10)
        sshd.stop()
        subprocess.run(["rm", "-rf", str(scratch)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
