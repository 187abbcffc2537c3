"""The FTP control and data channel handlers: pyftpdlib subclasses that speak for the gateway.

What they change in pyftpdlib: gateway errors become the reply they carry (pyftpdlib would
answer 550 for everything or drop the session), listings are built from READDIR attributes
by ``gateway.listing``, uploads are acknowledged with 226 only after the backend closed the
file, a lost backend connection is replaced for the session's next command (a backend that
refuses it ends the session with 421 instead of leaving it half-alive), and no reply echoes
a control character.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import itertools
import logging
import posixpath
import re
import secrets
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pyftpdlib.handlers import DTPHandler, FTPHandler
from pyftpdlib.handlers.ftp.dispatchers import ActiveDTP, PassiveDTP
from pyftpdlib.log import logger as ftplog

from gateway import checksums, listing, logs, modes, names, paths, proxy_protocol
from gateway.config import Network
from gateway.errors import BadName, Banned, GatewayError, NoPassivePort, NotFound, Retired
from gateway.ftp import compat
from gateway.ftp.authorizer import SessionAuthorizer
from gateway.ftp.filesystem import GatewayFS
from gateway.ftp.proxy import NoHeader, read_header
from gateway.guard import Guard
from gateway.metrics import Metrics
from gateway.storage import Authenticate, Entry, Kind, Login, Passthrough, Storage
from gateway.usage.session import FILE_TRANSFERS, Record, SessionUsage

log = logging.getLogger("gateway.ftp")

#: Commands whose argument may start with ls-style options that clients send (``LIST -la``,
#: ``NLST -1``): the options are dropped, what follows is the path.
_LS_COMMANDS = ("LIST", "NLST", "STAT")
#: Commands that cancel a transfer announced with 150 whose data connection never came
#: (pyftpdlib would otherwise keep it queued and run it on the *next* data connection).
_CANCELS_QUEUED_TRANSFER = frozenset(
    {
        *("ABOR", "REIN", "USER"),
        *("PASV", "EPSV", "PORT", "EPRT"),
        *("RETR", "STOR", "STOU", "APPE", "LIST", "NLST", "MLSD"),
    }
)


#: Telnet commands at the start of a line (RFC 854): IAC followed by a command byte, or by
#: WILL/WONT/DO/DONT and an option byte.
_TELNET_COMMANDS = re.compile(rb"^(?:\xff[\xfb-\xfe][\x00-\xff]|\xff[\xf0-\xfa])+")

#: A time argument: YYYYMMDDhhmm[ss] (UTC).
_TIMESTAMP = re.compile(r"\d{12}(\d\d)?")

#: Commands that create a name from their argument's last component (STOU: a prefix).
_CREATES_NAME = frozenset({"STOR", "APPE", "STOU", "MKD", "XMKD", "RNTO"})


def _governing_verb(cmd: str, arg: str) -> str:
    """The verb a route's ``permissions.commands`` must allow for ``cmd arg``.

    STAT with a path lists it on the control channel (RFC 959): the same information as
    LIST, so it takes LIST's permission; plain STAT (the server's status) is always allowed.
    """
    return "LIST" if cmd == "STAT" and ls_options(arg)[1] else cmd


#: pyftpdlib's limit on a command line (longer ones get "500 Command too long.").
_LINE_LIMIT = 2048
#: Verbs a route's `permissions.commands` list cannot take away (session plumbing).
_ALWAYS_ALLOWED = frozenset(
    {
        "USER",
        "PASS",
        "QUIT",
        "NOOP",
        "FEAT",
        "SYST",
        "TYPE",
        "PASV",
        "EPSV",
        "PORT",
        "EPRT",
        "PWD",
        "XPWD",
        "OPTS",
        "REIN",
        "ABOR",
        "STAT",
        "HELP",
        "AUTH",
        "PBSZ",
        "PROT",
        "MODE",
        "STRU",
        "CLNT",
        "CSID",
    }
)

#: Overlong command lines tolerated per session before 421 (a line of 6 KiB already is three).
MAX_LONG_LINES = 3

#: STAT <dir> sends its listing over the control channel; longer listings are cut here.
STAT_MAX_LINES = 1000


class _LineProducer:
    """pyftpdlib producer joining encoded lines into ~64 KiB chunks (b"" when done)."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines

    def more(self) -> bytes:
        chunk = bytearray()
        for line in self._lines:
            chunk += line
            if len(chunk) >= 65536:
                break
        return bytes(chunk)


def ls_options(arg: str) -> tuple[frozenset[str], str]:
    """(option letters, path) of a LIST/NLST/STAT argument: ``-la`` style words first, as ls takes them.

    The path is the rest as the client sent it: blanks at its ends may be part of a name.
    """
    letters: set[str] = set()
    rest = arg
    while len(rest) > 1 and rest[0] == "-":
        word, _, after = rest.partition(" ")
        if not word[1:].isalnum():
            break
        letters.update(word[1:])
        rest = after
    return frozenset(letters), rest if rest.strip() else ""


def _nlst_prefix(directory: str) -> str:
    """What NLST puts before each name listed from ``directory`` (as the client named it)."""
    return directory.rstrip("/") + "/" if directory else ""


class _CountedDataConnection:
    """Counts one data connection attempt in ``ftpgw_data_connections_total``, exactly once."""

    cmd_channel: GatewayHandler
    _mode = ""
    _counted = True  # until the subclass has set itself up

    def _count(self, result: str) -> None:
        if not self._counted:
            self._counted = True
            if self.cmd_channel.metrics is not None:
                self.cmd_channel.metrics.data_connections.labels(self._mode, result).inc()


