"""The usage report's parts without a server: client habits, session fingerprints, the SQLite
store, readiness verdicts and the renderers (an injected clock, databases in tmp_path)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sqlite3
import time
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from gateway.features.usage import render, store
from gateway.features.usage.clients import from_clnt, identify
from gateway.features.usage.readiness import Evidence, assess
from gateway.features.usage.session import MAX_KEYS, MAX_TEXT, Key, Record, SessionUsage, Totals, verb_name
from gateway.features.usage.store import Row, StoreError, UsageStore

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
DAY = 86400.0
SCHEMA = Path(render.__file__).with_name("report.schema.json")


def lines(*commands: str) -> list[tuple[str, str]]:
    """("VERB", "arg") pairs as the session keeps them: PASS without its argument."""
    out = []
    for command in commands:
        verb, _, arg = command.partition(" ")
        out.append((verb, "" if verb == "PASS" else arg))
    return out


def without_clnt(sequence: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(verb, arg) for verb, arg in sequence if verb != "CLNT"]


# --- captured from the real clients against an FTP server (the commands each sent, in order)

CURL_LIST = lines("USER u", "PASS p", "PWD", "EPSV", "TYPE A", "LIST", "QUIT")
CURL_GET = lines("USER u", "PASS p", "PWD", "EPSV", "TYPE I", "SIZE f.txt", "RETR f.txt", "QUIT")
LFTP = lines(
    "FEAT",
    "CLNT lftp/4.9.2",
    "OPTS UTF8 ON",
    "USER u",
    "PASS p",
    "CLNT lftp/4.9.2",
    "OPTS UTF8 ON",
    "OPTS MLST type;perm;size;modify;unix.mode;unix.uid;unix.gid;",
    "PWD",
    "PASV",
    "LIST",
    "TYPE I",
    "SIZE f.txt",
    "MDTM f.txt",
    "PASV",
    "RETR f.txt",
)
NCFTP_CLNT = "NcFTPGet 3.2.6 linux-x86_64-glibc2.33"
NCFTP = lines(
    "USER u",
    "PASS p",
    "PWD",
    "FEAT",
    "HELP SITE",
    f"CLNT {NCFTP_CLNT}",
    "TYPE I",
    "OPTS MLST type;size;modify;perm;unix.mode;",
    "MLST /f.txt",
    "PASV",
    "RETR /f.txt",
)
GNU_FTP = lines("SYST", "USER u", "PASS p", "PASV", "LIST", "TYPE I", "PASV", "RETR f.txt")
FTPLIB = lines(
    "USER u", "PASS p", "TYPE A", "PASV", "LIST", "TYPE A", "PASV", "NLST", "TYPE I", "PASV", "RETR f.txt"
)

# --- from the clients' sources and published logs

FILEZILLA = lines("AUTH TLS", "AUTH SSL", "USER u", "PASS p", "SYST", "FEAT", "PWD", "TYPE I", "PASV", "MLSD")
FILEZILLA_TLS = lines(
    "AUTH TLS", "USER u", "PASS p", "SYST", "FEAT", "PBSZ 0", "PROT P", "PWD", "TYPE I", "PASV", "MLSD"
)
WINSCP = lines("USER u", "PASS p", "SYST", "FEAT", "PWD", "CWD /home/u", "PWD", "TYPE A", "PASV", "LIST -a")
WINDOWS_FTP = lines("OPTS UTF8 ON", "USER u", "PASS p", "PORT 192,0,2,1,4,1", "LIST", "XPWD")
WINDOWS_FTP_TYPICAL = lines(
    "OPTS UTF8 ON", "USER u", "PASS p", "PORT 192,0,2,1,4,1", "LIST", "TYPE I", "PORT 192,0,2,1,4,2", "RETR f"
)
DOTNET = lines("USER u", "PASS p", "OPTS utf8 on", "PWD", "TYPE I", "PASV", "RETR dir/f.txt", "QUIT")
DOTNET_TLS = lines(
    "AUTH TLS", "USER u", "PASS p", "PBSZ 0", "PROT P", "OPTS utf8 on", "PWD", "TYPE I", "PASV", "STOR f"
)
FLUENTFTP = lines("USER u", "PASS p", "FEAT", "OPTS UTF8 ON", "SYST", "PWD", "TYPE I", "EPSV", "MLSD /")
FLUENTFTP_TLS = lines(
    "AUTH TLS", "USER u", "PASS p", "PBSZ 0", "PROT P", "FEAT", "SYST", "PWD", "TYPE I", "EPSV", "LIST /"
)
JAVA_URL = lines("USER anonymous", "PASS Java17.0.2@", "TYPE I", "CWD pub", "EPSV ALL", "EPSV", "RETR f.txt")
COMMONS_NET = lines("USER u", "PASS p", "SYST", "PORT 192,0,2,1,4,1", "LIST")
COMMONS_NET_PASSIVE = lines(
    "USER u", "PASS p", "TYPE I", "SYST", "PASV", "LIST", "PASV", "RETR f", "PASV", "STOR f", "QUIT"
)
# setAutodetectUTF8(true): FEAT right after connect, before USER.
COMMONS_NET_AUTODETECT = lines("FEAT", "USER u", "PASS p", "SYST", "PASV", "LIST")
CURL_TLS = lines(
    "AUTH TLS", "USER u", "PASS p", "PBSZ 0", "PROT P", "PWD", "CWD a", "EPSV", "TYPE I", "SIZE f", "RETR f"
)
GNU_FTP_AUTOLOGIN = lines("USER u", "PASS p", "SYST", "TYPE I", "PASV", "LIST")
# ftplib.FTP_TLS: AUTH TLS before USER, prot_p() sends PBSZ 0 and PROT P after login.
FTPLIB_TLS = lines("AUTH TLS", "USER u", "PASS p", "PBSZ 0", "PROT P", "TYPE A", "PASV", "LIST")


@pytest.mark.parametrize(
    ("sequence", "expected"),
    [
        pytest.param(CURL_LIST, "curl", id="curl-list"),
        pytest.param(CURL_GET, "curl", id="curl-get"),
        pytest.param(CURL_TLS, "curl", id="curl-tls"),
        pytest.param(without_clnt(LFTP), "lftp", id="lftp"),
        pytest.param(without_clnt(NCFTP), "ncftp", id="ncftp"),
        pytest.param(GNU_FTP, "BSD/GNU ftp", id="gnu-ftp-n"),
        pytest.param(GNU_FTP_AUTOLOGIN, "BSD/GNU ftp", id="gnu-ftp-autologin"),
        pytest.param(FTPLIB, "Python ftplib", id="ftplib"),
        pytest.param(FILEZILLA, "FileZilla", id="filezilla"),
        pytest.param(FILEZILLA_TLS, "FileZilla", id="filezilla-tls"),
        pytest.param(WINSCP, "WinSCP", id="winscp"),
        pytest.param(WINDOWS_FTP, "Windows ftp.exe", id="ftp.exe"),
        pytest.param(WINDOWS_FTP_TYPICAL, "Windows ftp.exe", id="ftp.exe-typical"),
        pytest.param(
            lines("USER u", "PASS p", "XPWD", "PORT 1,2,3,4,5,6", "LIST"), "Windows ftp.exe", id="xpwd"
        ),
        pytest.param(DOTNET, ".NET FtpWebRequest", id="dotnet"),
        pytest.param(DOTNET_TLS, ".NET FtpWebRequest", id="dotnet-tls"),
        pytest.param(FLUENTFTP, "FluentFTP", id="fluentftp"),
        pytest.param(FLUENTFTP_TLS, "FluentFTP", id="fluentftp-tls"),
        pytest.param(JAVA_URL, "Java URL", id="java-url"),
        pytest.param(COMMONS_NET, "Java Commons Net", id="commons-net"),
        pytest.param(COMMONS_NET_PASSIVE, "Java Commons Net", id="commons-net-passive"),
        pytest.param(lines("USER u", "QUIT"), "unknown", id="no-pass"),
        pytest.param([], "unknown", id="nothing"),
        pytest.param(lines("GET / HTTP/1.1", "HOST? example.com"), "unknown", id="http"),
        pytest.param(lines("HELO x", "PASS p", "XYZZY", "FOO bar", "NOOP"), "unknown", id="junk"),
        pytest.param(
            COMMONS_NET_AUTODETECT,
            "Java Commons Net",
            id="commons-net-autodetect-utf8",
        ),
        pytest.param(
            FTPLIB_TLS,
            "Python ftplib",
            id="ftplib-tls",
        ),
    ],
)
def test_identify_by_habits(sequence, expected):
    assert identify(sequence) == expected


def test_identify_takes_the_clients_word_over_its_habits():
    assert identify(LFTP, "lftp/4.9.2") == "lftp 4.9.2"
    assert identify(NCFTP, NCFTP_CLNT) == "ncftp 3.2.6"
    assert identify(CURL_LIST, "FileZilla") == "FileZilla"  # the text wins
    assert identify(lines("USER u"), "WinSCP-release-6.3.5") == "WinSCP 6.3.5"  # even without PASS


@pytest.mark.parametrize(
    ("clnt", "expected"),
    [
        ("lftp/4.9.2", "lftp 4.9.2"),
        (NCFTP_CLNT, "ncftp 3.2.6"),
        ("NcFTP 3.2.6 macosx10.15", "ncftp 3.2.6"),
        ("NcFTPPut 3.2.5 linux", "ncftp 3.2.5"),
        ("WinSCP-release-6.3.5", "WinSCP 6.3.5"),
        ("FileZilla", "FileZilla"),
        ("MyTool", "MyTool"),
        ("Name=Foo; Version=1.2.3;", "Foo 1.2.3"),
        ("", "unknown"),
        ("   ", "unknown"),
        ("!!!", "unknown"),
    ],
)
def test_from_clnt(clnt, expected):
    assert from_clnt(clnt) == expected


CSID = "Name=Serv-U FTP Client; Version=15.1;"


def test_from_clnt_csid_keeps_the_version():
    assert from_clnt(CSID).endswith(" 15.1")


def test_from_clnt_csid_gives_the_name_with_its_version():
    assert from_clnt(CSID) == "Serv-U FTP Client 15.1"


# --- SessionUsage


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def session(ip: str = "192.0.2.1") -> tuple[SessionUsage, Clock]:
    clock = Clock()
    return SessionUsage(ip, clock), clock


def login(usage: SessionUsage, user: str = "alice", phase: str = "sftp", tls: bool = True) -> None:
    """USER and PASS as the handler reports them: the login is told before PASS is logged."""
    usage.command("USER", user, 331)
    usage.logged_in(user, "main", phase, "sftp1", tls)
    usage.command("PASS", "secret", 230)


def only(records: list[Record]) -> Record:
    assert len(records) == 1
    return records[0]


def test_command_counts_replies_errors_site_unknown_and_data_modes():
    usage, _ = session()
    login(usage)
    for verb, arg, code in [
        ("PWD", "", 257),
        ("EPSV", "", 229),
        ("PASV", "", 227),
        ("PORT", "192,0,2,1,4,1", 200),
        ("EPRT", "|1|192.0.2.1|1025|", 200),
        ("PORT", "junk", 501),  # refused: not an active connection
        ("EPSV", "", 522),  # refused: not a passive one
        ("SITE CHMOD", "755 f.txt", 200),
        ("SITE RECFM=FB", "LRECL=80", 500),  # pyftpdlib's split of "SITE RECFM=FB LRECL=80"
        ("SITE RECFM=FB LRECL=80", "", 500),  # the whole line as the verb
        ("SITE UMASK", "022", 550),
        ("XYZZY", "", 500),
        ("ACCT", "x", 502),
        ("MODE", "Z", 504),
        ("USER", "bob", 502),  # USER/PASS are never "unknown" commands
        ("RETR", "missing", 550),
    ]:
        usage.command(verb, arg, code)
    t = only(usage.take()).totals
    assert t.commands == Counter(
        {
            "USER": 2,
            "PASS": 1,
            "PWD": 1,
            "EPSV": 2,
            "PASV": 1,
            "PORT": 2,
            "EPRT": 1,
            "SITE CHMOD": 1,
            "SITE RECFM": 2,
            "SITE UMASK": 1,
            "XYZZY": 1,
            "ACCT": 1,
            "MODE": 1,
            "RETR": 1,
        }
    )
    assert t.replies == Counter({"2xx": 7, "3xx": 1, "5xx": 10})
    assert t.errors == Counter({"500": 3, "501": 1, "502": 2, "504": 1, "522": 1, "550": 2})
    assert t.site == Counter({"CHMOD": 1, "RECFM": 2, "UMASK": 1})
    assert t.site_refused == Counter({"RECFM": 2, "UMASK": 1})
    assert t.unknown == Counter({"XYZZY": 1, "ACCT": 1})  # 504 (MODE Z) is a parameter, not a command
    assert (t.passive, t.active) == (2, 2)


def test_verb_names_are_sanitised_and_short():
    assert verb_name("retr") == "RETR"
    assert verb_name("RETR\r") == "RETR?"
    assert verb_name("stor\x00\udcff") == "STOR??"
    assert verb_name("\u00e9t\u00e9") == "?T?"
    assert verb_name("A" * 40) == "A" * 24
    assert verb_name("") == "?"
    usage, _ = session()
    login(usage)
    usage.command("NO\x1bOP", "", 500)
    t = only(usage.take()).totals
    assert t.commands["NO?OP"] == 1
    assert t.unknown == Counter({"NO?OP": 1})


def test_distinct_names_are_capped_and_the_rest_counted_as_other():
    usage, _ = session()
    usage.logged_in("alice", "main", "sftp", "sftp1", True)
    for number in range(MAX_KEYS + 5):
        usage.command(f"XV{number}", "", 500)
    usage.command("XV0", "", 500)  # a name already kept is still counted under its name
    t = only(usage.take()).totals
    assert len(t.commands) == MAX_KEYS + 1
    assert t.commands["XV0"] == 2
    assert t.commands[f"XV{MAX_KEYS - 1}"] == 1
    assert f"XV{MAX_KEYS}" not in t.commands
    assert t.commands["OTHER"] == 5
    assert t.unknown == t.commands
    assert t.replies == Counter({"5xx": MAX_KEYS + 6})


def test_from_clnt_keeps_only_safe_words():
    assert from_clnt("\x1b]0;pwned\x07 lftp/4.9.2\r\n") == "pwned 4.9.2"
    assert from_clnt('=HYPERLINK("http://evil.example/")') == "HYPERLINK"


def clnt_client(*texts: str) -> str:
    """The client of a session that sent CLNT with each of ``texts``."""
    usage, _ = session()
    for clnt in texts:
        usage.command("CLNT", clnt, 200)
    login(usage)
    return only(usage.take()).key.client


def test_the_first_clnt_text_counts_and_is_bounded():
    assert clnt_client("lftp/4.9.2", "FileZilla") == "lftp 4.9.2"
    client = clnt_client("A" * (5 * MAX_TEXT))
    assert set(client) == {"A"}
    assert len(client) <= 2 * MAX_TEXT


def test_the_client_name_is_cut_to_max_text():
    client = clnt_client("A" * (5 * MAX_TEXT))
    assert set(client) == {"A"}
    assert len(client) <= MAX_TEXT


@pytest.mark.parametrize(
    ("sequence", "client"),
    [(LFTP, "lftp 4.9.2"), (NCFTP, "ncftp 3.2.6"), (CURL_GET, "curl"), (without_clnt(LFTP), "lftp")],
)
def test_the_session_tells_its_client(sequence, client):
    usage, _ = session()
    for verb, arg in sequence:
        if verb == "PASS":
            usage.logged_in("alice", "main", "sftp", "sftp1", False)
        usage.command(verb, arg, 230 if verb == "PASS" else 200)
    assert only(usage.take()).key.client == client


def test_transfers_and_binary_data_in_ascii_mode():
    usage, _ = session()
    login(usage)
    usage.transfer(upload=True, completed=True, nbytes=100, ascii=False)
    usage.transfer(upload=True, completed=False, nbytes=7, ascii=False)
    usage.transfer(upload=False, completed=True, nbytes=50, ascii=True)
    usage.binary_in_ascii()
    usage.transfer(upload=False, completed=True, nbytes=70, ascii=True)
    usage.transfer(upload=False, completed=False, nbytes=3, ascii=True)  # the flag was for the last one only
    usage.shadow_problems(2)
    t = only(usage.take()).totals
    assert (t.uploads, t.uploads_failed, t.bytes_up) == (2, 1, 107)
    assert (t.downloads, t.downloads_failed, t.bytes_down) == (3, 1, 123)
    assert (t.type_a, t.type_a_binary) == (3, 1)
    assert t.shadow_problems == 2


def test_take_hands_over_additive_pieces():
    usage, clock = session()
    usage.command("NOOP", "", 200)
    clock.now += 5
    assert usage.take() == []  # nothing before a login
    login(usage, tls=True)
    clock.now += 10
    first = only(usage.take())
    assert first.key == Key(
        day="2023-11-14",
        user="alice",
        route="main",
        phase="sftp",
        backend="sftp1",
        client_ip="192.0.2.1",
        tls=True,
        client="unknown",  # NOOP, USER, PASS: no habit matches
        outcome="ok",
    )
    assert (first.first_seen, first.last_seen) == (T0, T0 + 15)
    assert first.totals.commands == Counter({"NOOP": 1, "USER": 1, "PASS": 1})
    assert first.totals.logins == 1

    usage.command("PWD", "", 257)
    usage.transfer(upload=False, completed=True, nbytes=9, ascii=False)
    clock.now += 20
    second = only(usage.take())
    assert second.key == first.key
    assert (second.first_seen, second.last_seen) == (T0 + 15, T0 + 35)
    assert second.totals == Totals(
        downloads=1, bytes_down=9, commands=Counter({"PWD": 1}), replies=Counter({"2xx": 1})
    )
    clock.now += 20
    assert usage.take() == []  # an idle piece is not recorded

    whole = Totals()
    whole.add(first.totals)
    whole.add(second.totals)
    assert whole.commands == Counter({"NOOP": 1, "USER": 1, "PASS": 1, "PWD": 1})
    assert (whole.logins, whole.downloads) == (1, 1)


def test_a_new_identity_ends_the_old_piece():
    usage, clock = session()
    login(usage, "alice")
    usage.command("PWD", "", 257)
    clock.now += 10
    login(usage, "bob", phase="legacy", tls=False)  # REIN / USER bob without a take in between
    clock.now += 10
    alice, bob = usage.take()
    assert (alice.key.user, alice.key.phase, alice.key.tls) == ("alice", "sftp", True)
    assert (bob.key.user, bob.key.phase, bob.key.tls) == ("bob", "legacy", False)
    assert alice.totals.commands == Counter({"USER": 2, "PASS": 1, "PWD": 1})
    assert bob.totals.commands == Counter({"PASS": 1})
    assert (alice.totals.logins, bob.totals.logins) == (1, 1)
    assert (alice.last_seen, bob.first_seen, bob.last_seen) == (T0 + 10, T0 + 10, T0 + 20)
    assert alice.key.client == bob.key.client == "unknown"


def test_logout_take_leaves_the_next_login_its_own_commands():
    usage, clock = session()
    login(usage, "alice")
    clock.now += 10
    assert only(usage.take(logout=True)).key.user == "alice"
    assert not usage.due(0)
    login(usage, "alice")  # the same user again after REIN
    second = only(usage.take())
    assert second.totals.commands == Counter({"USER": 1, "PASS": 1})
    assert second.totals.logins == 1


def test_a_refused_retired_login():
    usage, clock = session("198.51.100.7")
    usage.command("USER", "carol", 331)
    usage.refused("carol", "old", "retired", "retired", tls=False)
    usage.command("PASS", "x", 530)
    clock.now += 1
    record = only(usage.take())
    assert record.key == Key(
        day="2023-11-14",
        user="carol",
        route="old",
        phase="retired",
        backend="-",
        client_ip="198.51.100.7",
        tls=False,
        client="unknown",
        outcome="retired",
    )
    assert record.totals.logins == 1
    assert record.totals.errors == Counter({"530": 1})


def test_due_only_after_a_login_and_the_interval():
    usage, clock = session()
    clock.now += 1000
    assert not usage.due(60)  # no login yet: nothing to hand over
    login(usage)
    assert usage.due(60)  # counted from the session's start
    usage.take()
    clock.now += 59
    assert not usage.due(60)
    clock.now += 1
    assert usage.due(60)


# --- Totals


def full_totals() -> Totals:
    return Totals(
        logins=1,
        uploads=2,
        uploads_failed=3,
        downloads=4,
        downloads_failed=5,
        bytes_up=6,
        bytes_down=7,
        type_a=8,
        type_a_binary=9,
        passive=10,
        active=11,
        shadow_problems=12,
        commands=Counter({"RETR": 2, "PWD": 1}),
        replies=Counter({"2xx": 3}),
        errors=Counter({"550": 1}),
        site=Counter({"CHMOD": 1}),
        site_refused=Counter({"RECFM": 1}),
        unknown=Counter({"XYZZY": 4}),
    )


def test_totals_add():
    a, b = full_totals(), full_totals()
    b.commands = Counter({"RETR": 1, "STOR": 5})
    a.add(b)
    assert (a.logins, a.uploads, a.shadow_problems, a.active) == (2, 4, 24, 22)
    assert a.commands == Counter({"RETR": 3, "PWD": 1, "STOR": 5})
    assert a.unknown == Counter({"XYZZY": 8})


def test_totals_add_keeps_the_cap():
    a = Totals(commands=Counter({f"A{i}": 1 for i in range(MAX_KEYS)}))
    a.add(Totals(commands=Counter({"A0": 1, "B1": 2, "B2": 3})))
    assert len(a.commands) == MAX_KEYS + 1
    assert (a.commands["A0"], a.commands["OTHER"]) == (2, 5)


def test_totals_json_round_trip():
    totals = full_totals()
    data = totals.to_json()
    assert type(data["commands"]) is dict
    assert Totals.from_json(json.loads(json.dumps(data))) == totals
    newer = {**data, "future_counter": {"X": 1}, "future_count": 3}
    assert Totals.from_json(newer) == totals
    assert Totals.from_json({"logins": 2, "commands": {"X": 1}}) == Totals(logins=2, commands=Counter(X=1))


# --- store


def key(**changes) -> Key:
    fields = {
        "day": "2023-11-14",
        "user": "alice",
        "route": "main",
        "phase": "sftp",
        "backend": "sftp1",
        "client_ip": "192.0.2.1",
        "tls": True,
        "client": "curl",
        "outcome": "ok",
    }
    return Key(**{**fields, **changes})


def record(first: float, last: float, totals: Totals | None = None, **changes) -> Record:
    return Record(key(**changes), first, last, totals if totals is not None else Totals(logins=1))


def write(path: Path, *records: Record) -> None:
    conn = store.connect(str(path))
    try:
        store.write(conn, records)
    finally:
        conn.close()


def newer_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()


def test_a_newer_schema_is_refused_when_read(tmp_path):
    db = tmp_path / "usage.sqlite"
    newer_database(db)
    with pytest.raises(StoreError, match="newer"):
        store.connect(str(db), readonly=True)
    with pytest.raises(StoreError, match="newer"):
        store.read(str(db))


def test_a_newer_schema_is_refused_when_opened_for_writing(tmp_path):
    db = tmp_path / "usage.sqlite"
    newer_database(db)
    with pytest.raises(StoreError, match="newer"):
        store.connect(str(db))


def test_a_file_that_is_not_sqlite(tmp_path):
    db = tmp_path / "usage.sqlite"
    db.write_text("this is not a database\n" * 100)
    with pytest.raises(StoreError, match="not a database"):
        store.connect(str(db))
    with pytest.raises(StoreError, match="not a database"):
        store.read(str(db))
    with pytest.raises(StoreError):
        UsageStore(str(db), 90)


def test_reading_a_missing_database(tmp_path):
    with pytest.raises(StoreError):
        store.read(str(tmp_path / "missing.sqlite"))
    assert list(tmp_path.iterdir()) == []  # read-only: nothing created


def test_read_a_database_whose_path_needs_quoting(tmp_path):
    db = tmp_path / "odd#dir" / "usage.sqlite"
    db.parent.mkdir()
    write(db, record(T0, T0 + 1))
    assert [r.key.user for r in store.read(str(db))] == ["alice"]


# --- readiness


NOW = T0 + 10 * DAY


def row(first: float, last: float, **fields) -> Row:
    """A stored row: Key fields and Totals fields by name."""
    key_names = {f.name for f in dataclasses.fields(Key)}
    totals = Totals(**{k: v for k, v in fields.items() if k not in key_names})
    if "logins" not in fields:
        totals.logins = 1
    return Row(key(**{k: v for k, v in fields.items() if k in key_names}), first, last, totals)


def one(rows: list[Row]):
    (report,) = assess(rows, NOW)
    return report


def test_ready_with_clean_transfers_over_sftp():
    r = one([row(NOW - 2.5 * DAY, NOW - 2 * DAY, downloads=3, uploads=2, passive=5)])
    assert (r.verdict, r.reasons, r.warnings) == ("ready", ["5 clean transfers over sftp in 3 days"], [])
    assert (r.sftp_transfers, r.sftp_failed, r.untranslatable) == (5, 0, [])
    r = one([row(NOW - 3600, NOW - 60, uploads=1)])
    assert r.reasons == ["1 clean transfer over sftp in 1 day"]


def test_ready_from_shadow_uploads_only():
    r = one(
        [row(NOW - DAY, NOW, phase="shadow", backend="legacy1", uploads=4, uploads_failed=1, downloads=9)]
    )
    assert (r.verdict, r.reasons) == ("ready", ["3 clean transfers over sftp in 1 day"])
    assert (r.sftp_transfers, r.sftp_failed) == (3, 0)


def test_site_recfm_blocks_and_site_chmod_does_not():
    r = one([row(NOW - DAY, NOW, downloads=2, site=Counter({"RECFM": 2, "CHMOD": 1}))])
    assert (r.verdict, r.reasons) == ("blocked", ["uses SITE RECFM (2x): SFTP has no equivalent"])
    assert r.untranslatable == ["SITE RECFM"]
    r = one([row(NOW - DAY, NOW, downloads=2, site=Counter({"CHMOD": 3, "HELP": 1, "UMASK": 1, "UTIME": 2}))])
    assert (r.verdict, r.untranslatable) == ("ready", [])


def test_checksum_users_are_warned_that_sftp_computes_none():
    r = one([row(NOW - DAY, NOW, downloads=2, commands=Counter({"HASH": 2, "XMD5": 1, "RETR": 2}))])
    assert r.verdict == "ready"
    assert r.warnings == [
        "verifies transfers with checksums (HASH (2x), XMD5 (1x)): an SFTP server (OpenSSH) computes none, "
        "so over SFTP the client must check its files another way"
    ]


def test_shadow_problems_block_and_are_counted_once():
    r = one([row(NOW - DAY, NOW, phase="shadow", uploads=10, shadow_problems=2)])
    assert r.verdict == "blocked"
    assert r.reasons == ["shadow phase: 2 SFTP copies failed or differed from the legacy's"]
    assert (r.sftp_transfers, r.sftp_failed) == (8, 0)  # the clean replays; the 2 are the blocker


def test_ready_needs_the_configured_evidence():
    evidence = Evidence(transfers=5, days=3)
    (r,) = assess([row(NOW - DAY, NOW, downloads=1)], NOW, evidence)
    assert (r.verdict, r.reasons) == (
        "not proven",
        [
            "1 clean transfer over sftp in 1 day; "
            "ready after 5 clean transfers over 3 days (report.ready_after)"
        ],
    )
    (r,) = assess([row(NOW - 2 * DAY, NOW, downloads=9)], NOW, evidence)
    assert r.verdict == "not proven"  # enough transfers, not yet over 3 days
    (r,) = assess([row(NOW - 3 * DAY, NOW, downloads=5)], NOW, evidence)
    assert (r.verdict, r.reasons) == ("ready", ["5 clean transfers over sftp in 3 days"])


def test_capability_probes_are_not_untranslatable():
    """lftp sends AUTH TLS to a plain-FTP gateway (500) and goes on in the clear."""
    r = one([row(NOW - DAY, NOW, downloads=1, unknown=Counter({"AUTH": 3, "FEAT": 1, "XYZ": 2}))])
    assert r.untranslatable == ["XYZ"]
    assert r.warnings == ["commands the gateway does not implement: XYZ (2x)"]


def test_failed_sftp_transfers_block_above_five_percent_only():
    r = one([row(NOW - DAY, NOW, downloads=10, downloads_failed=1)])
    assert (r.verdict, r.reasons) == ("blocked", ["1 of 10 transfers over sftp failed (10%)"])
    r = one([row(NOW - DAY, NOW, downloads=20, downloads_failed=1)])
    assert (r.verdict, r.reasons) == ("ready", ["19 clean transfers over sftp in 1 day"])
    assert r.warnings == ["1 of 20 transfers over sftp failed (5%)"]


def test_not_proven():
    r = one([row(NOW - DAY, NOW, phase="legacy", backend="legacy1", downloads=5, uploads=2)])
    assert r.verdict == "not proven"
    assert r.reasons == [
        "no transfers over sftp yet (phase legacy): move the route to shadow or sftp to test"
    ]
    r = one([row(NOW - DAY, NOW, logins=2)])
    assert (r.verdict, r.reasons) == ("not proven", ["2 logins but no file transfer over sftp yet"])


def failed(first: float, last: float, kind: str = "bad_credentials", **fields) -> Row:
    return row(first, last, outcome=kind, backend="-", **{"phase": "sftp", **fields})


def test_locked_out_when_every_login_after_the_last_success_failed():
    rows = [
        row(NOW - 3 * DAY, NOW - 2 * DAY, phase="shadow", uploads=4),
        failed(NOW - DAY, NOW - 3600, logins=5, client_ip="198.51.100.7", client="lftp 4.9.2"),
        failed(NOW - 1800, NOW - 600, "banned", logins=1, client_ip="198.51.100.7", client="lftp 4.9.2"),
    ]
    r = one(rows)
    assert (r.verdict, r.locked_out_since, r.logins, r.failed_logins) == (
        "locked out",
        NOW - DAY,
        1,
        Counter({"bad_credentials": 5, "banned": 1}),
    )
    assert r.reasons == [
        "every login since 2023-11-23 22:13 UTC failed, after the move from shadow to sftp: "
        "bad_credentials (5x), banned (1x); the last successful one was 2023-11-22 22:13 UTC (phase "
        "shadow); last attempt from 198.51.100.7 (client: lftp 4.9.2) at 2023-11-24 22:03 UTC"
    ]
    assert r.client_ips == ["192.0.2.1", "198.51.100.7"]
    data = render.as_data(r)
    assert (data["failed_logins"], data["locked_out_since"]) == (
        {"bad_credentials": 5, "banned": 1},
        "2023-11-23T22:13:20Z",
    )


def test_failures_the_user_got_past_are_a_warning_and_only_failures_never_logged_in():
    rows = [failed(NOW - DAY, NOW - DAY + 60, logins=2), row(NOW - 3600, NOW - 3000, downloads=1)]
    r = one(rows)
    assert (r.verdict, r.locked_out_since) == ("ready", None)
    assert r.warnings == [
        "2 failed logins: bad_credentials (2x) (first 2023-11-23 22:13, last 2023-11-23 22:14 UTC)"
    ]
    r = one([failed(NOW - DAY, NOW - 60, "host_key_mismatch", logins=4)])
    assert (r.verdict, r.logins) == ("never logged in", 0)
    assert r.reasons == [
        "4 failed logins (host_key_mismatch (4x)) and none successful, "
        "the last from 192.0.2.1 at 2023-11-24 22:12 UTC"
    ]


def test_retired_when_the_latest_row_is_a_refusal():
    rows = [
        row(NOW - 5 * DAY, NOW - 4 * DAY, downloads=3, site=Counter({"RECFM": 1})),
        row(
            NOW - DAY,
            NOW - 3600,
            route="old",
            phase="retired",
            backend="-",
            outcome="retired",
            client_ip="198.51.100.7",
            client="lftp 4.9.2",
            logins=3,
        ),
    ]
    r = one(rows)
    assert r.verdict == "retired"
    assert r.reasons == [
        "FTP is off for route old, yet 3 refused logins, the last from 198.51.100.7 (client: lftp 4.9.2)"
        " (first 2023-11-23 22:13, last 2023-11-24 21:13 UTC)"
    ]
    assert (r.logins, r.refused_logins, r.phase) == (1, 3, "retired")
    # The same refusals followed by a good login: judged by the evidence again.
    later = one([*rows, row(NOW - 60, NOW - 30, downloads=1)])
    assert later.verdict == "blocked"


def test_warnings():
    rows = [
        row(
            NOW - DAY,
            NOW,
            tls=False,
            logins=3,
            active=3,
            type_a=4,
            type_a_binary=1,
            unknown=Counter({"XYZZY": 2, "CLNT": 1, "MODE": 1}),
        ),
        row(NOW - DAY, NOW - 10, client_ip="192.0.2.9", type_a=2),
    ]
    r = one(rows)
    assert r.warnings == [
        "3 of 4 logins in plain FTP (no TLS) (first 2023-11-23 22:13, last 2023-11-24 22:13 UTC)",
        "active mode only (PORT/EPRT): the gateway must be able to connect to the client",
        "TYPE A on binary data (1 transfer): bytes altered in transit",
        "commands the gateway does not implement: XYZZY (2x), MODE (1x)",
    ]
    assert r.untranslatable == ["TYPE A on binary data", "active mode only", "XYZZY", "MODE"]
    assert r.verdict == "not proven"  # warnings never change it
    r = one([row(NOW - DAY, NOW, type_a=2, passive=1, active=1, downloads=2)])
    assert r.warnings == ["TYPE A used (2 transfers): line endings converted; an SFTP client would not"]
    assert r.untranslatable == []


def test_tls_share_addresses_clients_and_routes():
    rows = [
        row(
            NOW - 5 * DAY, NOW - 5 * DAY, route="old", phase="legacy", client_ip="A", client="curl", tls=False
        ),
        row(
            NOW - 3 * DAY, NOW - 3 * DAY, route="old", phase="shadow", client_ip="B", client="lftp", logins=2
        ),
        row(NOW - 3 * DAY, NOW - 2 * DAY, route="old", phase="legacy", client_ip="C", logins=2, tls=False),
        row(NOW - DAY, NOW - DAY, route="new", phase="sftp", client_ip="B", client="lftp", logins=1),
    ]
    r = one(rows)
    assert (r.logins, r.tls_logins) == (6, 3)
    assert r.tls_share == 0.5
    assert r.client_ips == ["B", "C", "A"]
    assert r.clients == {"lftp": 3, "curl": 3}
    assert [(u.route, u.phase, u.logins, u.last_seen) for u in r.routes] == [
        ("new", "sftp", 1, NOW - DAY),
        ("old", "legacy", 3, NOW - 2 * DAY),
        ("old", "shadow", 2, NOW - 3 * DAY),
    ]
    assert (r.first_seen, r.last_seen, r.phase) == (NOW - 5 * DAY, NOW - DAY, "sftp")


def test_reports_are_per_user_sorted_by_name():
    rows = [row(NOW - 1, NOW, user="zoe"), row(NOW - 1, NOW, user="adam"), row(NOW - 2, NOW - 1, user="zoe")]
    reports = assess(rows, NOW)
    assert [(r.user, r.logins) for r in reports] == [("adam", 1), ("zoe", 2)]


# --- render


def sample_reports():
    rows = [
        row(NOW - 2 * DAY, NOW - DAY, user="alice", downloads=3, passive=3, commands=Counter({"RETR": 3})),
        row(NOW - DAY, NOW, user="bob", tls=False, site=Counter({"RECFM": 1}), errors=Counter({"500": 1})),
        row(NOW - DAY, NOW, user="carol", phase="retired", backend="-", outcome="retired", route="old"),
        row(NOW - DAY, NOW, user="dave", phase="legacy", active=2, type_a=1, replies=Counter({"2xx": 4})),
    ]
    return assess(rows, NOW)


def test_json_matches_the_schema_and_round_trips():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    reports = sample_reports()
    assert [r.verdict for r in reports] == ["ready", "blocked", "retired", "not proven"]
    for since in (NOW - 7 * DAY, None):
        document = json.loads(render.to_json(reports, since, NOW))
        jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
        assert document["schema_version"] == render.SCHEMA_VERSION == 2
        assert document["generated"] == "2023-11-24T22:13:20Z"
        assert document["since"] == (None if since is None else "2023-11-17T22:13:20Z")
        assert document["users"] == [render.as_data(r) for r in reports]
    alice = document["users"][0]
    assert alice["sftp_path"] == {"transfers": 3, "failed": 0, "error_rate": 0.0, "shadow_problems": 0}
    assert alice["commands"] == {"RETR": 3}
    assert alice["routes"] == [
        {
            "route": "main",
            "phase": "sftp",
            "backend": "sftp1",
            "logins": 1,
            "last_seen": "2023-11-23T22:13:20Z",
        }
    ]
    document["users"][0]["verdict"] = "maybe"  # the schema does catch a bad document
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)


def test_csv_has_the_header_and_one_row_per_user():
    reports = sample_reports()
    rows = list(csv.reader(io.StringIO(render.to_csv(reports))))
    assert tuple(rows[0]) == render.CSV_COLUMNS
    assert len(rows) == 1 + len(reports)
    records = list(csv.DictReader(io.StringIO(render.to_csv(reports))))
    assert [(r["user"], r["verdict"]) for r in records] == [
        ("alice", "ready"),
        ("bob", "blocked"),
        ("carol", "retired"),
        ("dave", "not proven"),
    ]
    assert records[0]["reasons"] == "3 clean transfers over sftp in 2 days"
    assert records[1]["untranslatable"] == "SITE RECFM"
    assert records[3]["routes"] == "main (legacy)"
    assert render.to_csv([]) == ",".join(render.CSV_COLUMNS) + "\n"


def test_table():
    assert render.to_table([], None, NOW) == "No FTP sessions in the usage database.\n"
    assert render.to_table([], NOW - 7 * DAY, NOW) == "No FTP sessions since 2023-11-17 22:13 UTC.\n"
    table = render.to_table(sample_reports(), None, NOW)
    assert table.splitlines()[0].split() == [
        "USER",
        "VERDICT",
        "PHASE",
        "LAST",
        "SEEN",
        "(UTC)",
        "LOGINS",
        "TLS",
        "TRANSFERS",
        "CLIENTS",
        "ADDRESSES",
    ]
    assert "    ready: 3 clean transfers over sftp in 2 days" in table.splitlines()
    assert table.endswith("\n4 users, all retained days; generated 2023-11-24 22:13 UTC.\n")


def test_refused_names_never_take_a_per_user_metrics_slot():
    from gateway.features.metrics import Metrics

    metrics = Metrics(per_user=1)
    metrics.phase_login("retired", False, "made-up")  # before any password check
    metrics.phase_login("sftp", True, "alice")
    metrics.phase_login("sftp", True, "bob")
    sample = metrics.registry.get_sample_value
    assert sample("ftpgw_user_logins_total", {"user": "alice", "tls": "yes"}) == 1
    assert sample("ftpgw_user_logins_total", {"user": "_other", "tls": "yes"}) == 1
    assert sample("ftpgw_user_logins_total", {"user": "_other", "tls": "no"}) == 1
    assert sample("ftpgw_user_logins_total", {"user": "made-up", "tls": "no"}) is None
    assert sample("ftpgw_phase_logins_total", {"phase": "retired", "tls": "no"}) == 1


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "America/New_York", "Australia/Sydney"])
def test_since_dates_are_utc_days_in_any_time_zone(tz, monkeypatch):
    from gateway.edges.cli import since_arg

    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        assert since_arg("2026-07-01") == 1782864000.0  # 2026-07-01T00:00:00Z
        assert abs(since_arg("7d") - (time.time() - 7 * DAY)) < 5
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_problem_carries_its_times_and_counts_only_inside_since():
    """One day's row: a failed upload and a SITE RECFM in the morning, six clean uploads in
    the afternoon. The whole day is blocked; --since after the morning is not."""
    clock = [NOW - 6 * 3600]
    usage = SessionUsage("192.0.2.1", clock=lambda: clock[0])
    usage.logged_in("alice", "main", "sftp", "sftp1", tls=True)
    usage.command("SITE RECFM", "FB", 200)
    clock[0] += 60
    usage.transfer(upload=True, completed=False, nbytes=10, ascii=False)
    (morning,) = usage.take(logout=True)
    clock[0] = NOW - 3600
    usage.logged_in("alice", "main", "sftp", "sftp1", tls=True)
    for _ in range(6):
        usage.transfer(upload=True, completed=True, nbytes=10, ascii=False)
    (afternoon,) = usage.take()
    whole = Totals()
    whole.add(morning.totals)
    whole.add(afternoon.totals)
    stored = Row(morning.key, morning.first_seen, afternoon.last_seen, Totals.from_json(whole.to_json()))

    (day,) = assess([stored], NOW, Evidence(5, 0))
    assert day.verdict == "blocked"
    assert day.reasons == [
        "uses SITE RECFM (1x): SFTP has no equivalent (first 2023-11-24 16:13, last 2023-11-24 16:13 UTC)",
        "1 of 7 transfers over sftp failed (14%) (first 2023-11-24 16:14, last 2023-11-24 16:14 UTC)",
    ]
    (recent,) = assess([stored], NOW, Evidence(5, 0), since=NOW - 2 * 3600)
    assert (recent.verdict, recent.reasons) == ("ready", ["6 clean transfers over sftp in 1 day"])
    assert recent.warnings == []
    # The stored row itself is unchanged: another window sees the morning again.
    assert assess([stored], NOW, Evidence(5, 0), since=NOW - 7 * 3600)[0].verdict == "blocked"
