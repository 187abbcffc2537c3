"""The backend's disk fills up during an upload: 452 (RFC 959: insufficient storage space),
never 226. A STOR leaves nothing partial under the final name (an earlier version keeps its
content) and no temporary file either (the backend is alive, so it is removed); an APPE keeps
what the file held. Once there is space again the same session uploads fine.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.faults.conftest import assert_alive, command, fault_config, login, stor, strays, temp_files

OLD = b"the previous version, which must survive\n"
TOO_BIG = os.urandom(4 * 2**20)  # the tmpfs holds 1 MiB


@pytest.mark.parametrize("existing", [False, True], ids=["new-name", "replacing"])
def test_disk_full_stor_is_452_and_nothing_partial_is_visible(
    gateway_factory, sshd, user, full_disk, existing
):
    final = full_disk / "big.bin"
    if existing:
        final.write_bytes(OLD)
        shutil.chown(final, user.name, user.name)
    gw = gateway_factory(fault_config(sshd))
    ftp = login(gw, user)
    reply = stor(ftp, "small/big.bin", TOO_BIG)
    assert reply.startswith("452"), reply
    if existing:
        assert final.read_bytes() == OLD
    else:
        assert not final.exists(), f"{final.stat().st_size} bytes under the final name"
    assert temp_files(full_disk) == set()
    assert strays(full_disk, {"big.bin"}) == set()
    assert command(ftp, "NOOP").startswith("200")
    assert stor(ftp, "small/ok.bin", b"fits").startswith("226")
    assert (full_disk / "ok.bin").read_bytes() == b"fits"
    assert_alive(gw, user, expect=["small"])


def test_disk_full_appe_is_452_and_the_existing_content_stays(gateway_factory, sshd, user, full_disk):
    final = full_disk / "log.txt"
    final.write_bytes(OLD)
    shutil.chown(final, user.name, user.name)
    gw = gateway_factory(fault_config(sshd))
    ftp = login(gw, user)
    reply = stor(ftp, "small/log.txt", TOO_BIG, verb="APPE")
    assert reply.startswith("452"), reply
    # APPE writes in place (docs/user-guide.md): what fitted stays after the old content.
    data = final.read_bytes()
    assert data.startswith(OLD)
    assert data[len(OLD) :] == TOO_BIG[: len(data) - len(OLD)]
    assert command(ftp, "NOOP").startswith("200")
    assert strays(full_disk, {"log.txt"}) == set()