class GatewayPassiveDTP(_CountedDataConnection, PassiveDTP):  # type: ignore[misc]
    """Passive listener that stays inside ``passive_ports`` and is counted.

    When every port of the range is taken, pyftpdlib binds a random kernel-chosen port
    outside it, which the firewall in front of the gateway then blocks (and which, with
    several workers, is outside the worker's slice): refuse with 425 instead.
    """

    _range_tried = False
    _listening = False

    def __init__(self, cmd_channel: GatewayHandler, extmode: bool = False) -> None:
        super().__init__(cmd_channel, extmode)
        self._mode, self._counted = ("epsv" if extmode else "pasv"), False
        if cmd_channel.metrics is not None and not self._closed:
            cmd_channel.metrics.passive_ports_in_use.inc()
            self._listening = True

    def bind(self, addr: tuple[str, int]) -> None:
        if addr[1] != 0:
            self._range_tried = True
        elif self._range_tried:
            self.close()
            raise NoPassivePort()
        super().bind(addr)
        if addr[1] == 0:
            return
        # pyftpdlib binds with SO_REUSEADDR (passive ports sit in TIME_WAIT after each
        # transfer), which lets two sessions bind the same port at once; the one that calls
        # listen() second gets EADDRINUSE, which pyftpdlib does not expect there and the
        # session was dropped. Listen right away: on EADDRINUSE, a fresh socket, and
        # pyftpdlib's loop tries the next port (its own later listen() is then a no-op).
        try:
            self.socket.listen(self.backlog or self.cmd_channel.server.backlog)
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            family = self.socket.family
            self.socket.close()
            self.del_channel()
            self.create_socket(family, socket.SOCK_STREAM)
            raise

    def handle_accepted(self, sock: Any, addr: tuple[str, int]) -> None:
        control = self.cmd_channel
        if proxy_protocol.trusted(addr[0], control.proxy_trusted):
            # Through the balancer: the client's address is in the PROXY header (blocks this
            # session's thread only, for header_timeout at most).
            try:
                header = read_header(sock, control.proxy_timeout)
            except (OSError, proxy_protocol.ProxyHeaderError) as err:
                control.log(f"data connection from {addr[0]} without a PROXY header: {err}", ftplog.warning)
                sock.close()
                return  # keep listening for the real one
            if header.source is not None:
                addr = header.source
        if control.connected and control.remote_ip != addr[0]:
            # Data theft (RFC 2577): only the control connection's address may connect. The
            # stranger is dropped without a word on the control channel: pyftpdlib would
            # send the session an unsolicited 425, which its client takes for the reply to
            # its next command, and every reply after it is one off (anyone able to reach
            # the passive ports could break every session that way). The listener stays
            # for the real client until its own timeout.
            if control.metrics is not None:
                control.metrics.data_connections.labels(self._mode, "rejected").inc()
            control.log(f"data connection from foreign address {addr[0]}:{addr[1]} dropped", ftplog.warning)
            with contextlib.suppress(OSError):
                sock.close()
            return
        if control.connected:
            self._count("ok")
        super().handle_accepted(sock, addr)
        if self._closed and control.connected and control.data_channel is None:
            # Accepted but dead on arrival (reset before its handler started): pyftpdlib
            # drops it silently, and a transfer announced with 150 would wait forever.
            control.data_connection_failed()

    def handle_timeout(self) -> None:
        self._count("timeout")
        super().handle_timeout()

    def close(self) -> None:
        self._count("unused")  # replaced by another PASV/PORT, or the session ended first
        if self._listening and self.cmd_channel.metrics is not None:
            self._listening = False
            self.cmd_channel.metrics.passive_ports_in_use.dec()
        super().close()


class GatewayActiveDTP(_CountedDataConnection, ActiveDTP):  # type: ignore[misc]
    """Active (PORT/EPRT) connector, counted."""

    def __init__(self, ip: str, port: int, cmd_channel: GatewayHandler) -> None:
        self._mode, self._counted = cmd_channel.active_command.lower(), False
        super().__init__(ip, port, cmd_channel)

    def handle_connect(self) -> None:
        super().handle_connect()  # raises if the connect failed (then handle_close counts it)
        self._count("ok")

    def handle_timeout(self) -> None:
        self._count("timeout")
        super().handle_timeout()

    def handle_close(self) -> None:
        self._count("failed")
        super().handle_close()

    def close(self) -> None:
        self._count("unused")
        super().close()


class GatewayDTPHandler(DTPHandler):  # type: ignore[misc]
    """Data channel: commit uploads before 226, map backend errors to 426/451/452/552."""

    # One OpenSSH SFTP request at most (limits@openssh.com: 255 KiB): an upload's recv()
    # chunks then go to the backend as they are, without being copied into blocks.
    ac_in_buffer_size = 255 * 1024
    ac_out_buffer_size = 256 * 1024
    transfer_finished: bool
    _had_cr: bool  # pyftpdlib: TYPE A upload, the last chunk ended with CR (held back)
    _clean_eof = False

    def use_sendfile(self) -> bool:
        return False

    # TYPE A on binary data (NUL bytes) is flagged for the usage report: the conversion of
    # line endings alters such files, and a client moving to SFTP must know it relied on it.

    def _posix_ascii_data_wrapper(self, chunk: bytes) -> bytes:
        if b"\0" in chunk:
            self.cmd_channel.binary_in_ascii()
        return super()._posix_ascii_data_wrapper(chunk)  # type: ignore[no-any-return]

    def send(self, data: bytes) -> int:
        if self.cmd == "RETR" and self.cmd_channel._current_type == "a" and b"\0" in data:
            self.cmd_channel.binary_in_ascii()
        return super().send(data)  # type: ignore[no-any-return]

    def recv(self, buffer_size: int) -> bytes:
        # pyftpdlib ends an upload the same way whether the client closed the data
        # connection cleanly or it was reset or timed out (handle_close marks the transfer
        # finished), which would commit a truncated file with 226. Here only a clean EOF
        # (recv() == b"") completes an upload; see handle_close.
        try:
            data: bytes = self.socket.recv(buffer_size)
        except OSError as err:
            if err.errno in compat.ERRNOS_RETRY:
                raise compat.RetryError from err
            if err.errno not in compat.ERRNOS_DISCONNECTED:
                raise
            data = b""
        else:
            self._clean_eof = not data
        if not data:
            self.handle_close()
        return data

    def handle_close(self) -> None:
        if self.receive and not self._closed and not self._clean_eof:
            self._resp = ("426 Data connection lost; transfer aborted.", ftplog.warning)
            self.transfer_finished = False
            self.close()
            return
        super().handle_close()

    def _fail(self, err: GatewayError) -> None:
        """End the transfer with the reply ``err`` carries; a backend gone for good ends the session."""
        control = self.cmd_channel
        if self.receive and self.file_obj is not None and not self.file_obj.closed:
            self.file_obj.abort()
        self._resp = (err.transfer_reply(self.receive), ftplog.warning)
        self.transfer_finished = False
        super().close()  # pyftpdlib: close the socket, send _resp, log the transfer
        self._drop_timers()
        if err.fatal or (control.authenticated and not control.storage.alive):
            control.backend_gone()

    def close(self) -> None:
        fobj = self.file_obj
        if not self._closed and self.receive and fobj is not None and not fobj.closed:
            if not self.transfer_finished:
                fobj.abort()
            else:
                try:
                    if self._had_cr:  # TYPE A: a CR at the very end is data, not half a CRLF
                        fobj.write(b"\r")
                    fobj.close()  # the backend confirms the whole file, or 226 is not sent
                except GatewayError as err:
                    self._fail(err)
                    return
        super().close()
        self._drop_timers()

    def _drop_timers(self) -> None:
        # pyftpdlib cancels a closed data channel's timers (three per transfer, its passive
        # listener's included) but leaves them in the scheduler until they would have
        # fired, up to limits.data_timeout (300 s) later: at hundreds of transfers a second,
        # tens of thousands of dead timers held at any time (bench/soak.py). The scheduler
        # is this session's own (one IOLoop per session thread): clearing it is cheap.
        self.ioloop.sched.reheapify()

    def handle_error(self) -> None:
        try:
            raise
        except GatewayError as err:
            self._fail(err)
        except Exception:
            super().handle_error()


