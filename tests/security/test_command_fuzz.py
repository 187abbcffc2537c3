"""Fuzzing the control channel: random and mutated command lines must get well-formed replies.

Raw bytes over a TCP socket (no client library in between) go to the gateway running as a
real process in front of the test sshd, before and after a login: a grammar of real verbs
with odd arguments, mixed with random bytes, Telnet IAC sequences, overlong lines and odd
line ends, then mutated (byte flips, truncation, splicing). Invariants, checked on every
example: each reply line is RFC 959 shaped (``ddd `` or ``ddd-`` ... ``ddd ``), ends with
CRLF and holds no control character (no CR, LF or NUL from the input echoed back; bytes that
are not UTF-8 may come back as they were sent, names are bytes); the
gateway closes a session only after a 421 or 221; the process stays alive. After the run
its thread and open file counts return to their baseline.

``FTPGW_FUZZ_EXAMPLES`` sets the number of examples (``bench/fuzz.py`` runs thousands).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.listing import is_name_text
from tests.helpers.gateway_env import PASSWORD, GatewayProcess, base_config, wait_for

EXAMPLES = int(os.environ.get("FTPGW_FUZZ_EXAMPLES", "200"))
#: The most one example may take to be answered (a hang is a failure, not a slow test).
EXAMPLE_TIMEOUT = 10.0
#: How long the thread and fd counts may take to come back after the last session.
SETTLE_TIMEOUT = 20.0
USER = "gwtest1"

#: Sent after every payload: an unknown verb, so its reply (which echoes it) marks the end.
SENTINEL = b"ZZFUZZEND"
SENTINEL_REPLY = b'500 Command "ZZFUZZEND" not understood.'

REPLY_START = re.compile(rb"^([1-5]\d\d)([ -])")
DIGITS_START = re.compile(rb"^\d{3}[ -]")

# --- the grammar: verbs and odd arguments

PATHS = [
    "",
    " ",
    ".",
    "..",
    "/",
    "//",
    "../../..",
    "../../../etc/passwd",
    "/etc/shadow",
    "~",
    "~root",
    "*",
    "*.txt",
    "[a-z]*",
    "?",
    "-la",
    "-la /",
    "-R",
    "--",
    "a b",
    " lead",
    "trail ",
    "x" * 300,
    "d/" * 60,
    "%s%n%x",
    "{0}{1}",
    "$(id)",
    "`id`",
    "ü.txt",
    "日本語",
    "\u202eexe.txt",
    "a\tb",
    "a\x1bb",
    "a\x7fb",
    "a\u2028b",
    "a\x85b",
    "\ufeffbom",
    "\U0001f600",
    "new",
    "new/sub",
    "f.bin",
]
ARGS: dict[str, list[str]] = {
    "USER": [USER, "gwtest2", "anonymous", "root", "", "a" * 200, "gw test1", "gwtest1\x01"],
    "PASS": [PASSWORD, "", "wrong", "a" * 300, PASSWORD + " "],
    "ACCT": ["", "acct"],
    "TYPE": ["A", "I", "E", "L", "L 8", "L 7", "L 9", "A N", "A T", "A C", "E N", "a", "i", "X", "AI", "I I"],
    "MODE": ["S", "B", "C", "Z", "s", "", "SS"],
    "STRU": ["F", "R", "P", "f", "", "FF"],
    "REST": ["0", "1", "-1", "10", "99999999999999999999999", "abc", "1e3", " 5", "0x10", "+3", "٣"],
    "OPTS": [
        "UTF8 ON",
        "UTF8 OFF",
        "utf8 on",
        "UTF8",
        "MLST type;size;",
        "MLST ;;;",
        "MLST x;",
        "MLST",
        "MODE Z",
        "FOO BAR",
        "",
    ],
    "SITE": [
        "HELP",
        "CHMOD 755 f.bin",
        "CHMOD 9999 f.bin",
        "CHMOD abc f.bin",
        "CHMOD",
        "CHMOD 755",
        "EXEC id",
        "IDLE 1",
        "UMASK 0",
        "MFMT 20200101000000 f.bin",
        "",
        "ZZZ",
    ],
    "MFMT": ["20200101000000 f.bin", "99999999999999 f.bin", "2020 f.bin", "20200101000000", "x y"],
    "EPSV": ["", "1", "2", "3", "ALL", "all", "-1"],
    "ALLO": ["100", "R 10", "x", "-5"],
    "AUTH": ["TLS", "SSL", "TLS-C", "TLS-P", "XYZ", ""],
    "PBSZ": ["0", "1", "-1", "x"],
    "PROT": ["P", "C", "S", "E", "X"],
    "HELP": ["", "USER", "SITE", "SITE CHMOD", "ZZZ", "help"],
    "STAT": ["", *PATHS],
    "CLNT": ["lftp 4.9", "", "\u00e9"],
    "CSID": ["Name=x; Version=1;", ""],
    "LANG": ["EN", "", "xx-YY"],
    "HOST": ["127.0.0.1", "example.com", ""],
}
PATH_VERBS = [
    "CWD",
    "XCWD",
    "MKD",
    "XMKD",
    "RMD",
    "XRMD",
    "DELE",
    "RNFR",
    "RNTO",
    "SIZE",
    "MDTM",
    "RETR",
    "STOR",
    "APPE",
    "STOU",
    "LIST",
    "NLST",
    "MLSD",
    "MLST",
    "SMNT",
]
BARE_VERBS = ["CDUP", "XCUP", "PWD", "XPWD", "SYST", "FEAT", "NOOP", "PASV", "ABOR", "REIN", "QUIT", "CCC"]
#: PORT/EPRT are not here: see ``active_lines`` (the gateway connects where they point).
VERBS = sorted({*ARGS, *PATH_VERBS, *BARE_VERBS})

LINE_ENDS = [b"\r\n"] * 8 + [b"\n", b"\r", b"", b"\r\r\n", b"\n\r", b"\0\r\n", b" \r\n", b"\r\n\r\n"]
#: Telnet: IAC IP + IAC DM (RFC 959's abort sequence), option negotiation, lone IAC bytes.
TELNET = [
    b"\xff\xf4\xff\xf2ABOR\r\n",
    b"\xff\xf4\xff\xf2",
    b"\xff\xfb\x01",
    b"\xff\xfd\x03",
    b"\xff\xfe\x18",
    b"\xff\xff",
    b"\xff",
    b"STAT\xff\xf4\xff\xf2\r\n",
    b"\xff\xf4QUIT\r\n",
    b"NO\xffOP\r\n",
]
#: Bytes worth inserting: line ends, NUL, IAC, a lone UTF-8 lead byte, an overlong encoding.
INTERESTING = [b"\r", b"\n", b"\r\n", b"\0", b"\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b" ", b"\t"]


def _case(verb: str, how: int) -> str:
    """The verb as written: upper, lower, mixed, or with stray blanks around it."""
    return [verb, verb.lower(), verb.capitalize(), f" {verb}", f"{verb} ", verb.swapcase().title()][how]


@st.composite
def command_lines(draw: st.DrawFn) -> bytes:
    """A known verb (any case) with a typical or odd argument, and some line end."""
    verb = draw(st.sampled_from(VERBS))
    choices = ARGS.get(verb, PATHS if verb in PATH_VERBS else [""])
    arg = draw(st.one_of(st.sampled_from(choices), st.text(max_size=12)))
    sep = draw(st.sampled_from([" ", " ", " ", "  ", "\t", ""])) if arg else ""
    written = _case(verb, draw(st.integers(0, 5)))
    return f"{written}{sep}{arg}".encode(errors="surrogatepass") + draw(st.sampled_from(LINE_ENDS))


def active_lines(sink_port: int) -> st.SearchStrategy[bytes]:
    """PORT/EPRT lines: towards the sink, or refused (foreign address, privileged port, garbage).

    Never mutated: a flipped digit could point the gateway at someone else's port. The sink
    port's low byte is one digit, so no prefix of a sink line names another port.
    """
    p1, p2 = divmod(sink_port, 256)
    port_args = [
        f"127,0,0,1,{p1},{p2}",
        "127,0,0,2,160,1",
        "10,0,0,1,160,1",
        "127,0,0,1,0,21",
        "127,0,0,1,0,0",
        "1,2,3",
        "a,b,c,d,e,f",
        "127,0,0,1,256,1",
        "999,0,0,1,1,1",
        "",
        "127.0.0.1.160.1",
        ",,,,,",
    ]
    eprt_args = [
        f"|1|127.0.0.1|{sink_port}|",
        f"!1!127.0.0.1!{sink_port}!",
        f"|2|::1|{sink_port}|",
        "|3|x|1|",
        "||||",
        "|1|10.0.0.1|2000|",
        "|1|127.0.0.1|21|",
        "|1|127.0.0.1|99999|",
        "|",
        "|1|x|y|",
        "",
    ]
    lines = [f"PORT {a}" for a in port_args] + [f"EPRT {a}" for a in eprt_args] + ["PORT", "EPRT"]
    return st.sampled_from([line.encode() + b"\r\n" for line in lines])


def overlong_lines() -> st.SearchStrategy[bytes]:
    """Lines around and far above the 2048-byte limit, with or without a line end."""
    sizes = [2030, 2044, 2046, 2047, 2048, 2049, 2100, 4097, 6200, 9000]
    return st.builds(
        lambda verb, n, tail, end: verb + b"A" * n + tail + end,
        st.sampled_from([b"NOOP ", b"MKD ", b"", b"STAT "]),
        st.sampled_from(sizes),
        st.sampled_from([b"", b" MKD smuggled", b"\r\nMKD smuggled2"]),
        st.sampled_from([b"\r\n", b"", b"\n"]),
    )


@dataclass
class Segment:
    """One piece of a payload; ``fixed`` ones are never mutated."""

    data: bytes
    fixed: bool = False


@dataclass
class Payload:
    """What one example sends after the greeting (and the login, when ``logged_in``)."""

    logged_in: bool
    segments: list[Segment]
    trickle: bool  # one send() per segment instead of one for all
    urgent: int  # index of a segment sent with MSG_OOB, or -1
    mutations: list[str] = field(default_factory=list)

    def wire(self) -> bytes:
        """Every byte of the payload, in order."""
        return b"".join(s.data for s in self.segments)

    def __repr__(self) -> str:
        return (
            f"Payload(logged_in={self.logged_in}, trickle={self.trickle}, urgent={self.urgent}, "
            f"mutations={self.mutations}, wire={self.wire()!r})"
        )


def _mutate(draw: st.DrawFn, segments: list[Segment]) -> str | None:
    """Apply one random mutation to the mutable segments; a description, or None if none applied."""
    mutable = [i for i, s in enumerate(segments) if not s.fixed and s.data]
    if not mutable:
        return None
    i = draw(st.sampled_from(mutable))
    data = segments[i].data
    pos = draw(st.integers(0, len(data) - 1))
    op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice", "duplicate"]))
    if op == "flip":
        new = data[:pos] + bytes([data[pos] ^ draw(st.integers(1, 255))]) + data[pos + 1 :]
    elif op == "truncate":
        new = data[:pos]
    elif op == "insert":
        new = data[:pos] + draw(st.sampled_from(INTERESTING)) + data[pos:]
    elif op == "delete":
        new = data[:pos] + data[pos + 1 :]
    elif op == "splice":
        other = segments[draw(st.sampled_from(mutable))].data
        new = data[:pos] + other[draw(st.integers(0, len(other) - 1)) :]
    else:
        segments.insert(i, Segment(data))
        return f"duplicate {i}"
    segments[i] = Segment(new)
    return f"{op} {i}@{pos}"


@st.composite
def payloads(draw: st.DrawFn, sink_port: int) -> Payload:
    """Some grammar lines and raw pieces, then up to four mutations of them."""
    piece = st.one_of(
        command_lines().map(Segment),
        command_lines().map(Segment),
        command_lines().map(Segment),
        active_lines(sink_port).map(lambda b: Segment(b, fixed=True)),
        st.sampled_from(TELNET).map(Segment),
        overlong_lines().map(Segment),
        st.binary(min_size=1, max_size=40).map(Segment),
        st.sampled_from(INTERESTING).map(Segment),
    )
    segments = draw(st.lists(piece, min_size=1, max_size=8))
    mutations = [m for _ in range(draw(st.integers(0, 4))) if (m := _mutate(draw, segments))]
    urgent = draw(st.integers(-1, len(segments) - 1)) if draw(st.integers(0, 9)) == 0 else -1
    return Payload(draw(st.booleans()), segments, draw(st.booleans()), urgent, mutations)


# --- reading and checking replies


class ProtocolViolation(AssertionError):
    """The gateway broke an invariant of the control channel."""


@dataclass
class Replies:
    """The reply stream of one control connection, checked line by line as it arrives."""

    sock: socket.socket
    raw: bytearray = field(default_factory=bytearray)
    lines: list[bytes] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)  # of the complete replies, in order
    closed: bool = False
    _buffer: bytes = b""
    _open: bytes | None = None  # the code of a multi-line reply under way

    def _check(self, line: bytes) -> None:
        """One line (without its CRLF) against RFC 959 and the printable-text rule."""
        self.lines.append(line)
        if b"\r" in line or b"\n" in line or b"\0" in line:
            raise ProtocolViolation(f"CR, LF or NUL inside a reply line: {line!r}")
        # Names are bytes: a reply may echo bytes that are not UTF-8 (a Latin-1 name), as they
        # came; never a control character, as text (C0, DEL, C1, line separators).
        if not is_name_text(line.decode("utf-8", "surrogateescape")):
            raise ProtocolViolation(f"control character in a reply line: {line!r}")
        if self._open is None:
            match = REPLY_START.match(line)
            if match is None:
                raise ProtocolViolation(f"reply line without a 1xx-5xx code: {line!r}")
            if match.group(2) == b"-":
                self._open = match.group(1)
            else:
                self.codes.append(int(match.group(1)))
        elif line.startswith(self._open + b" "):
            self.codes.append(int(self._open))
            self._open = None
        elif DIGITS_START.match(line) and not line.startswith(self._open + b"-"):
            raise ProtocolViolation(f"unpadded code-like line inside a {self._open!r} reply: {line!r}")

    def _feed(self, data: bytes) -> None:
        self.raw += data
        self._buffer += data
        while (end := self._buffer.find(b"\r\n")) >= 0:
            line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            self._check(line)
        if b"\n" in self._buffer or b"\0" in self._buffer:
            raise ProtocolViolation(f"bare LF or NUL in a reply: {self._buffer!r}")
        if b"\r" in self._buffer[:-1]:
            raise ProtocolViolation(f"bare CR in a reply: {self._buffer!r}")

    def read_until(self, done: bytes | None, deadline: float) -> None:
        """Read until a line equal to ``done`` (None: one more complete reply), EOF or ``deadline``."""
        start = len(self.codes)
        while not self.closed:
            if done is None and len(self.codes) > start:
                return
            if done is not None and done in self.lines:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProtocolViolation(f"no answer within {EXAMPLE_TIMEOUT} s; got {bytes(self.raw)!r}")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                self._closed_by_server()
            else:
                self._feed(data)

    def _closed_by_server(self) -> None:
        """EOF: allowed only at a reply boundary, after a 421 or a 221."""
        self.closed = True
        if self._buffer or self._open is not None:
            raise ProtocolViolation(f"connection closed inside a reply: {bytes(self.raw)!r}")
        if not self.codes or self.codes[-1] not in (421, 221):
            last = self.lines[-1] if self.lines else b"nothing"
            raise ProtocolViolation(f"connection closed after {last!r}, not after a 421 or 221")


# --- the gateway process and what it holds


def counts(pid: int) -> tuple[int, int]:
    """(threads, open file descriptors) of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def settled_counts(pid: int, quiet: float = 1.0, timeout: float = SETTLE_TIMEOUT) -> tuple[int, int]:
    """The counts once they stayed the same for ``quiet`` seconds (or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    last, since = counts(pid), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.1)
        now = counts(pid)
        if now != last:
            last, since = now, time.monotonic()
    return last


class Sink:
    """Where valid PORT/EPRT lines point: accepts data connections, reads them, closes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        for port in range(172 * 256 + 2, 60000, 256):  # low byte 2: see active_lines
            try:
                self.sock.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        assert self.port % 256 < 10
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    @staticmethod
    def _drain(conn: socket.socket) -> None:
        conn.settimeout(2)
        with conn:
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        """Stop accepting (the connections being drained end by themselves)."""
        self.sock.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A data-connection sink on 127.0.0.1 for active mode."""
    s = Sink()
    yield s
    s.close()


def fuzz_config(sshd) -> dict:
    """``base_config`` without the brute-force guard (the fuzz fails logins on purpose)."""
    doc = base_config(sshd)
    doc["guard"] = {"enabled": False}
    doc["limits"].update(max_connections=512, max_connections_per_ip=512, failed_login_delay=0.05)
    doc["backends"]["main"]["pool"] = {"idle_timeout": 5}  # pooled SSH connections go soon after
    return doc


def run_session(port: int, payload: Payload) -> Replies:
    """Send one payload on a fresh control connection and check every reply line."""
    deadline = time.monotonic() + EXAMPLE_TIMEOUT
    with socket.create_connection(("127.0.0.1", port), timeout=EXAMPLE_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        replies = Replies(sock)
        replies.read_until(None, deadline)
        assert replies.codes == [220], replies.lines
        if payload.logged_in:
            for line, code in ((f"USER {USER}", 331), (f"PASS {PASSWORD}", 230)):
                sock.sendall(line.encode() + b"\r\n")
                before = len(replies.codes)
                while len(replies.codes) == before:
                    replies.read_until(None, deadline)
                    if replies.closed:
                        break
                assert replies.codes[-1] == code, replies.lines
        try:
            if payload.trickle or payload.urgent >= 0:
                for i, segment in enumerate(payload.segments):
                    sock.send(segment.data, socket.MSG_OOB) if i == payload.urgent else sock.sendall(
                        segment.data
                    )
            else:
                sock.sendall(payload.wire())
            sock.sendall(b"\r\n" + SENTINEL + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the gateway: read_until checks that it said 421 or 221 first
        replies.read_until(SENTINEL_REPLY, deadline)
    return replies


def check_payload(gw: GatewayProcess, payload: Payload) -> Replies:
    """One example: the session's invariants, then the process is still there."""
    replies = run_session(gw.port, payload)
    assert gw.proc.poll() is None, f"the gateway exited with {gw.proc.returncode}"
    return replies


@pytest.fixture
def gateway(process, sshd, user) -> GatewayProcess:
    """The gateway as a process, with one login done (its backend connection pool warmed up)."""
    gw = process(fuzz_config(sshd))
    warm = Payload(True, [Segment(b"PWD\r\n")], False, -1)
    replies = check_payload(gw, warm)
    assert replies.codes[-3:] == [257, 500, 500], replies.lines  # PWD, the empty line, the sentinel
    return gw


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)


def test_random_command_lines_get_well_formed_replies_and_leak_nothing(gateway, sink):
    pid = gateway.proc.pid
    baseline = settled_counts(pid)

    @FUZZ_SETTINGS
    @given(payload=payloads(sink.port))
    def fuzz(payload: Payload) -> None:
        check_payload(gateway, payload)

    fuzz()
    assert gateway.proc.poll() is None

    def settled() -> bool:
        return all(now <= base for now, base in zip(counts(pid), baseline, strict=True))

    assert wait_for(settled, timeout=SETTLE_TIMEOUT), (
        f"(threads, fds) of the gateway: {counts(pid)} {SETTLE_TIMEOUT} s after the run, {baseline} before"
    )
