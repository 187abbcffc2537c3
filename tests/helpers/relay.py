"""A TCP relay between the gateway and sshd that can stall or reset its connections on command."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class Relay:
    """Forwards 127.0.0.1:port to a target; ``stall``/``resume`` freeze traffic, ``reset`` kills it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stall_new = False  # whether new connections start stalled
        self._flows: list[threading.Event] = []  # one per relayed connection
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._closed = False
        self.accepted = 0  # connections relayed so far
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            flow = threading.Event()
            with self._lock:
                self._conns += [client, upstream]
                self._flows.append(flow)
                self.accepted += 1
                if not self._stall_new:
                    flow.set()
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, flow), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, flow: threading.Event) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                flow.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            src.close()  # the pump of the other direction closes dst

    @property
    def connections(self) -> int:
        """Sockets currently tracked (two per relayed connection)."""
        with self._lock:
            return len([s for s in self._conns if s.fileno() != -1])

    def stall(self, existing_only: bool = False) -> None:
        """Stop forwarding (connections stay open, nothing moves); new ones too unless ``existing_only``."""
        with self._lock:
            self._stall_new = not existing_only
            for flow in self._flows:
                flow.clear()

    def resume(self) -> None:
        """Forward again."""
        with self._lock:
            self._stall_new = False
            for flow in self._flows:
                flow.set()

    def reset(self) -> None:
        """Kill every relayed connection with a TCP RST (like a crashed backend host)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv
                sock.close()
            except OSError:
                pass
        self.resume()

    def close(self) -> None:
        """Stop accepting and reset everything."""
        self._closed = True
        self._listener.close()
        self.reset()