class GatewayHandler(FTPHandler):  # type: ignore[misc]
    """Control channel for one FTP session; the server factory subclasses it per config."""

    authenticate: Authenticate  # set by gateway.ftp.server.build_server
    metrics: Metrics | None = None  # idem
    guard: Guard | None = None  # idem
    login_grace = 30.0  # idem: seconds from connect to a successful login
    #: idem: where finished session records go (the usage store); None: not recorded.
    record_usage: Callable[[list[Record]], None] | None = None
    #: A long session hands its counts to the store this often (seconds).
    usage_every = 600.0
    #: idem: peers (load balancers) whose connections start with a PROXY protocol header.
    proxy_trusted: tuple[Network, ...] = ()
    proxy_timeout = 5.0  # idem: seconds to wait for that header
    show_dotfiles = False  # idem: listing.dotfiles is "shown"
    checksum_limits = checksums.Limits(16384 * 2**20, 2)  # idem: shared by the process's sessions
    fs: GatewayFS  # None before login (pyftpdlib checks authenticated first)
    _restart_position: int  # pyftpdlib: the REST position for the next transfer
    _in_dtp_queue: Any  # pyftpdlib: (file, cmd) of an upload waiting for its data connection
    _out_dtp_queue: Any  # pyftpdlib: (data, isproducer, file, cmd) of a download waiting
    active_command = "PORT"  # PORT or EPRT, whichever started the active connection
    _in_buffer: list[bytes]  # pyftpdlib: the command line being received
    remote_port: int  # pyftpdlib: the client's port (the balancer's until a PROXY header says)
    remote_ip: str  # pyftpdlib: the client's address (idem)
    username: str  # pyftpdlib: the name of USER (before and after login)
    password: str  # pyftpdlib: always "" here (handle_auth_success)
    attempted_logins: int  # pyftpdlib: failed logins in this session
    authenticated: bool  # pyftpdlib
    abstracted_fs = GatewayFS
    dtp_handler = GatewayDTPHandler
    passive_dtp = GatewayPassiveDTP
    active_dtp = GatewayActiveDTP
    use_sendfile = False
    permit_foreign_addresses = False
    permit_privileged_ports = False
    banner = "ftp-sftp-gateway ready."
    # CLNT (draft-ietf-ftpext-clnt) and Serv-U's CSID: the client names its software. The
    # text is only noted for the usage report; it changes nothing in the session.
    proto_cmds = {
        **FTPHandler.proto_cmds,
        "CLNT": {"perm": None, "auth": False, "arg": True, "help": "Syntax: CLNT <client name>."},
        "CSID": {"perm": None, "auth": False, "arg": True, "help": "Syntax: CSID Name=<client>; ..."},
        # lftp, FileZilla and Windows ftp.exe send OPTS UTF8 ON before logging in (vsftpd: 200).
        "OPTS": {**FTPHandler.proto_cmds["OPTS"], "auth": False},
        # Checksums (draft-bryan-ftpext-hash, ProFTPD's mod_digest): HASH takes a path; the
        # X-commands a path and an optional byte range, checked by the handler.
        "HASH": {"perm": "r", "auth": True, "arg": True, "help": "Syntax: HASH <path>."},
        **{
            verb: {"perm": None, "auth": True, "arg": True, "help": f"Syntax: {verb} <path> [<start> <end>]."}
            for verb in checksums.X_COMMANDS
        },
        # vsftpd's SITE UMASK and ProFTPD's SITE UTIME; their paths are checked by the handler.
        "SITE UMASK": {"perm": None, "auth": True, "arg": None, "help": "Syntax: SITE UMASK [<octal mask>]."},
        "SITE UTIME": {"perm": None, "auth": True, "arg": True, "help": "Syntax: SITE UTIME <time> <path>."},
    }

    # Names are bytes: a command line is decoded as UTF-8, and bytes that are not UTF-8 (a
    # Latin-1 or cp1252 name) are carried as they are (surrogateescape) to the backend and
    # back, as vsftpd does. pyftpdlib's default "replace" would map every such byte to
    # U+FFFD, so two different Latin-1 names would name the same file (silent overwrite).
    encoding = names.DEFAULT_ENCODING
    unicode_errors = names.DEFAULT_ERRORS

    def __init__(self, conn: Any, server: Any, ioloop: Any = None) -> None:
        # Set up before pyftpdlib's __init__, which may close() at once (client already gone).
        self.authorizer = SessionAuthorizer(type(self).authenticate)
        self._listing_arg = ""  # argument of the current LIST/NLST/STAT, options removed
        self._arg = ""  # the current command's argument as the client wrote it (HASH names it)
        self._ls_flags: frozenset[str] = frozenset()  # ... and its options (``-la``: a, l)
        self._ls_options = ""  # ... as the client wrote them
        self._retired: list[Login] = []  # logins replaced by REIN/USER during a transfer
        self.session_id = secrets.token_hex(4)  # in every log line of the session
        self.route = "-"  # route name once logged in, for the logs
        self._counted = False  # this session is in ftpgw_sessions_active
        self._ticker: Any = None
        self._discarding = False  # inside an overlong line, until its CRLF
        self._discarded = 0
        self._long_lines = 0
        self._connected_at = time.monotonic()
        self._unauthenticated = False  # counted in the guard's not-logged-in sessions
        self._slot = False  # holds a place in the server's session total
        self._address_slot: str | None = None  # ... and one of its client's source (its key)
        self._login_delay: Any = None  # the timer of a failed login's 530
        self._held: deque[bytes] = deque()  # lines received during that delay
        self._logged_in_once = False
        self.usage = SessionUsage("-") if self.record_usage is not None else None
        try:
            peer = conn.getpeername()[0]
        except OSError:
            peer = ""
        #: From a trusted balancer: the greeting waits for the PROXY header (see greet_proxied).
        self.proxied = proxy_protocol.trusted(peer, self.proxy_trusted)
        self._opened_logged = False
        super().__init__(conn, server, ioloop=ioloop)
        if self.usage is not None:
            self.usage.client_ip = getattr(self, "remote_ip", "-")
        self._hash = checksums.ALGORITHMS[0]  # HASH's algorithm (OPTS HASH)
        self._utf8 = False  # the client sent OPTS UTF8 ON (names.wire)
        self._name_encoding: str | None = None  # the login's routes[].name_encoding
        self._extra_feats: list[str] = [
            *self._extra_feats,
            "CLNT",  # lftp names itself when this is listed
            *(verb for verb in checksums.X_COMMANDS if verb != "XSHA"),
            self._hash_feature(),
        ]
        self._available_facts = list(listing.FACTS)
        self._current_facts = ["type", "size", "modify", "perm", "unix.mode"]

    @property
    def secure(self) -> bool:
        """True once the control channel is TLS-protected (never, without FTPS)."""
        return False

    @property
    def storage(self) -> Storage:
        """The backend session of the logged-in user."""
        return self.authorizer.storage()

    # --- command dispatch and error mapping

    def collect_incoming_data(self, data: bytes) -> None:
        if self._discarding:
            # Still inside an overlong line: every further 2048 bytes count as another one.
            self._discarded += len(data)
            while self._discarded > _LINE_LIMIT and not self._closing:
                self._discarded -= _LINE_LIMIT
                self._overlong_line()
            return
        super().collect_incoming_data(data)
        if data and self._in_buffer_len == 0:  # pyftpdlib answered "500 Command too long." and reset
            # The rest of that line must not become a command of its own (its tail would be
            # executed: a smuggling vector), and repeated abuse ends the session.
            self._discarding, self._discarded = True, 0
            self._overlong_line()

    def _overlong_line(self) -> None:
        self._long_lines += 1
        if self._long_lines >= MAX_LONG_LINES and not self._closing:
            self.respond("421 Too many overlong command lines, closing control connection.")
            self.close_when_done()

    def respond(self, resp: str, logfun: Any = ftplog.debug) -> None:
        # Whatever a reply echoes from the client (an unknown verb such as "ACCT\tX", a
        # path) leaves as printable text: no control character reaches the client's screen
        # or log (terminal escapes, CR/LF injection: bpo-30119). The CRLFs between the
        # lines of a multi-line reply are the server's own and stay.
        if not resp.isprintable():
            resp = "\r\n".join(listing.wire_text(line) for line in resp.split("\r\n"))
        super().respond(resp, logfun)

    def push(self, data: str) -> None:
        # Raw bytes of non-UTF-8 names go out as the bytes they came in as (surrogateescape).
        super(FTPHandler, self).push(data.encode(self.encoding, self.unicode_errors))

    def found_terminator(self) -> None:
        logs.bind_session(self._log_fields)  # this thread serves this session only
        if self._discarding:  # the end of an overlong line (see collect_incoming_data)
            self._discarding = False
            self._in_buffer, self._in_buffer_len = [], 0
            return
        if self._login_delay is not None:  # a failed login's 530 is due first (handle_auth_failed)
            self._held.append(b"".join(self._in_buffer))
            self._in_buffer, self._in_buffer_len = [], 0
            return
        line = b"".join(self._in_buffer)
        if line[:1] == b"\xff":
            # RFC 959 4.1.3: a client interrupting a transfer (Ctrl-C in BSD-style clients)
            # sends Telnet IAC IP, then IAC DM as urgent data (read inline: SO_OOBINLINE),
            # then ABOR. The Telnet commands are signals, not part of the command: dropped,
            # so the ABOR is acted on at once. Only before the verb: a name may hold 0xFF.
            self._in_buffer = [_TELNET_COMMANDS.sub(b"", line)]
        super().found_terminator()

    def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
        if self.fs is not None:
            self.fs.forget()
        cmd, arg = self._set_mtime_alias(cmd, arg)
        if cmd != "QUIT" and self._end_if_draining():
            return
        try:
            paths.check_argument(line)
            if self.authenticated and not self.storage.alive:
                self.backend_gone()
                return
            login = self.authorizer.login
            if (
                login is not None
                and login.commands is not None
                and _governing_verb(cmd, arg) not in login.commands | _ALWAYS_ALLOWED
            ):
                self.respond(f"550 {cmd} is not allowed for this account.")
                self.log_cmd(cmd, arg, 550, "not allowed on this route")
                return
            name = posixpath.basename(arg.rstrip("/")) if cmd in _CREATES_NAME else ""
            if name and not listing.is_safe_name(name):
                # A name the listings would hide (a control character in it): creating it
                # would give the user files nobody sees in LIST, NLST or MLSD.
                raise BadName("File name not allowed: control characters are refused.")
            if cmd in _CANCELS_QUEUED_TRANSFER:
                self._drop_queued_transfer()
            self._ls_flags = frozenset()
            if cmd in _LS_COMMANDS:
                options = arg
                self._ls_flags, arg = ls_options(arg)
                self._listing_arg = arg
                self._ls_options = options[: len(options) - len(arg)].strip() if arg else options.strip()
            if cmd == "SITE" and self._relay_site(arg):
                return
            self._arg = arg
            super().pre_process_command(line, cmd, arg)
        except GatewayError as err:
            if not err.fatal and self.authenticated and not self.storage.alive:
                # The error left the session without a backend (a legacy FTP connection
                # lost): 421 now rather than this error and a 421 at the next command.
                self.log_cmd(cmd, arg, err.code, err.text)
                self.backend_gone()
                return
            self.respond(err.reply(), logfun=ftplog.warning if err.fatal else ftplog.debug)
            self.log_cmd(cmd, arg, err.code, err.text)
            if err.fatal:
                self.close_when_done()

    # --- vsftpd's and ProFTPD's SITE commands and time setting

    def ftp_SITE_UMASK(self, line: str) -> None:
        """SITE UMASK [mask]: the bits later uploads and MKDs of this session leave out (vsftpd)."""
        if not line:
            self.respond(f"200 Your current UMASK is 0{self.fs.umask or 0:o}.")
            return
        try:
            self.fs.umask = modes.parse_octal(line.strip(), 0o777)
        except ValueError:
            self.respond("501 SITE UMASK needs an octal mask such as 022.")
            return
        self.respond(f"200 UMASK set to 0{self.fs.umask:o}.")

    def ftp_SITE_CHMOD(self, path: str, mode: str) -> tuple[str, int] | None:
        """SITE CHMOD octal or symbolic (``u+x``, ``go-w``, as ProFTPD and chmod(1))."""
        try:
            bits = modes.apply(mode, self.fs.attrs(path).mode, self.fs.isdir(path))
        except ValueError:
            self.respond("501 SITE CHMOD needs an octal (755) or symbolic (u+x) mode.")
            return None
        self.fs.chmod(path, bits)
        self.respond("200 SITE CHMOD command successful.")
        return path, bits

    def ftp_SITE_UTIME(self, line: str) -> str | None:
        """SITE UTIME as ProFTPD takes it: ``TIME PATH``, or ``PATH ATIME MTIME CTIME UTC`` (sets MTIME)."""
        words = line.split(" ")
        five = len(words) >= 5 and words[-1].upper() == "UTC"
        if five and all(_TIMESTAMP.fullmatch(w) for w in words[-4:-1]):
            stamp, name = words[-3], " ".join(words[:-4])
        elif len(words) >= 2 and _TIMESTAMP.fullmatch(words[0]):
            stamp, name = words[0], " ".join(words[1:])
        else:
            self.respond("501 Syntax: SITE UTIME YYYYMMDDhhmm[ss] path (or path atime mtime ctime UTC).")
            return None
        path = self.fs.ftp2fs(name)
        if not self.authorizer.has_perm(self.username, "T", path):
            self.respond("550 Not enough privileges.")
            return None
        when = calendar.timegm(time.strptime(stamp.ljust(14, "0"), "%Y%m%d%H%M%S"))
        self.fs.utime(path, when)
        self.respond("200 SITE UTIME command successful.")
        return path

    # --- checksums (gateway.checksums): replies as ProFTPD's mod_digest gives them

    def _hash_feature(self) -> str:
        """FEAT's HASH line, the selected algorithm starred."""
        return "HASH " + ";".join(a + ("*" if a == self._hash else "") for a in checksums.ALGORITHMS)

    def ftp_OPTS(self, line: str) -> None:
        """OPTS HASH [algorithm] selects (or names) HASH's algorithm; OPTS UTF8 is noted for
        names.wire; other options as pyftpdlib."""
        option, _, value = line.strip().partition(" ")
        if option.upper() in ("UTF8", "UTF-8"):
            self._utf8 = value.strip().upper() != "OFF"
            if self._name_encoding is not None:  # FileZilla announces UTF-8 after logging in
                self.encoding, self.unicode_errors = names.wire(self._name_encoding, self._utf8)
        if option.upper() != "HASH":
            super().ftp_OPTS(line)
            return
        if value:
            chosen = value.strip().upper()
            if chosen not in checksums.ALGORITHMS:
                self.respond(f"501 {value.strip()}: Unsupported algorithm.")
                return
            self._extra_feats.remove(self._hash_feature())
            self._hash = chosen
            self._extra_feats.append(self._hash_feature())
        self.respond(f"200 {self._hash}")

    def ftp_STOR(self, file: str, mode: str = "w") -> str | None:
        """STOR (and APPE): a REST position past what there is to resume gets 554 before
        anything is opened. pyftpdlib checks it after opening and then closes the file,
        which for an upload means storing it: an empty resume would cut the file there."""
        rest = self._restart_position
        if rest:
            with contextlib.suppress(GatewayError):  # no such file: STOR's own error
                if rest > (size := self.fs.resume_size(file)):
                    self._restart_position = 0
                    self.respond(f"554 REST position ({rest}) > file size ({size})")
                    return None
        return super().ftp_STOR(file, mode)  # type: ignore[no-any-return]

    def ftp_SIZE(self, path: str) -> str | None:
        """SIZE: while this user has a cut upload of the file kept, its size (what a resume
        continues: curl -C -, lftp put -c); else the file's (RFC 3659)."""
        self.fs.told.pop(path, None)
        if self._current_type != "a" and (kept := self.fs.partial_size(path)) is not None:
            self.fs.told[path] = kept  # an APPE continues the partial at this size only
            self.respond(f"213 {kept}")
            return path
        return super().ftp_SIZE(path)  # type: ignore[no-any-return]

    def ftp_HASH(self, path: str) -> str | None:
        """HASH: the selected algorithm over the whole file (213 ALGO 0-SIZE HEX PATH, the
        path as the client gave it, as ProFTPD)."""
        digest = self._checksum(path, self._hash)
        size = self.fs.attrs(path).size
        self.push(f"213-Computing {self._hash} digest\r\n")
        self.respond(f"213 {self._hash} 0-{size} {digest} {self._arg}")
        return path

    def _x_checksum(self, line: str, algorithm: str) -> str | None:
        """XSHA256/XSHA512/XSHA1/XMD5/XCRC <path> [<start> <end>]: 250 and the digest in upper case."""
        words = line.split(" ")
        start, end = 0, None
        if len(words) >= 3 and words[-1].isdigit() and words[-2].isdigit():
            start, end, words = int(words[-2]), int(words[-1]), words[:-2]
        path = self.fs.ftp2fs(" ".join(words))
        if not self.authorizer.has_perm(self.username, "r", path):
            self.respond("550 Not enough privileges.")
            return None
        digest = self._checksum(path, algorithm, start, end, not_a_file=550)
        self.push(f"250-Computing {algorithm.replace('-', '')} digest\r\n")  # ProFTPD: "SHA256"
        self.respond(f"250 {digest.upper()}")
        return path

    def _checksum(
        self, path: str, algorithm: str, start: int = 0, end: int | None = None, not_a_file: int = 553
    ) -> str:
        result = "ok"
        try:
            return self.checksum_limits.compute(self.storage, path, algorithm, start, end)
        except checksums.NotAFile as err:
            result = "not_a_file"
            raise checksums.NotAFile(code=not_a_file) from err
        except checksums.Busy:
            result = "busy"
            raise
        except checksums.TooBig:
            result = "too_big"
            raise
        except GatewayError:
            result = "failed"
            raise
        finally:
            if self.metrics is not None:
                self.metrics.checksums.labels(algorithm, result).inc()

    def _set_mtime_alias(self, cmd: str, arg: str) -> tuple[str, str]:
        """vsftpd's ``MDTM YYYYMMDDhhmmss path`` sets the time: it is MFMT (and governed as MFMT)."""
        stamp, _, name = arg.partition(" ")
        if cmd == "MDTM" and name and _TIMESTAMP.fullmatch(stamp) and len(stamp) == 14:
            return "MFMT", arg
        return cmd, arg

    def ftp_CLNT(self, line: str) -> None:
        """CLNT: the client's name for itself (kept for the usage report)."""
        self.respond("200 Noted.")

    def ftp_CSID(self, line: str) -> None:
        """CSID: as CLNT, in Serv-U's form; the gateway has no identity to offer back."""
        self.respond("200 Noted.")

    def ftp_TYPE(self, line: str) -> None:
        """TYPE A, A N, A T (ASCII; N and T are the RFC 959 format controls), I and L 8."""
        words = line.upper().split()
        if words in (["A"], ["A", "N"], ["A", "T"]):
            self._current_type = "a"
            self.respond("200 Switching to ASCII mode.")
        elif words in (["I"], ["L", "8"]):
            self._current_type = "i"
            self.respond("200 Switching to Binary mode.")
        else:
            self.respond(f"504 TYPE {' '.join(words)} not implemented.")

    def ftp_EPSV(self, line: str) -> None:
        """EPSV; ``EPSV ALL`` answers 200 (RFC 2428 4) and refuses other data commands from then on."""
        if line.strip().upper() == "ALL":
            self._epsvall = True
            self.respond("200 EPSV ALL ok.")
            return
        super().ftp_EPSV(line)

    def ftp_REIN(self, line: str) -> None:
        """REIN: log out, keep the connection (RFC 959: 220, as after connecting)."""
        self.flush_account()
        self.respond("220 Ready for new user.")

    def ftp_PORT(self, line: str) -> None:
        self.active_command = "PORT"
        super().ftp_PORT(line)

    def ftp_EPRT(self, line: str) -> None:
        self.active_command = "EPRT"
        super().ftp_EPRT(line)

    # --- graceful shutdown: the server's `draining` event is set on SIGTERM

    def add_channel(self, map: Any = None, events: Any = None) -> None:
        if getattr(self, "_closed", False):
            return  # refused in on_connect and already closed: nothing for the thread to serve
        super().add_channel(map, events)
        server = getattr(self, "server", None)
        # pyftpdlib registers the channel twice: on the acceptor's loop, then on the
        # session thread's own loop; the check must run on the latter.
        if server is not None and self.ioloop is not server.ioloop and self._ticker is None:
            self._ticker = self.ioloop.call_every(1.0, self._tick, _errback=self.handle_error)
            if self.proxied:
                self.greet_proxied()

    def greet_proxied(self) -> None:
        """Read the balancer's PROXY header, then run the per-address checks and greet.

        On the session's own thread (GatewayFTPServer.handle_accepted skipped these steps):
        every check keyed on the client's address (max_connections_per_ip, the guard's bans
        and counts, route networks, the data-connection address check) must see the client,
        not the balancer that all connections come from.
        """
        try:
            header = read_header(self.socket, self.proxy_timeout)
        except (OSError, proxy_protocol.ProxyHeaderError) as err:
            quiet = isinstance(err, NoHeader)  # a balancer's plain TCP health check
            self.log(f"no valid PROXY header: {err}", ftplog.debug if quiet else ftplog.warning)
            self.close()
            return
        balancer = f"{self.remote_ip}:{self.remote_port}"
        if header.source is not None:
            self.remote_ip, self.remote_port = header.source
            if self.usage is not None:
                self.usage.client_ip = self.remote_ip
        self._opened_logged = True
        self.log(
            f"FTP session opened (connect) through {balancer}: "
            f"client address from a PROXY v{header.version} header"
        )
        if not self.take_address_slot():
            return
        try:
            self.handle()
        except Exception:
            self.handle_error()

    def _tick(self) -> None:
        """Every second on the session's thread: the login grace time, the not-logged-in
        caps, then a drain."""
        waited = time.monotonic() - self._connected_at
        if not self.authenticated and waited > self.login_grace:
            # Slowloris before login: the grace time runs from connect and no command
            # (NOOP included) extends it, unlike pyftpdlib's idle timeout.
            if not self._closed and not self._closing:
                self.respond("421 Login timeout, closing control connection.", logfun=ftplog.info)
                self.close_when_done()
            return
        if (
            self.guard is not None
            and not self.authenticated
            and not self._unauthenticated
            and not self._closing
            and waited >= self.guard.cfg.count_waiting_after
        ):
            self._count_waiting()
        if self.usage is not None and self.usage.due(self.usage_every):
            self._record_usage()
        self._end_if_draining()

    def _transfer_pending(self) -> bool:
        return (
            self.data_channel is not None or self._in_dtp_queue is not None or self._out_dtp_queue is not None
        )

    def _end_if_draining(self) -> bool:
        """421 and close if the server is shutting down and no transfer is running or queued."""
        if self._closed or not self.server.draining.is_set() or self._transfer_pending():
            return False
        # RFC 959 4.2: 421 may answer any command when the service has to shut down.
        self.respond("421 Server shutting down, closing control connection.", logfun=ftplog.info)
        self.close_when_done()
        return True

    def backend_gone(self) -> None:
        """The backend connection died: tell the client (421) and end the session."""
        if self._closed:
            return
        self.respond("421 Backend connection lost, closing control connection.", logfun=ftplog.warning)
        self.close_when_done()

    # --- session limits (gateway.ftp.server.SessionSlots)

    def take_slot(self) -> bool:
        """Take this session's place in the server's total; False if none is left."""
        self._slot = self.server.slots.enter()
        return self._slot

    def take_address_slot(self) -> bool:
        """Take a place among its client address's sessions, else 421 and close (False)."""
        self._address_slot = self.server.slots.enter_address(self.remote_ip)
        if self._address_slot is None:
            self.handle_max_cons_per_ip()
            return False
        return True

    def _release_slots(self) -> None:
        if self._slot:
            self._slot = False
            self.server.slots.leave()
        if self._address_slot is not None:
            self.server.slots.leave_address(self._address_slot)
            self._address_slot = None

    # --- login

    def handle_auth_success(self, home: str, password: str, msg_login: str) -> None:
        login = self.authorizer.login
        if login is not None:
            self.route = login.route_name
            if self.usage is not None:
                self.usage.logged_in(
                    self.username, login.route_name, login.phase, login.backend_name, self.secure
                )
            if self.metrics is not None:
                self.metrics.phase_login(login.phase, self.secure, self.username)
        # As pyftpdlib's, but the password is not kept (it already went to the backend) and
        # the name is escaped in the log line.
        if len(msg_login) <= 75:
            self.respond(f"230 {msg_login}")
        else:
            self.push(f"230-{msg_login}\r\n")
            self.respond("230 ")
        self.log(f"USER {logs.quote(self.username)} logged in.")
        self.authenticated, self.password, self.attempted_logins = True, "", 0
        if login is not None and login.name_encoding:
            # routes[].name_encoding: names on the wire are in the clients' codec from now on
            # (UTF-8 for a client that announced it).
            self._name_encoding = login.name_encoding
            self.encoding, self.unicode_errors = names.wire(login.name_encoding, self._utf8)
        self.fs = self.abstracted_fs(home, self)
        if login is not None and login.home:  # the route's login directory inside its root
            self.fs.cwd = self.fs.fs2ftp(login.home)
        self.on_login(self.username)

    def ftp_STOU(self, line: str) -> Any:
        # pyftpdlib creates the file before it checks the "w" permission: check first.
        if not self.authorizer.has_perm(self.username, "w"):
            self.respond("550 Not enough privileges.")
            return None
        return super().ftp_STOU(line)

    def login_refused(self, result: str, route: str, phase: str) -> None:
        """A login of this session was refused (``result`` as the audit line says it)."""
        if self.usage is not None:
            self.usage.refused(self.username, route, phase, result, self.secure)

    def handle_auth_failed(self, msg: str, password: str) -> None:
        refusal = self.authorizer.refusal
        if isinstance(refusal, Retired) and self.metrics is not None:  # still trying FTP after the move
            self.metrics.phase_login("retired", self.secure, self.username)
        # As pyftpdlib's: the 530 after auth_failed_timeout, the control channel unread
        # meanwhile. Unlike pyftpdlib's, lines the client pipelined behind this PASS (more
        # USER/PASS pairs in one packet) wait for that 530 (found_terminator): each attempt
        # gets its delay, its 530 and counts towards max_login_attempts. The text goes out
        # as written (pyftpdlib capitalize()s it, which would lowercase a route's notice).
        self.del_channel()
        self._login_delay = self.ioloop.call_later(
            self.auth_failed_timeout,
            self._refuse_login,
            self.username,
            msg or "Authentication failed.",
            _errback=self.handle_error,
        )
        self.username = ""

    def _refuse_login(self, username: str, text: str) -> None:
        """The end of a failed login's delay: 530, then the lines held meanwhile."""
        self._login_delay = None
        if self._closed:
            return
        self.add_channel()
        self.attempted_logins += 1
        if self.attempted_logins >= self.max_login_attempts:
            self.respond(f"530 {text} Disconnecting.")
            self.close_when_done()
        else:
            self.respond(f"530 {text}")
        self.log(f"USER {logs.quote(username)} failed login.")
        partial = self._in_buffer, self._in_buffer_len  # the start of a line not ended yet
        while self._held and self._login_delay is None and not self._closing:
            line = self._held.popleft()
            self._in_buffer, self._in_buffer_len = [line], len(line)
            self.found_terminator()
        self._in_buffer, self._in_buffer_len = partial

    def flush_account(self) -> None:
        # REIN / USER: what the old login did is its own record (a transfer still running
        # is credited to it too, unless it outlives the next login).
        self._record_usage(logout=self.data_channel is None)
        super().flush_account()
        self.fs = None  # type: ignore[assignment]
        self.encoding, self.unicode_errors = names.wire(None, self._utf8)
        self._name_encoding = None
        login = self.authorizer.detach()
        if login is not None and self.data_channel is not None:
            # RFC 959: REIN and USER let a running transfer finish; its backend session
            # is closed when the data channel is (_on_dtp_close).
            self._retired.append(login)
        elif login is not None:
            login.storage.close()

    def _on_dtp_close(self) -> None:
        if self._closed:
            # The control connection ended first, e.g. the 426 for a reset data connection
            # hit a reset control connection and closed it from inside the data channel's
            # close. pyftpdlib would now start the idle timer again, and that timer alone
            # kept the session's thread alive for idle_timeout (ghost sessions).
            self.data_channel = None
        else:
            super()._on_dtp_close()
        while self._retired:
            self._retired.pop().storage.close()

    def data_connection_failed(self) -> None:
        """425 for a transfer announced with 150 whose data connection failed (RFC 959)."""
        if self._in_dtp_queue is not None or self._out_dtp_queue is not None:
            self._drop_queued_transfer()
            self.respond("425 Can't open data connection; transfer aborted.", logfun=ftplog.warning)

    def _drop_queued_transfer(self) -> None:
        """Forget a transfer announced with 150 whose data connection never came."""
        if self._in_dtp_queue is not None:
            self._in_dtp_queue[0].abort()  # an upload that never started is not complete
            self._in_dtp_queue = None
        if self._out_dtp_queue is not None:
            queued_file = self._out_dtp_queue[2]
            if queued_file is not None:
                queued_file.close()
            self._out_dtp_queue = None

    def close(self) -> None:
        for timer in (self._ticker, self._login_delay):
            if timer is not None and not timer.cancelled:
                timer.cancel()
        self._leave_unauthenticated()
        self._release_slots()
        if not self._closed:
            self._drop_queued_transfer()
        super().close()
        self._record_usage()
        self.authorizer.logout()
        while self._retired:
            self._retired.pop().storage.close()

    # --- listings (READDIR attrs, sanitised names; see gateway.listing)

    def _entries(
        self, path: str, glob: bool = False, everything: bool = False
    ) -> tuple[bool, Iterator[Entry], str]:
        """(is_directory, entries, their directory as the client named it) for a directory, a
        file or (``glob``) a pattern.

        As vsftpd and ``ls``: names starting with "." are left out unless asked for (``-a``,
        ``everything``, a pattern starting with ".", or ``listing.dotfiles: shown``); ``-a``
        adds "." and "..". A pick-up-and-delete job (``mget *; mdelete *``) must not take
        ``.keep`` or ``.config`` along.
        """
        dotfiles = everything or "a" in self._ls_flags or self.show_dotfiles
        arg = self._listing_arg
        try:
            if self.fs.attrs(path).kind is Kind.DIR:
                entries: Iterable[Entry] = self.storage.list_dir(path)
                if not dotfiles:
                    entries = (e for e in entries if not e.name.startswith("."))
                if everything or "a" in self._ls_flags:
                    entries = itertools.chain(self._dot_entries(path), entries)
                return True, listing.sorted_if_small(entries), arg
            return (
                False,
                iter([Entry(posixpath.basename(path), self.fs.attrs(path, follow=False))]),
                posixpath.dirname(arg),
            )
        except NotFound:
            pattern = posixpath.basename(path)
            if not (glob and listing.has_glob(pattern)):
                raise
        matches = listing.glob_filter(self.storage.list_dir(posixpath.dirname(path)), pattern, dotfiles)
        # Matches are named as the client wrote the pattern's directory (``mget sub/*.csv``
        # then RETRs ``sub/a.csv``); that text passed paths.check_argument already.
        return False, listing.sorted_if_small(matches), posixpath.dirname(arg)

    def _dot_entries(self, path: str) -> list[Entry]:
        """The "." and ".." entries of directory ``path`` (".." of the root is the root)."""
        parent = posixpath.dirname(path) if self.fs.validpath(posixpath.dirname(path)) else path
        return [Entry(".", self.fs.attrs(path)), Entry("..", self.fs.attrs(parent))]

    def _listing_or_nothing(self, path: str) -> tuple[Iterator[Entry], str]:
        """Entries and directory for LIST/NLST; none for a path or pattern that matches nothing.

        vsftpd answers such a listing with 226 and no lines, and scripts rely on it (ftplib's
        ``nlst("*.csv")`` returns an empty list when no file waits): not 550.
        """
        try:
            _, entries, directory = self._entries(path, glob=True)
        except NotFound:
            return iter(()), ""
        return entries, directory

    def _push_lines(self, lines: Iterable[str], cmd: str) -> None:
        encoded = (f"{line}\r\n".encode(self.encoding, self.unicode_errors) for line in lines)
        self.push_dtp_data(_LineProducer(encoded), isproducer=True, cmd=cmd)

    # --- the legacy phases: the legacy server's own listings and SITE commands

    def _passthrough(self) -> Passthrough | None:
        """The legacy FTP session that serves this login (phases legacy, shadow), if any."""
        login = self.authorizer.login
        return login.storage if login is not None and isinstance(login.storage, Passthrough) else None

    def _relay_listing(self, verb: str) -> bool:
        """LIST/NLST in a legacy phase: the legacy server's lines as they are (True if relayed).

        Its format, owners, dotfile rules and NLST prefixes are what the user's scripts were
        written against. The client's options and path go as written (absolute paths mapped
        under the route's root), run in the client's directory there.
        """
        relay = self._passthrough()
        if relay is None:
            return False
        path = self._listing_arg
        where = self.fs.ftp2fs(path) if path.startswith("/") else path
        command = " ".join(word for word in (verb, self._ls_options, where) if word)
        lines = relay.raw_listing(command, self.fs.ftp2fs(self.fs.cwd))
        self._push_lines((line for line in lines if listing.is_name_text(line)), verb)
        return True

    def _relay_site(self, arg: str) -> bool:
        """SITE in a legacy phase: the legacy server answers (True if relayed).

        SITE CHMOD and UTIME stay the gateway's (route permissions, the shadow phase's replay);
        any other subcommand (``SITE RECFM=FB``, ``SITE UMASK``, ``SITE HELP``) is the legacy
        server's to answer. A read-only route refuses them: what they change is not known here.
        """
        relay = self._passthrough() if self.authenticated and arg else None
        sub = arg.split(" ", 1)[0].upper()
        if relay is None or sub in ("CHMOD", "UTIME"):
            return False
        login = self.authorizer.login
        if login is not None and login.read_only:
            self.respond(f"550 SITE {sub} is not allowed for this account.")
            self.log_cmd("SITE", arg, 550, "read-only route")
            return True
        code, lines = relay.site(arg)
        self.push("".join(f"{listing.wire_text(line)}\r\n" for line in lines[:-1]))
        self.respond(lines[-1])
        self.log_cmd("SITE", arg, code, lines[-1][4:])
        return True

    def ftp_LIST(self, path: str) -> str:
        """LIST: ``ls -l`` lines (bare names) for a directory, a single file or a wildcard pattern."""
        if self._relay_listing("LIST"):
            return path
        entries, _ = self._listing_or_nothing(path)
        self._push_lines(listing.list_lines(entries), "LIST")
        return path

    def ftp_NLST(self, path: str) -> str:
        """NLST: names usable as they are with RETR (``NLST sub`` gives ``sub/x.csv``); ``-l``: LIST lines."""
        if self._relay_listing("NLST"):
            return path
        entries, directory = self._listing_or_nothing(path)
        if "l" in self._ls_flags:
            self._push_lines(listing.list_lines(entries), "NLST")
        else:
            self._push_lines(listing.nlst_names(entries, _nlst_prefix(directory)), "NLST")
        return path

    def ftp_MLSD(self, path: str) -> str | None:
        """MLSD: RFC 3659 facts for each entry of a directory (501 for a non-directory)."""
        is_dir, entries, _ = self._entries(path)
        if not is_dir:
            self.respond("501 Not a directory.")
            return None
        perms = self.authorizer.get_perms(self.username)
        self._push_lines(listing.mlsd_lines(entries, perms, self._current_facts), "MLSD")
        return path

    def ftp_MLST(self, path: str) -> str:
        """MLST: facts of one path on the control channel."""
        virtual = self.fs.fs2ftp(path)
        entry = Entry(posixpath.basename(path), self.fs.attrs(path))
        facts = listing.mlsx_facts(entry, self.authorizer.get_perms(self.username), self._current_facts)
        self.push(f'250-Listing "{virtual}":\r\n {facts} {virtual}\r\n')
        self.respond("250 End MLST.")
        return path

    def ftp_STAT(self, path: str) -> str | None:
        """STAT: server status without argument, else a listing on the control channel (capped)."""
        if not path:
            return super().ftp_STAT(path)  # type: ignore[no-any-return]
        _, entries, _ = self._entries(path, everything=True)  # as vsftpd; no wildcards (pyftpdlib)
        lines = list(itertools.islice(listing.list_lines(entries), STAT_MAX_LINES + 1))
        self.push(f'213-Status of "{self.fs.fs2ftp(path)}":\r\n')
        self.push("".join(f" {line}\r\n" for line in lines[:STAT_MAX_LINES]))
        if len(lines) > STAT_MAX_LINES:
            self.push(f" (only the first {STAT_MAX_LINES} entries; use LIST for the rest)\r\n")
        self.respond("213 End of status.")
        return path

    # --- metrics (counted once each: log_cmd and log_transfer run once per command/transfer)

    def on_connect(self) -> None:
        if self.metrics is not None:
            self.metrics.sessions_active.inc()
            self._counted = True
        if self.guard is None:
            return
        # Refused before the 220 greeting, before any backend work (pyftpdlib then sends
        # no banner to a session that is closing).
        if self.guard.ban_remaining(self.remote_ip):
            self.respond(f"421 {Banned.text}", logfun=ftplog.info)
            self.close_when_done()
        # A session counts as waiting to log in once it has waited guard.count_waiting_after
        # (_tick): a batch host's 16 parallel logins, done in a moment, never count; sessions
        # that sit silent do, and beyond the caps they are closed.

    def _count_waiting(self) -> None:
        """The session has waited count_waiting_after without logging in: count it, or 421."""
        assert self.guard is not None
        if self.guard.enter_unauthenticated(self.remote_ip):
            self._unauthenticated = True
        else:
            self.respond("421 Too many sessions waiting to log in; try again later.", logfun=ftplog.warning)
            self.close_when_done()

    def on_login(self, username: str) -> None:
        self._logged_in_once = True
        self._leave_unauthenticated()

    def _leave_unauthenticated(self) -> None:
        if self._unauthenticated and self.guard is not None:
            self._unauthenticated = False
            self.guard.leave_unauthenticated(self.remote_ip)

    def on_disconnect(self) -> None:
        if self.metrics is not None and self._counted:
            self._counted = False
            self.metrics.sessions_active.dec()
            self.metrics.sessions.labels("authenticated" if self._logged_in_once else "unauthenticated").inc()

    def log_cmd(self, cmd: str, arg: str, respcode: int, respstr: str) -> None:
        if self.metrics is not None:
            self.metrics.command(cmd, respcode)
        if self.usage is not None:
            self.usage.command(cmd, arg, respcode)
            if self._closed:  # QUIT is logged after its reply closed the session
                self._record_usage()
        # pyftpdlib's line for the commands it logs at INFO (DELE, MKD, RNTO, ...), escaped.
        if not self._log_debug and cmd in self.log_cmds_list:
            failure = f" {logs.quote(respstr)}" if respcode >= 400 else ""
            self.log(f"{cmd} {logs.quote(arg)} {respcode}{failure}")

    # --- the usage report (gateway.usage)

    def binary_in_ascii(self) -> None:
        """The running TYPE A transfer carries NUL bytes (called by the data channel)."""
        if self.usage is not None:
            self.usage.binary_in_ascii()

    def _record_usage(self, logout: bool = False) -> None:
        """Hand what this session did so far to the usage store (``logout``: the login ends)."""
        if self.usage is None or self.record_usage is None:
            return
        login = self.authorizer.login
        if login is not None and login.shadow_problems:
            self.usage.shadow_problems(len(login.shadow_problems))
            login.shadow_problems.clear()
        records = self.usage.take(logout)
        if records:
            self.record_usage(records)

    def log_transfer(
        self, cmd: str, filename: str, receive: bool, completed: bool, elapsed: float, bytes: int
    ) -> None:
        login = self.authorizer.login
        if self.metrics is not None:
            backend = login.backend_name if login is not None else ""
            self.metrics.transfer(receive, completed, bytes, elapsed, backend)
            if login is not None and cmd in FILE_TRANSFERS:
                self.metrics.phase_transfer(login.phase, self.secure, self.username, completed)
        if self.usage is not None and cmd in FILE_TRANSFERS:
            self.usage.transfer(receive, completed, bytes, self._current_type == "a")
        if logs.xferlog.handlers:
            line = logs.xferlog_line(
                when=time.time(),
                seconds=elapsed,
                client_ip=self.remote_ip,
                nbytes=bytes,
                path=filename,
                binary=self._current_type == "i",
                upload=receive,
                user=self.username or "-",
                completed=completed,
            )
            logs.xferlog.info(line)
        self.log(f"{cmd} {logs.quote(filename)} completed={int(completed)} bytes={bytes} seconds={elapsed}")

    def _log_fields(self) -> dict[str, str]:
        return {
            "session": self.session_id,
            "client_ip": self.remote_ip,
            "user": listing.printable(self.username or "-"),
            "route": self.route,
        }

    # --- logging: client text (names, paths, command lines) escaped by gateway.logs, every
    # line through listing.printable. A log line is what fail2ban and analysers read: no
    # client text may pose as a line of the gateway's own (see README, "Logs").

    def _log_prefix(self) -> str:
        user = logs.escape(self.username)
        return f"{self.remote_ip}:{self.remote_port} sess={self.session_id} [{user}] route={self.route}"

    def log(self, msg: str, logfun: Any = ftplog.info) -> None:
        if msg == compat.SESSION_OPENED and self.proxied and not self._opened_logged:
            return  # greet_proxied logs it, with the client's address instead of the balancer's
        logfun(f"{self._log_prefix()} {listing.printable(msg)}")

    def logline(self, msg: str, logfun: Any = ftplog.debug) -> None:
        if not self._log_debug:
            return
        if msg.startswith(compat.COMMAND_ECHO):  # pyftpdlib's echo of the client's command line
            msg = compat.COMMAND_ECHO + logs.escape(msg[len(compat.COMMAND_ECHO) :])
        logfun(f"{self._log_prefix()} {listing.printable(msg)}")

    def logerror(self, msg: str) -> None:
        ftplog.error(f"{self._log_prefix()} {listing.printable(msg)}")


def _x_command(algorithm: str) -> Callable[[GatewayHandler, str], str | None]:
    """The handler of one X-command (XSHA256, XCRC, ...): ``algorithm`` over a path or range."""

    def command(self: GatewayHandler, line: str) -> str | None:
        return self._x_checksum(line, algorithm)

    return command


# One ftp_<VERB> per entry of checksums.X_COMMANDS (pyftpdlib looks commands up by name).
for _verb, _algorithm in checksums.X_COMMANDS.items():
    setattr(GatewayHandler, f"ftp_{_verb}", _x_command(_algorithm))
