"""Blocking file objects over asyncssh file handles: read-ahead for RETR, write-behind for STOR.

Called from an FTP session thread. Each keeps a bounded window of SFTP requests in flight
on the background loop (the SFTP round trip would otherwise cap a transfer at one block per
RTT) and translates every backend exception into a gateway error.
"""

from __future__ import annotations

import concurrent.futures
from collections import deque
from collections.abc import Callable
from typing import Any

import asyncssh

from gateway.backends.sftp.errors import translate
from gateway.backends.sftp.loop import BackgroundLoop, wait
from gateway.errors import GatewayError

DEFAULT_DEPTH = 16


class _Handle:
    """An open SFTP file handle plus the loop it lives on."""

    def __init__(self, loop: BackgroundLoop, fh: asyncssh.SFTPClientFile, name: str, timeout: float):
        self.loop, self.fh, self.name, self.timeout = loop, fh, name, timeout
        self.closed = False

    async def _read(self, size: int, offset: int) -> bytes:
        try:
            data: bytes = await self.fh.read(size, offset)
        except asyncssh.SFTPEOFError:
            return b""
        except Exception as exc:
            raise translate(exc) from exc
        return data

    async def _write(self, data: bytes, offset: int) -> None:
        try:
            await self.fh.write(data, offset)
        except Exception as exc:
            raise translate(exc) from exc

    async def _close(self) -> None:
        try:
            await self.fh.close()
        except Exception as exc:
            raise translate(exc) from exc

    def close_handle(self, *, check: bool) -> None:
        """Close on the backend; raise the backend's error only if ``check``."""
        if self.closed:
            return
        self.closed = True
        try:
            self.loop.run(self._close(), self.timeout)
        except GatewayError:
            if check:
                raise


def _drain(pending: deque[tuple[int, concurrent.futures.Future[Any]]]) -> None:
    """Cancel and forget outstanding requests (their results no longer matter)."""
    while pending:
        _, future = pending.popleft()
        future.cancel()


class SFTPReadStream(_Handle):
    """Sequential reader keeping up to ``depth`` block reads in flight ahead of the consumer."""

    def __init__(
        self,
        loop: BackgroundLoop,
        fh: asyncssh.SFTPClientFile,
        name: str,
        timeout: float,
        size_hint: int,
        block: int,
        depth: int = DEFAULT_DEPTH,
    ) -> None:
        super().__init__(loop, fh, name, timeout)
        self._size_hint, self._block, self._depth = size_hint, block, depth
        self._next = 0  # offset of the next read to submit
        self._pending: deque[tuple[int, concurrent.futures.Future[bytes]]] = deque()
        self._eof = False

    def seek(self, offset: int) -> None:
        """Start at ``offset``; drops any read-ahead."""
        _drain(self._pending)
        self._next, self._eof = offset, False

    def _fill(self) -> None:
        # Read ahead only within the size seen at open; past it, one read at a time until
        # the backend says EOF (the file may still be growing).
        while len(self._pending) < self._depth and (self._next < self._size_hint or not self._pending):
            self._pending.append((self._next, self.loop.submit(self._read(self._block, self._next))))
            self._next += self._block

    def read(self, size: int = -1) -> bytes:
        """Return the next block (whatever ``size`` asks); b"" at end of file."""
        if self._eof or self.closed:
            return b""
        self._fill()
        offset, future = self._pending.popleft()
        data = wait(future, self.timeout)
        if len(data) < self._block:
            # Short read: EOF, or a server that returns less than asked. Everything
            # queued after it started at the wrong offset; restart right after it.
            _drain(self._pending)
            self._next = offset + len(data)
            if not data:
                self._eof = True
        return data

    def close(self) -> None:
        """Release the handle (read errors at close do not matter)."""
        _drain(self._pending)
        self.close_handle(check=False)


class SFTPWriteStream(_Handle):
    """Writer coalescing data into blocks, with up to ``depth`` writes at explicit offsets.

    Explicit offsets (not FXF_APPEND) keep pipelined writes in order on every server. The
    session thread blocks when the window is full, so TCP pushes back on the FTP client.
    The first backend error is raised by the next ``write`` or at the latest by ``close``.
    """

    def __init__(
        self,
        loop: BackgroundLoop,
        fh: asyncssh.SFTPClientFile,
        name: str,
        timeout: float,
        offset: int,
        block: int,
        depth: int = DEFAULT_DEPTH,
        refine: Callable[[GatewayError], GatewayError] = lambda err: err,
    ) -> None:
        super().__init__(loop, fh, name, timeout)
        self._offset, self._block, self._depth = offset, block, depth
        self._refine = refine
        self._buffer = bytearray()
        self._pending: deque[tuple[int, concurrent.futures.Future[None]]] = deque()

    def seek(self, offset: int) -> None:
        """Start writing at ``offset`` (REST); only before the first write."""
        self._offset = offset

    def _reap(self, block: bool) -> None:
        while self._pending and (block or self._pending[0][1].done()):
            _, future = self._pending.popleft()
            wait(future, self.timeout)

    def _submit(self, data: bytes) -> None:
        self._pending.append((self._offset, self.loop.submit(self._write(data, self._offset))))
        self._offset += len(data)
        self._reap(block=False)
        while len(self._pending) >= self._depth:
            _, future = self._pending.popleft()
            wait(future, self.timeout)

    def write(self, data: bytes) -> int:
        """Queue ``data``; raise the first backend error seen so far."""
        self._buffer += data
        try:
            while len(self._buffer) >= self._block:
                chunk = bytes(self._buffer[: self._block])
                del self._buffer[: self._block]
                self._submit(chunk)
        except GatewayError as err:
            raise self._refine(err) from err
        return len(data)

    def close(self) -> None:
        """Flush, wait for every write, close the handle: raise unless all of it succeeded."""
        if self.closed:
            return
        try:
            if self._buffer:
                self._submit(bytes(self._buffer))
                self._buffer.clear()
            self._reap(block=True)
            self.close_handle(check=True)
        except GatewayError as err:
            self.abort()
            raise self._refine(err) from err

    def abort(self) -> None:
        """Drop the upload: forget queued data and release the handle."""
        self._buffer.clear()
        _drain(self._pending)
        self.close_handle(check=False)
