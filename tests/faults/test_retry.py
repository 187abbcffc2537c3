"""Idempotent commands are retried once on a fresh connection: a reset backend connection
(the backend sshd itself up) costs the client nothing, not even an error reply.

Two moments: right after the reset (the gateway may or may not have noticed yet), and with
the command's SFTP request in flight when the connection dies (held in the stalled relay,
then reset).
"""

from __future__ import annotations

import calendar
import ftplib
import os
import threading
from collections.abc import Callable

import pytest

from tests.faults.conftest import CLIENT_TIMEOUT, assert_alive, attempt, fault_config, login, retr
from tests.helpers.gateway_env import seed, wait_for

CONTENT = b"retry me\n"
MTIME = calendar.timegm((2024, 1, 2, 3, 4, 5))


def _listing(ftp: ftplib.FTP, verb: str) -> list[str]:
    lines: list[str] = []
    ftp.retrlines(verb, lines.append)
    return lines


def _list_names(ftp: ftplib.FTP) -> list[str]:
    return [line.split()[-1] for line in _listing(ftp, "LIST")]


def _mlsd_names(ftp: ftplib.FTP) -> list[str]:
    return sorted(name for name, facts in ftp.mlsd() if facts.get("type") in ("file", "dir"))


def _cwd_then_pwd(ftp: ftplib.FTP) -> str:
    ftp.sendcmd("CWD sub")
    return ftp.sendcmd("PWD")


#: command -> (what the client does, what it must get)
CASES: dict[str, tuple[Callable[[ftplib.FTP], object], Callable[[object], bool]]] = {
    "SIZE": (lambda ftp: ftp.sendcmd("SIZE f.txt"), lambda r: r == f"213 {len(CONTENT)}"),
    "MDTM": (lambda ftp: ftp.sendcmd("MDTM f.txt"), lambda r: r == "213 20240102030405"),
    "LIST": (_list_names, lambda r: r == ["f.txt", "sub"]),
    "NLST": (lambda ftp: ftp.nlst(), lambda r: r == ["f.txt", "sub"]),
    "MLSD": (_mlsd_names, lambda r: r == ["f.txt", "sub"]),
    "MLST": (
        lambda ftp: ftp.sendcmd("MLST f.txt"),
        lambda r: isinstance(r, str) and r.startswith("250") and f"size={len(CONTENT)};" in r.lower(),
    ),
    "STAT": (
        lambda ftp: ftp.sendcmd("STAT f.txt"),
        lambda r: isinstance(r, str) and r.startswith("21") and "f.txt" in r,
    ),
    "CWD": (_cwd_then_pwd, lambda r: r == '257 "/sub" is the current directory.'),
    "PWD": (lambda ftp: ftp.sendcmd("PWD"), lambda r: r == '257 "/" is the current directory.'),
    "RETR": (lambda ftp: retr(ftp, "f.txt"), lambda r: r == CONTENT),
}


def _prepared(gw, user, verb: str) -> Callable[[ftplib.FTP], object]:
    """Seed the files, check the expectation holds without a fault; the command's client call."""
    path = seed(user, "f.txt", CONTENT)
    os.utime(path, (MTIME, MTIME))
    seed(user, "sub/inner.txt", b"inner")
    call, ok = CASES[verb]
    control = login(gw, user)
    result = attempt(lambda: call(control))
    assert ok(result), f"without a fault: {result!r}"
    control.quit()
    return call


@pytest.mark.parametrize("verb", list(CASES))
def test_right_after_a_reset_an_idempotent_command_just_works(gateway_factory, sshd, relay, user, verb):
    gw = gateway_factory(fault_config(sshd, relay))
    call, ok = _prepared(gw, user, verb), CASES[verb][1]
    ftp = login(gw, user)
    relay.reset()
    result = attempt(lambda: call(ftp))
    assert ok(result), result
    assert_alive(gw, user, expect=["f.txt", "sub"])


@pytest.mark.parametrize("verb", list(CASES))
def test_an_idempotent_command_whose_request_dies_in_flight_is_retried(
    gateway_factory, sshd, relay, user, verb
):
    gw = gateway_factory(fault_config(sshd, relay, operation_timeout=10))
    call, ok = _prepared(gw, user, verb), CASES[verb][1]
    ftp = login(gw, user)
    relay.stall()  # the command's SFTP request waits in the relay ...
    outcome: dict[str, object] = {}
    thread = threading.Thread(target=lambda: outcome.update(result=attempt(lambda: call(ftp))))
    thread.start()
    # The request waits in the relay (or, PWD, none was needed and the reply is already in).
    assert wait_for(lambda: relay.held > 0 or not thread.is_alive())
    relay.reset()  # ... and its connection dies under it
    relay.resume()
    thread.join(CLIENT_TIMEOUT)
    assert not thread.is_alive()
    assert ok(outcome["result"]), outcome["result"]
    assert_alive(gw, user, expect=["f.txt", "sub"])
