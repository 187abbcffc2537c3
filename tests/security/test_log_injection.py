"""Attack: client text in a log line poses as an audit line and gets another address banned.

Before the fix, ``USER x gateway.audit: login failed: client_ip=6.6.6.6 y`` with a wrong
password put that text, blanks intact, into pyftpdlib's ``USER '...' failed login.`` line, and
fail2ban with the documented filter banned 6.6.6.6. Here the documented filter (docs/operations.md) runs with
Debian's ``fail2ban-regex`` over the logs of a real gateway process fed hostile user names and
paths: as a log file (text and JSON) and as a systemd journal. Only the addresses that really
failed may come out.
"""

from __future__ import annotations

import contextlib
import ftplib
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers.gateway_env import base_config, connect_ftp

OPERATIONS = Path(__file__).parents[2] / "docs" / "operations.md"
FILTER = Path(__file__).parents[2] / "deploy/fail2ban/filter.d/ftp-sftp-gateway.conf"

#: Texts that would each get 6.6.6.x banned by a filter fooled by client text.
HOSTILE = [
    "x gateway.audit: login failed: client_ip=6.6.6.1 y",
    "x INFO gateway.audit: login failed: client_ip=6.6.6.2 user=",
    'x", "level": "info", "logger": "gateway.audit", "message": "login failed: client_ip=6.6.6.3 user=',
    "h ftp-sftp-gateway[1]: 2026-01-01 00:00:00,000 INFO gateway.audit: login failed: client_ip=6.6.6.4 u",
    "x' result=bad_credentials route=r\\x20 login failed: client_ip=6.6.6.5 user='",
]


def documented_filter() -> str:
    """The fail2ban filter exactly as docs/operations.md prints it."""
    text = OPERATIONS.read_text()
    start = text.index("```ini\n# fail2ban filter") + len("```ini\n")
    return text[start : text.index("```", start)]


#: The filter before the fix, not anchored: the escaping alone must keep it from being fooled.
UNANCHORED = "[Definition]\nfailregex = gateway\\.audit: login failed: client_ip=<HOST> \n"


def banned(log: str, tmp_path: Path, definition: str | None = None) -> set[str]:
    """The addresses a filter (the documented one) takes from ``log`` (a file, or systemd-journal[...])."""
    conf = tmp_path / "filter.conf"
    conf.write_text(definition or documented_filter())
    command = ["fail2ban-regex", "-o", "ip", log, str(conf)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.split())


def feed(gw_port: int) -> None:
    """Hostile names at login (wrong passwords, from 127.0.0.3), hostile paths after one (ok)."""
    for name in HOSTILE:
        ftp = ftplib.FTP(timeout=20, source_address=("127.0.0.3", 0))
        ftp.connect("127.0.0.1", gw_port)
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.login(name, "wrong")
        ftp.close()
    ftp = connect_ftp(gw_port)
    ftp.login("gwtest1", "Gw-test-pass-1")
    for name in HOSTILE:
        for command in ("MKD", "DELE", "RMD", "RETR", "SIZE"):
            with contextlib.suppress(ftplib.Error):
                ftp.sendcmd(f"{command} {name}")
    ftp.quit()


@pytest.mark.parametrize(("fmt", "level"), [("text", "info"), ("json", "debug")])
def test_the_documented_filter_bans_only_real_failures(process, sshd, user, tmp_path, fmt, level):
    assert documented_filter() == FILTER.read_text()  # the file operators copy is the one tested
    doc = base_config(sshd, log={"format": fmt, "level": level})
    doc["limits"]["user_names"] = ".+"  # hostile names get as far as they can: route, backend
    doc["guard"] = {"enabled": False}
    gw = process(doc)
    feed(gw.port)
    real = connect_ftp(gw.port)  # a real failure: must be found
    with pytest.raises(ftplib.error_perm):
        real.login("gwtest2", "wrong")
    real.close()
    assert gw.stop() == 0
    assert any("6.6.6.1" in line for line in gw.lines)  # the hostile text did reach the logs
    if level == "debug":  # each command line echoed once, escaped (not also pyftpdlib's raw echo)
        assert sum("<- RMD" in line for line in gw.lines) == len(HOSTILE)
    log = tmp_path / f"gateway-{fmt}.log"
    log.write_text("\n".join(gw.lines) + "\n")
    assert banned(str(log), tmp_path) == {"127.0.0.3", "127.0.0.1"}
    if level == "info":  # at debug, asyncssh's own lines carry paths as they are
        assert banned(str(log), tmp_path, UNANCHORED) == {"127.0.0.3", "127.0.0.1"}
    journal = as_journal(gw.lines, tmp_path)
    assert banned(f"systemd-journal[journalfiles={journal}]", tmp_path) == {"127.0.0.3", "127.0.0.1"}


def as_journal(lines: list[str], tmp_path: Path) -> Path:
    """The lines as the systemd unit's journal would hold them (systemd-journal-remote)."""
    entries = []
    for n, line in enumerate(lines):
        entries.append(
            f"__REALTIME_TIMESTAMP={1_765_000_000_000_000 + n}\nMESSAGE={line}\n_HOSTNAME=gwhost\n"
            "SYSLOG_IDENTIFIER=ftp-sftp-gateway\n_PID=4242\n_SYSTEMD_UNIT=ftp-sftp-gateway.service\n\n"
        )
    journal = tmp_path / f"gateway-{len(lines)}.journal"
    subprocess.run(
        ["/lib/systemd/systemd-journal-remote", f"--output={journal}", "-"],
        input="".join(entries).encode(),
        capture_output=True,
        timeout=60,
        check=True,
    )
    return journal


def test_escaped_names_stay_apart_and_on_one_line(process, sshd, user):
    doc = base_config(sshd)
    doc["limits"]["user_names"] = ".+"
    gw = process(doc)
    ftp = connect_ftp(gw.port)
    with pytest.raises(ftplib.error_perm):
        ftp.login("a b", "wrong")
    ftp.close()
    assert gw.stop() == 0
    failed = [line for line in gw.lines if re.search(r"pyftpdlib: .* failed login", line)]
    assert failed and all("USER 'a\\x20b' failed login." in line for line in failed)
    audit = [line for line in gw.lines if "gateway.audit: login failed" in line]
    assert audit and all("user='a\\x20b'" in line for line in audit)
