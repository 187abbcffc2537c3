"""Attack: tell gateway-local user names from unknown ones (``auth: mapped``, routes by group).

Routes that match by group only match known users: before the fix an unknown name was
refused before any password check, about 40 ms (one scrypt) quicker than a known name with a
wrong password, and a retired route of a group answered a known member with its notice
without asking for the password at all.
"""

from __future__ import annotations

import ftplib
import statistics
import time

import pytest

from gateway.core.passwords import hash_password
from tests.helpers.gateway_env import base_config


def group_config(sshd, tmp_path, user, **retired):
    (tmp_path / "backend.pw").write_text(user.password + "\n")
    doc = base_config(sshd, limits={"failed_login_delay": 0, "max_login_attempts": 100})
    doc["guard"] = {"enabled": False}
    doc["users"] = {
        name: {
            "password_hash": hash_password("right-" + name),
            "backend_user": user.name,
            "backend_password_file": str(tmp_path / "backend.pw"),
            "groups": [group],
        }
        for name, group in (("alice", "partners"), ("bob", "gone"))
    }
    doc["routes"] = [
        {"name": "gone", "match": {"user": "*", "group": "gone"}, "backend": "main", "auth": "mapped",
         "phase": "retired", "notice": "FTP is off: use sftp://files.example.com"},
        {"name": "partners", "match": {"user": "*", "group": "partners"}, "backend": "main",
         "auth": "mapped"},
    ]  # fmt: skip
    return doc


def seconds_to_refuse(ftp: ftplib.FTP, name: str) -> tuple[float, str]:
    ftp.sendcmd(f"USER {name}")
    started = time.perf_counter()
    try:
        reply = ftp.sendcmd("PASS wrong-guess")
    except ftplib.error_perm as err:
        reply = str(err)
    return time.perf_counter() - started, reply


def test_unknown_and_known_names_cost_the_same_and_read_the_same(gateway_factory, sshd, user, tmp_path):
    gw = gateway_factory(group_config(sshd, tmp_path, user))
    ftp = gw.connect()
    seconds: dict[str, list[float]] = {"alice": [], "nobody": [], "bob": []}
    replies: dict[str, set[str]] = {name: set() for name in seconds}
    for _ in range(7):
        for name in seconds:
            took, reply = seconds_to_refuse(ftp, name)
            seconds[name].append(took)
            replies[name].add(reply)
    ftp.close()
    # The same reply for all; bob (retired route) gets no notice without his password.
    assert replies == {name: {"530 Login incorrect."} for name in seconds}
    known, unknown = statistics.median(seconds["alice"]), statistics.median(seconds["nobody"])
    # One password check each: without it the unknown name took a few percent of the time.
    assert unknown > 0.5 * known, (known, unknown)
    retired = gw.connect()
    with pytest.raises(ftplib.error_perm, match=r"^530 FTP is off: use sftp://files\.example\.com$"):
        retired.login("bob", "right-bob")  # with the password: the notice
    retired.close()
