"""The FTP data connections: passive listeners and active connectors (counted, kept inside
the passive range, tied to the control connection's address) and the data channel that
commits an upload only once the backend has it.

pyftpdlib subclasses; the control channel they serve is ``gateway.ftp.handler.GatewayHandler``.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from typing import TYPE_CHECKING, Any

from pyftpdlib.handlers import DTPHandler
from pyftpdlib.handlers.ftp.dispatchers import ActiveDTP, PassiveDTP
from pyftpdlib.log import logger as ftplog

from gateway.core import proxy_protocol
from gateway.core.errors import GatewayError, NoPassivePort
from gateway.core.storage import Delivery
from gateway.ftp import compat
from gateway.ftp.proxy import read_header
from gateway.ftp.wakeup import Wakeup

if TYPE_CHECKING:
    from gateway.ftp.handler import GatewayHandler


class CountedDataConnection:
    """Counts one data connection attempt in ``ftpgw_data_connections_total``, exactly once."""

    cmd_channel: GatewayHandler
    _mode = ""
    _counted = True  # until the subclass has set itself up

    def _count(self, result: str) -> None:
        if not self._counted:
            self._counted = True
            if self.cmd_channel.metrics is not None:
                self.cmd_channel.metrics.data_connections.labels(self._mode, result).inc()


class GatewayPassiveDTP(CountedDataConnection, PassiveDTP):  # type: ignore[misc]
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


class GatewayActiveDTP(CountedDataConnection, ActiveDTP):  # type: ignore[misc]
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
    """Data channel: commit uploads before 226, map backend errors to 426/451/452/552, and
    let a storage that can send a download by itself do so."""

    # One OpenSSH SFTP request at most (limits@openssh.com: 255 KiB): an upload's recv()
    # chunks then go to the backend as they are, without being copied into blocks.
    ac_in_buffer_size = 255 * 1024
    ac_out_buffer_size = 256 * 1024
    transfer_finished: bool
    _had_cr: bool  # pyftpdlib: TYPE A upload, the last chunk ended with CR (held back)
    _clean_eof = False
    _delivery: Delivery | None = None  # a download the storage is sending by itself
    _wakeup: Wakeup | None = None  # how its end reaches this session's thread

    def use_sendfile(self) -> bool:
        return False

    def push_with_producer(self, producer: Any) -> None:
        send_to = getattr(self.file_obj, "send_to", None)
        if send_to is None or producer.type != "i" or type(self.socket) is not socket.socket:
            super().push_with_producer(producer)  # TYPE A, TLS, a storage that cannot
            return
        # A binary download over a plain data connection: the storage sends it from the
        # thread that owns its backend connection, into a duplicate of the data socket, so
        # no block crosses threads and the two threads do not contend for the GIL per
        # block. This thread keeps serving the control connection (ABOR, the data timeout)
        # and hears when the transfer has ended.
        wakeup = Wakeup(self.ioloop)  # out of descriptors: raises here, nothing to undo
        try:
            sock = self.socket.dup()
        except OSError:
            wakeup.close()
            raise
        self._initialized = True
        self.ioloop.unregister(self._fileno)
        self._wakeup = wakeup
        self._delivery = send_to(sock, lambda sent, err: wakeup.call(lambda: self._delivered(sent, err)))

    def _delivered(self, sent: int, err: Exception | None) -> None:
        """The storage has sent the download (``err`` None) or stopped; reply and close."""
        if self._delivery is None:
            return  # closed meanwhile
        self._end_delivery()
        self.tot_bytes_sent = sent
        if err is None:
            self.transfer_finished = True
            self._resp = ("226 Transfer complete.", ftplog.debug)
            self.close()
        elif isinstance(err, OSError):  # the client closed or reset the data connection
            self._resp = (f"426 Transfer aborted; {sent} bytes transmitted.", ftplog.debug)
            self.close()
        else:
            try:
                raise err
            except Exception:
                self.handle_error()

    def _end_delivery(self) -> None:
        if self._delivery is not None:
            self.tot_bytes_sent = self._delivery.sent
            self._delivery = None
        if self._wakeup is not None:
            self._wakeup.close()
            self._wakeup = None

    def close_when_done(self) -> None:
        if self._delivery is None:
            super().close_when_done()

    def transfer_in_progress(self) -> bool:
        # A download being sent is in progress (ABOR: 426 then 226) even before the sender
        # has counted its first bytes.
        return self._delivery is not None or super().transfer_in_progress()

    def get_transmitted_bytes(self) -> int:
        if self._delivery is not None:
            self.tot_bytes_sent = self._delivery.sent
        return super().get_transmitted_bytes()  # type: ignore[no-any-return]

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
        if self._delivery is not None:  # ABOR, the data timeout, the session's end
            self._delivery.cancel()
            with contextlib.suppress(OSError):
                self.socket.shutdown(socket.SHUT_RDWR)  # the sender's duplicate holds it open
            self._end_delivery()
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
