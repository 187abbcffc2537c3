"""Long fuzz run of the FTP control channel: tests/security/test_command_fuzz.py with many
more examples than the test run's 200 (same invariants: well-formed replies, nothing echoed
that is not printable, the process alive, threads and file descriptors back to baseline).

Needs root, like the tests (it starts the test sshd and creates its users).
Usage (as root): .venv/bin/python bench/fuzz.py [--examples 20000] [--minutes 30]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = ROOT / "tests" / "security" / "test_command_fuzz.py"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20000, help="hypothesis examples (default 20000)")
    parser.add_argument("--minutes", type=float, default=30, help="stop after this long (default 30)")
    args = parser.parse_args()
    env = {**os.environ, "FTPGW_FUZZ_EXAMPLES": str(args.examples)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TEST)]
    proc = subprocess.Popen(command, env=env, cwd=ROOT)
    try:
        return proc.wait(timeout=args.minutes * 60)
    except subprocess.TimeoutExpired:
        # SIGINT: pytest stops after the current example and its fixtures stop the gateway.
        proc.send_signal(signal.SIGINT)
        proc.wait()
        print(f"fuzz: stopped after {args.minutes} minutes without a failure", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
