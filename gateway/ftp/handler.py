"""The FTP control channel: the pyftpdlib handler subclass that speaks for the gateway.

What it changes in pyftpdlib: gateway errors become the reply they carry (pyftpdlib would
answer 550 for everything or drop the session), a lost backend connection is replaced for
the session's next command (a backend that refuses it ends the session with 421 instead of
leaving it half-alive), and no reply echoes a control character. Its rooms: the data
connections are ``gateway.ftp.data``, the listing commands ``gateway.ftp.listings``, SITE,
time setting and checksums ``gateway.ftp.site``, the command rules ``gateway.ftp.policy``.

Over 400 lines: the session's life (login, limits, drain, usage record, logging) hooks into
one pyftpdlib class and its state is shared by those hooks.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from pyftpdlib.handlers import FTPHandler
from pyftpdlib.log import logger as ftplog

from gateway.config import Network, Phase
from gateway.core import checksums, listing, logs, names, paths, proxy_protocol
from gateway.core.errors import BadName, Banned, GatewayError, Retired
from gateway.core.storage import Authenticate, Login, Storage
from gateway.features.guard import Guard
from gateway.features.metrics import Metrics
from gateway.features.usage.session import FILE_TRANSFERS, Record, SessionUsage
from gateway.ftp import policy
from gateway.ftp.authorizer import SessionAuthorizer
from gateway.ftp.data import GatewayActiveDTP, GatewayDTPHandler, GatewayPassiveDTP
from gateway.ftp.filesystem import GatewayFS
from gateway.ftp.listings import ListingCommands
from gateway.ftp.proxy import NoHeader, read_header
from gateway.ftp.site import SiteAndChecksumCommands

log = logging.getLogger("gateway.ftp")


class GatewayHandler(ListingCommands, SiteAndChecksumCommands):
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
        # pyftpdlib's __init__ logs "session opened" with the peer's address; the gateway logs
        # it itself after (greet_proxied does, with the client's address, behind a balancer).
        self._constructing = True
        self._echoed = False  # pre_process_command logged the command line (pyftpdlib's echo follows)
        super().__init__(conn, server, ioloop=ioloop)
        self._constructing = False
        if hasattr(self, "remote_ip") and not self.proxied:
            self.log("FTP session opened (connect)")
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
            while self._discarded > policy.LINE_LIMIT and not self._closing:
                self._discarded -= policy.LINE_LIMIT
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
        if self._long_lines >= policy.MAX_LONG_LINES and not self._closing:
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
            self._in_buffer = [policy.TELNET_COMMANDS.sub(b"", line)]
        super().found_terminator()

    def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
        if self._log_debug:  # client text, escaped: see "logging" below
            shown = line if cmd != "PASS" else f"{line.split(' ')[0]} {'*' * 6}"
            self.logline(f"<- {logs.escape(shown)}")
        if self.fs is not None:
            self.fs.forget(cmd)
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
                and policy.governing_verb(cmd, arg) not in login.commands | policy.ALWAYS_ALLOWED
            ):
                self.respond(f"550 {cmd} is not allowed for this account.")
                self.log_cmd(cmd, arg, 550, "not allowed on this route")
                return
            name = posixpath.basename(arg.rstrip("/")) if cmd in policy.CREATES_NAME else ""
            if name and not listing.is_safe_name(name):
                # A name the listings would hide (a control character in it): creating it
                # would give the user files nobody sees in LIST, NLST or MLSD.
                raise BadName("File name not allowed: control characters are refused.")
            if cmd in policy.CANCELS_QUEUED_TRANSFER:
                self._drop_queued_transfer()
            self._ls_flags = frozenset()
            if cmd in policy.LS_COMMANDS:
                options = arg
                self._ls_flags, arg = policy.ls_options(arg)
                self._listing_arg = arg
                self._ls_options = options[: len(options) - len(arg)].strip() if arg else options.strip()
            if cmd == "SITE" and self._relay_site(arg):
                return
            self._arg = arg
            self._echoed = True
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

    # --- uploads: what a resume may continue

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

    def on_file_received(self, file: str) -> None:
        """A completed upload: the MFMT a client sends next knows it is a file without a stat."""
        super().on_file_received(file)
        if self.fs is not None:
            self.fs.written = file

    def ftp_SIZE(self, path: str) -> str | None:
        """SIZE: while this user has a cut upload of the file kept, its size (what a resume
        continues: curl -C -, lftp put -c); else the file's (RFC 3659)."""
        self.fs.told.pop(path, None)
        if self._current_type != "a" and (kept := self.fs.partial_size(path)) is not None:
            self.fs.told[path] = kept  # an APPE continues the partial at this size only
            self.respond(f"213 {kept}")
            return path
        return super().ftp_SIZE(path)  # type: ignore[no-any-return]

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
            self.metrics.phase_login(Phase.RETIRED.value, self.secure, self.username)
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

    # --- the usage report (gateway.features.usage)

    def binary_in_ascii(self) -> None:
        """The running TYPE A transfer carries NUL bytes (called by the data channel)."""
        if self.usage is not None:
            self.usage.binary_in_ascii()

    def _record_usage(self, logout: bool = False) -> None:
        """Hand what this session did so far to the usage store (``logout``: the login ends)."""
        if self.usage is None or self.record_usage is None:
            return
        login = self.authorizer.login
        if login is not None and (problems := login.shadow_problems.take()):
            self.usage.shadow_problems(len(problems))
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

    # --- logging: client text (names, paths, command lines) escaped by gateway.core.logs, every
    # line through listing.printable. A log line is what fail2ban and analysers read: no
    # client text may pose as a line of the gateway's own (see docs/operations.md, "Logs").

    def _log_prefix(self) -> str:
        user = logs.escape(self.username)
        return f"{self.remote_ip}:{self.remote_port} sess={self.session_id} [{user}] route={self.route}"

    def log(self, msg: str, logfun: Any = ftplog.info) -> None:
        if self._constructing:
            return  # pyftpdlib's "session opened": see __init__
        if not _enabled(logfun):
            return  # pyftpdlib logs every reply at debug: build no line nobody reads
        logfun(f"{self._log_prefix()} {listing.printable(msg)}")

    def logline(self, msg: str, logfun: Any = ftplog.debug) -> None:
        if self._echoed:
            self._echoed = False
            return  # pyftpdlib's raw echo of the line pre_process_command logged escaped
        if not self._log_debug:
            return
        logfun(f"{self._log_prefix()} {listing.printable(msg)}")

    def logerror(self, msg: str) -> None:
        ftplog.error(f"{self._log_prefix()} {listing.printable(msg)}")


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _enabled(logfun: Any) -> bool:
    """Whether ``logfun`` (a logger's debug/info/... method) would emit a line now."""
    logger = getattr(logfun, "__self__", None)
    if not isinstance(logger, logging.Logger):
        return True
    return logger.isEnabledFor(_LEVELS.get(logfun.__name__, logging.CRITICAL))


def _x_command(algorithm: str) -> Callable[[GatewayHandler, str], str | None]:
    """The handler of one X-command (XSHA256, XCRC, ...): ``algorithm`` over a path or range."""

    def command(self: GatewayHandler, line: str) -> str | None:
        return self._x_checksum(line, algorithm)

    return command


# One ftp_<VERB> per entry of checksums.X_COMMANDS (pyftpdlib looks commands up by name).
for _verb, _algorithm in checksums.X_COMMANDS.items():
    setattr(GatewayHandler, f"ftp_{_verb}", _x_command(_algorithm))
