"""An FTP relay between a client and the gateway that can cut an upload's data connection.

The control connection is relayed as it is, except that PASV (227) and EPSV (229) replies
are rewritten to a port of the relay, so the data connections pass through it too. That
lets a test count exactly the bytes a client sends (how much a resume sends again) and
end an upload after a given number of bytes as a broken link would: once the gateway has
read them, the data and control connections are reset and new ones reset at once until
``reopen()`` (so a client that retries by itself gives up, and the test resumes with a
second run; the listener stays open, so no other socket can take its port meanwhile).
Passive mode only (curl's and lftp's default).
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import socket
import struct
import termios
import threading
import time

_PASV = re.compile(rb"^227 .*\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)")
_EPSV = re.compile(rb"^229 .*\(\|\|\|(\d+)\|\)")


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST, now.

    On Linux, close() leaves the connection open while another thread is blocked in
    recv() on it (the blocked call holds the socket), so the pump threads would keep a
    "reset" connection alive until the peer sent something. shutdown(SHUT_RD) wakes them
    first; the RST goes out when the last of them lets go.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


def _delivered(sock: socket.socket, timeout: float = 20.0) -> None:
    """Wait until the peer (on this machine) has read every byte sent on ``sock``: none left
    in this socket's send queue, none in the receive queue of the peer's (/proc/net/tcp)."""
    local, peer = sock.getsockname(), sock.getpeername()
    # /proc/net/tcp names the peer's socket by its own address (our peer) and remote (us).
    wanted = (_proc_address(peer), _proc_address(local))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
        unread = 0
        with open("/proc/net/tcp") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                if (fields[1], fields[2]) == wanted:
                    unread = int(fields[4].split(":")[1], 16)
        if not unsent and not unread:
            return
        time.sleep(0.01)


def _proc_address(address: tuple[str, int]) -> str:
    """An IPv4 (address, port) as /proc/net/tcp writes it: 0100007F:1F90."""
    packed = socket.inet_aton(address[0])
    return f"{struct.unpack('<I', packed)[0]:08X}:{address[1]:04X}"


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy ``source`` to ``sink`` until the end of the stream or an error."""
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)


class FTPRelay:
    """Relays 127.0.0.1:``port`` to an FTP server on 127.0.0.1:``target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._cut_after: int | None = None
        self.uploaded: list[int] = []  # client-to-server bytes of each data connection, in order
        self.cuts = 0
        self._controls: list[socket.socket] = []
        self._down = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._serve, args=(self._listener,), daemon=True).start()

    def reopen(self) -> None:
        """The link is back: relay new connections again."""
        with self._lock:
            self._down = False

    def _link_down(self) -> None:
        """Reset every control connection and new ones."""
        with self._lock:
            self._down = True
            controls, self._controls = self._controls, []
        for sock in controls:
            _reset(sock)

    def cut_upload_after(self, nbytes: int) -> None:
        """Reset the next data connection that carries ``nbytes`` from the client, right there."""
        with self._lock:
            self._cut_after = nbytes

    @property
    def sent(self) -> int:
        """Bytes the client sent on all data connections so far."""
        with self._lock:
            return sum(self.uploaded)

    def close(self) -> None:
        _close(self._listener)

    # --- control connections

    def _serve(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                down = self._down
            if down:
                _reset(client)
                continue
            server = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            server.settimeout(None)
            with self._lock:
                self._controls += [client, server]
            threading.Thread(target=self._commands, args=(client, server), daemon=True).start()
            threading.Thread(target=self._replies, args=(server, client), daemon=True).start()

    def _commands(self, client: socket.socket, server: socket.socket) -> None:
        _pump(client, server)
        _close(client, server)

    def _replies(self, server: socket.socket, client: socket.socket) -> None:
        reader = server.makefile("rb")
        try:
            for line in reader:
                client.sendall(self._rewrite(line))
        except OSError:
            pass
        _close(client, server)

    def _rewrite(self, line: bytes) -> bytes:
        """A passive-mode reply pointing at a new data listener of the relay instead."""
        if match := _PASV.match(line):
            port = self._data_listener(int(match[5]) * 256 + int(match[6]))
            return b"227 Entering Passive Mode (127,0,0,1,%d,%d).\r\n" % (port // 256, port % 256)
        if match := _EPSV.match(line):
            port = self._data_listener(int(match[1]))
            return b"229 Entering extended passive mode (|||%d|).\r\n" % port
        return line

    # --- data connections

    def _data_listener(self, target: int) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(30)
        threading.Thread(target=self._data, args=(listener, target), daemon=True).start()
        return int(listener.getsockname()[1])

    def _data(self, listener: socket.socket, target: int) -> None:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        finally:
            listener.close()
        client.settimeout(None)
        server = socket.create_connection(("127.0.0.1", target), timeout=10)
        server.settimeout(None)
        with self._lock:
            index = len(self.uploaded)
            self.uploaded.append(0)
        threading.Thread(target=self._download, args=(server, client), daemon=True).start()
        try:
            while data := client.recv(65536):
                with self._lock:
                    done, limit = self.uploaded[index], self._cut_after
                    cut = limit is not None and done + len(data) >= limit
                    if cut:
                        assert limit is not None
                        data = data[: limit - done]
                        self._cut_after = None
                        self.cuts += 1
                    self.uploaded[index] += len(data)
                server.sendall(data)
                if cut:
                    # The link breaks once the gateway has read what got through (a reset
                    # would make the kernel drop what it holds unread: a cut at 0 bytes).
                    _delivered(server)
                    _reset(server)
                    _reset(client)
                    self._link_down()
                    return
        except OSError:
            pass
        _close(client, server)

    def _download(self, server: socket.socket, client: socket.socket) -> None:
        _pump(server, client)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)
