"""Transfers cut by the backend: a download ends with 426, an upload with 451 (never 226).

No 421 follows and the same session goes on once the backend is back. Uploads are atomic:
the data goes to a hidden temporary file (``.ftpgw-upload-<8 hex>-<name>``) renamed only after
the backend confirmed the close, so nothing partial ever appears under the final name and a
file that was there keeps its old content. What reached the backend is kept hidden for a
resume when the gateway can reconnect. A temporary file may be left over when the backend
died (it cannot be removed then); nothing else may.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading

import pytest

from tests.faults.conftest import (
    assert_alive,
    command,
    cut_download,
    cut_upload,
    fault_config,
    kill,
    login,
    retr,
    stor,
    strays,
    temp_files,
)
from tests.helpers.gateway_env import seed, wait_for

BIG = 64 * 2**20
OLD = b"the previous version, which must survive\n"


def test_download_cut_by_relay_reset_is_426_and_the_session_goes_on(gateway_factory, sshd, relay, user):
    content = os.urandom(BIG)
    seed(user, "big.bin", content)
    seed(user, "small.txt", b"small")
    # A long operation_timeout: the 426 must come from the lost connection, not a timer.
    gw = gateway_factory(fault_config(sshd, relay, operation_timeout=30))
    ftp = login(gw, user)
    received, reply, seconds = cut_download(ftp, "big.bin", relay.reset)
    print(f"download cut by reset: {reply!r} after {seconds:.2f} s, {received} bytes received")
    assert reply.startswith("426"), reply
    assert seconds < 10
    assert received < BIG
    assert command(ftp, "NOOP").startswith("200")  # no 421 queued behind the 426
    assert command(ftp, "SIZE big.bin") == f"213 {BIG}"
    assert retr(ftp, "small.txt") == b"small"
    assert retr(ftp, "big.bin") == content
    assert_alive(gw, user, expect=["big.bin", "small.txt"])


def test_download_cut_by_kill_9_of_the_backend_is_426_and_the_session_goes_on(
    gateway_factory, fault_sshd, user
):
    content = os.urandom(BIG)
    seed(user, "big.bin", content)
    gw = gateway_factory(fault_config(fault_sshd, operation_timeout=30))
    ftp = login(gw, user)
    received, reply, seconds = cut_download(ftp, "big.bin", lambda: kill(fault_sshd))
    print(f"download cut by kill -9: {reply!r} after {seconds:.2f} s, {received} bytes received")
    assert reply.startswith("426"), reply
    assert seconds < 10
    assert received < BIG
    assert command(ftp, "NOOP").startswith("200")  # no 421 queued behind the 426
    assert command(ftp, "SIZE big.bin").startswith("451")  # still down
    fault_sshd.start()
    assert command(ftp, "SIZE big.bin") == f"213 {BIG}"
    assert retr(ftp, "big.bin") == content
    assert_alive(gw, user, expect=["big.bin"])


def check_cut_upload(ftp, user, fault, what: str, existing: bool) -> None:
    """STOR up.bin cut by ``fault``: 451 within seconds, the final name untouched, no 421."""
    reply, seconds = cut_upload(ftp, "up.bin", fault)
    print(f"upload cut by {what}: {reply!r} after {seconds:.2f} s")
    assert reply.startswith("451"), reply
    assert seconds < 20
    final = user.home / "up.bin"
    if existing:
        assert final.read_bytes() == OLD
    else:
        assert not final.exists(), f"{final.stat().st_size} bytes under the final name"
    assert strays(user.home, {"up.bin"}) == set()
    assert command(ftp, "NOOP").startswith("200")  # no 421 queued behind the 451


@pytest.mark.parametrize("existing", [False, True], ids=["new-name", "replacing"])
def test_upload_cut_by_relay_reset_is_451_and_the_final_name_is_untouched(
    gateway_factory, sshd, relay, user, existing
):
    if existing:
        seed(user, "up.bin", OLD)
    gw = gateway_factory(fault_config(sshd, relay, operation_timeout=30))
    ftp = login(gw, user)
    check_cut_upload(ftp, user, relay.reset, "reset", existing)
    assert stor(ftp, "up.bin", b"second try").startswith("226")
    assert (user.home / "up.bin").read_bytes() == b"second try"
    assert_alive(gw, user)


@pytest.mark.parametrize("existing", [False, True], ids=["new-name", "replacing"])
def test_upload_cut_by_kill_9_of_the_backend_is_451_and_the_final_name_is_untouched(
    gateway_factory, fault_sshd, user, existing
):
    if existing:
        seed(user, "up.bin", OLD)
    gw = gateway_factory(fault_config(fault_sshd, operation_timeout=30))
    ftp = login(gw, user)
    check_cut_upload(ftp, user, lambda: kill(fault_sshd), "kill -9", existing)
    fault_sshd.start()
    assert stor(ftp, "up.bin", b"second try").startswith("226")
    assert (user.home / "up.bin").read_bytes() == b"second try"
    assert_alive(gw, user)


def test_lftp_retrying_an_upload_cut_by_the_backend_resumes_from_what_reached_it(
    gateway_factory, sshd, relay, user, tmp_path
):
    """lftp retries a failed put by resuming from SIZE (REST + STOR). The gateway reconnects
    to the backend and keeps what reached it as the user's partial: SIZE gives its size and
    the resume sends only the rest. The old file stays whole until the new one is."""
    assert shutil.which("lftp"), "lftp is not installed (tests/run.sh installs it)"
    seed(user, "up.bin", OLD * 25_000)  # 1 MiB of the previous version
    new = os.urandom(16 * 2**20)
    (tmp_path / "up.bin").write_bytes(new)
    gw = gateway_factory(fault_config(sshd, relay, operation_timeout=30))

    def uploaded_mib() -> bool:
        sizes = [0]
        for name in temp_files(user.home):
            with contextlib.suppress(FileNotFoundError):  # renamed or removed meanwhile
                sizes.append((user.home / name).stat().st_size)
        return max(sizes) > 2**20

    def cut_once_data_flows() -> None:
        if wait_for(uploaded_mib):
            relay.reset()

    cutter = threading.Thread(target=cut_once_data_flows)
    cutter.start()
    script = (
        "set net:max-retries 5; set net:reconnect-interval-base 1; set net:limit-rate 4M; debug 5; "
        f"open -u {user.name},{user.password} -p {gw.port} 127.0.0.1; put {tmp_path / 'up.bin'} -o up.bin"
    )
    result = subprocess.run(["lftp", "-c", script], capture_output=True, text=True, timeout=120)
    cutter.join()
    assert result.returncode == 0, result.stderr[-3000:]
    # The cut happened mid-upload and lftp resumed after the MiB that had reached the backend:
    resumed = [int(n) for n in re.findall(r"---> REST (\d+)", result.stderr)]
    assert resumed and resumed[-1] > 2**20, result.stderr[-3000:]
    assert "Switching to NOREST mode" not in result.stderr
    assert (user.home / "up.bin").read_bytes() == new
    assert set(os.listdir(user.home)) == {"up.bin"}
