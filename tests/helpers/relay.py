"""A TCP relay between the gateway and sshd that injects network faults on command.

Faults, each on every current connection and (unless ``existing_only``) on new ones:

* ``stall()``: nothing moves, connections stay open (a hung host or a saturated link).
* ``blackhole()``: connections stay open and every byte is read and silently discarded, so
  senders never block; new connections are accepted but never reach the target.
* ``refuse()``: new connections are refused (the port stops listening; ECONNREFUSED).
* ``reset()``: every connection is killed with a TCP RST (a crashed backend host).
* ``down()``: ``reset()`` and ``refuse()`` (the host crashed and stays down).

``resume()`` ends every fault: traffic flows, new connections are accepted and forwarded.
A connection that lost bytes to the blackhole cannot carry its protocol any more, so
``resume()`` resets it instead of forwarding again.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field

FORWARD, STALL, BLACKHOLE = "forward", "stall", "blackhole"


@dataclass(eq=False)
class _Flow:
    """One accepted connection: the client side, the target side (None if blackholed) and its mode."""

    client: socket.socket
    upstream: socket.socket | None
    mode: str = FORWARD
    damaged: bool = False  # bytes were discarded: the stream cannot be resumed
    closed: bool = False
    sockets: list[socket.socket] = field(default_factory=list)


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST (and wake a thread blocked in its recv)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _close_listener(sock: socket.socket) -> None:
    """Stop listening at once. close() alone does not: a thread blocked in accept() keeps the
    socket listening until its accept returns; shutdown() wakes it (EINVAL on Linux)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class Relay:
    """Forwards 127.0.0.1:port to a target; see the module docstring for the faults."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._cond = threading.Condition()
        self._new_mode = FORWARD  # how new connections start
        self._flows: list[_Flow] = []
        self._closed = False
        self.accepted = 0  # connections relayed to the target so far
        self.blackholed = 0  # connections accepted into the blackhole so far
        self.held = 0  # chunks of data waiting in a stall right now
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._start_accepting(self._listener)

    # --- machinery

    def _start_accepting(self, listener: socket.socket) -> None:
        """Serve ``listener`` in a thread of its own until it is closed."""
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        """Accept connections on ``listener`` and relay (or blackhole) each."""
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: refuse() or close()
            with self._cond:
                mode = self._new_mode
            upstream = None
            if mode != BLACKHOLE:
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    _abort(client)
                    continue
                upstream.settimeout(None)
            sockets = [client] if upstream is None else [client, upstream]
            flow = _Flow(client, upstream, mode=mode, sockets=sockets)
            with self._cond:
                if self._closed:
                    for sock in flow.sockets:
                        _abort(sock)
                    return
                if upstream is None and self._new_mode != BLACKHOLE:
                    _abort(client)  # resumed meanwhile: resume() resets blackholed connections
                    continue
                # A fault set or ended while this one was connecting applies to it too (else a
                # connection accepted during a stall would stay stalled after resume()).
                flow.mode = self._new_mode
                self._flows.append(flow)
                if upstream is None:
                    self.blackholed += 1
                else:
                    self.accepted += 1
            threading.Thread(target=self._pump, args=(flow, client, upstream), daemon=True).start()
            if upstream is not None:
                threading.Thread(target=self._pump, args=(flow, upstream, client), daemon=True).start()

    def _pump(self, flow: _Flow, src: socket.socket, dst: socket.socket | None) -> None:
        """Move bytes from ``src`` to ``dst`` as the flow's mode says, until either side ends."""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                with self._cond:
                    if stalled := flow.mode == STALL:
                        self.held += 1
                    while flow.mode == STALL and not flow.closed:
                        self._cond.wait()
                    self.held -= stalled
                    if flow.closed:
                        break
                    discard = flow.mode == BLACKHOLE or dst is None
                    if discard:
                        flow.damaged = True
                if not discard:
                    assert dst is not None
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            self._end(flow)

    def _end(self, flow: _Flow, rst: bool = False) -> None:
        """Close both sides of ``flow`` (with an RST if ``rst``) and forget it."""
        with self._cond:
            flow.closed = True
            if flow in self._flows:
                self._flows.remove(flow)
            self._cond.notify_all()
        for sock in flow.sockets:
            if rst:
                _abort(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def _set_mode(self, mode: str, existing_only: bool) -> None:
        with self._cond:
            if not existing_only:
                self._new_mode = mode
            for flow in self._flows:
                flow.mode = mode
            self._cond.notify_all()

    # --- state

    @property
    def connections(self) -> int:
        """Sockets currently open (two per relayed connection, one per blackholed one)."""
        with self._cond:
            return sum(1 for flow in self._flows for sock in flow.sockets if sock.fileno() != -1)

    @property
    def refusing(self) -> bool:
        """Whether new connections are refused."""
        return self._listener.fileno() == -1

    # --- faults

    def stall(self, existing_only: bool = False) -> None:
        """Stop forwarding (connections stay open, nothing moves); new ones too unless ``existing_only``."""
        self._set_mode(STALL, existing_only)

    def blackhole(self, existing_only: bool = False) -> None:
        """Discard all traffic silently (connections stay open); new ones too unless ``existing_only``."""
        self._set_mode(BLACKHOLE, existing_only)

    def refuse(self) -> None:
        """Refuse new connections (ECONNREFUSED) until ``resume``; current ones are left alone."""
        with self._cond:
            if self._closed or self.refusing:
                return
            _close_listener(self._listener)  # the accept thread ends; resume() binds the port again

    def reset(self) -> None:
        """Kill every current connection with a TCP RST; how new ones are treated does not change."""
        with self._cond:
            flows = list(self._flows)
        for flow in flows:
            self._end(flow, rst=True)

    def down(self) -> None:
        """The host crashed and stays down: reset every connection and refuse new ones."""
        self.refuse()
        self.reset()

    def resume(self) -> None:
        """End every fault: forward again (resetting connections that lost bytes) and accept new ones."""
        with self._cond:
            if self._closed:
                return
            if self.refusing:
                self._listener = socket.create_server(("127.0.0.1", self.port))
                self._start_accepting(self._listener)
            damaged = [flow for flow in self._flows if flow.damaged or flow.upstream is None]
        for flow in damaged:
            self._end(flow, rst=True)
        self._set_mode(FORWARD, existing_only=False)

    def close(self) -> None:
        """Stop accepting and reset everything."""
        with self._cond:
            self._closed = True
            _close_listener(self._listener)
        self.reset()
