"""Blocking file objects over asyncssh file handles: read-ahead for RETR, write-behind for STOR.

Called from an FTP session thread. Each keeps a bounded window of SFTP requests in flight
on the background loop (the SFTP round trip would otherwise cap a transfer at one block per
RTT) and translates every backend exception into a gateway error.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

import asyncssh

from gateway.backends.sftp.errors import translate
from gateway.backends.sftp.loop import BackgroundLoop, Call
from gateway.core.errors import BackendTimeout, GatewayError, NoSpace, QuotaExceeded
from gateway.core.storage import Delivered

T = TypeVar("T")

#: Reads in flight per download: 16 x 255 KiB = 4 MiB, within the 16 MiB SSH window we
#: advertise, enough to fill a 20 ms WAN path at ~200 MiB/s.
READ_DEPTH = 16
#: Writes in flight per upload: 8 x 255 KiB = 2 MiB, which is OpenSSH's own channel window;
#: more would only wait in asyncssh's send buffer (measured: +90 MiB peak RSS for 16 uploads).
WRITE_DEPTH = 8


class Budget:
    """Process-wide cap on the bytes held by SFTP reads and writes in flight.

    Every transfer may always keep one request in flight; the rest of its window is paid
    for from here, so a thousand concurrent transfers degrade to one request each instead
    of exhausting memory.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes if they fit."""
        with self._lock:
            if self.used + size > self.limit:
                return False
            self.used += size
            return True

    def give(self, size: int) -> None:
        """Return bytes reserved with ``take``."""
        with self._lock:
            self.used -= size


class _Pending(Protocol):
    """A request in flight: a thread-safe future (from a session thread) or a task (on the loop)."""

    def done(self) -> bool: ...

    def cancel(self) -> bool: ...


class _Window:
    """Requests in flight, oldest first: at most ``depth``, all but the first paid from the budget.

    Each carries an offset: where a read starts, where a write ends.
    """

    def __init__(self, budget: Budget, depth: int) -> None:
        self._budget, self._depth = budget, depth
        self._items: deque[tuple[int, Any, int]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def admit(self, size: int) -> int | None:
        """The budget charge for one more request of ``size`` bytes, or None if it must wait."""
        if not self._items:
            return 0
        if len(self._items) < self._depth and self._budget.take(size):
            return size
        return None

    def push(self, offset: int, future: _Pending, charge: int) -> None:
        self._items.append((offset, future, charge))

    def oldest_done(self) -> bool:
        return bool(self._items) and self._items[0][1].done()

    def pop(self) -> tuple[int, Any]:
        """The oldest request (its charge goes back to the budget)."""
        offset, future, charge = self._items.popleft()
        self._budget.give(charge)
        return offset, future

    def drain(self) -> None:
        """Cancel and forget every request (their results no longer matter)."""
        while self._items:
            self.pop()[1].cancel()


#: Observes one backend operation: (op, seconds or None if not timed, error or None).
Report = Callable[[str, float | None, GatewayError | None], None]
#: Disposes of a failed atomic upload's file: (bytes to keep for a resume or None to remove
#: it, whether the connection stalled). Runs on the session thread.
Discard = Callable[[int | None, bool], None]


def no_report(op: str, seconds: float | None, err: GatewayError | None) -> None:
    """A Report that ignores everything."""


class _Handle:
    """An open SFTP file handle plus the loop it lives on.

    Failed block reads and writes are reported (they count as backend errors); their
    durations are not: one transfer issues thousands, and its duration is measured whole.

    Once a request has timed out, the clean-up requests (close, removing a temporary file)
    are sent but not waited for: each would wait out another timeout on a connection that
    stopped answering before the client hears that its transfer failed.
    """

    def __init__(
        self, loop: BackgroundLoop, fh: asyncssh.SFTPClientFile, name: str, timeout: float, report: Report
    ):
        self.loop, self.fh, self.name, self.timeout, self.report = loop, fh, name, timeout, report
        self.closed = False
        self.stalled = False  # a request timed out

    def _settle(self, op: str, future: Call[T]) -> None:
        """Wait for a clean-up request, unless the connection stalled; its error does not matter."""
        if not self.stalled:
            with contextlib.suppress(GatewayError):
                self._wait(op, future)

    def _failed(self, op: str, exc: Exception) -> GatewayError:
        err = translate(exc)
        self.report(op, None, err)
        return err

    def _wait(self, op: str, future: Call[T]) -> T:
        """``wait`` that also counts a timeout (the cancelled request reports nothing)."""
        try:
            return future.wait(self.timeout)
        except BackendTimeout:
            raise self._stalled(op) from None

    def _stalled(self, op: str) -> BackendTimeout:
        """Note that ``op`` timed out: the connection stopped answering."""
        self.stalled = True
        err = BackendTimeout()
        self.report(op, None, err)
        return err

    async def _read(self, size: int, offset: int) -> bytes:
        try:
            data: bytes = await self.fh.read(size, offset)
        except asyncssh.SFTPEOFError:
            return b""
        except Exception as exc:
            raise self._failed("read", exc) from exc
        return data

    async def _write(self, data: bytes, offset: int) -> None:
        try:
            await self.fh.write(data, offset)
        except Exception as exc:
            raise self._failed("write", exc) from exc

    async def _close(self) -> None:
        started = time.perf_counter()
        try:
            await self.fh.close()
        except Exception as exc:
            raise self._failed("close", exc) from exc
        self.report("close", time.perf_counter() - started, None)

    def close_handle(self) -> None:
        """Close on the backend (a failure to close does not matter here)."""
        if self.closed:
            return
        self.closed = True
        self._settle("close", self.loop.call(self._close()))


class _Delivery:
    """A download the loop is sending into a data connection (``SFTPReadStream.send_to``)."""

    def __init__(self) -> None:
        self.sent = 0  # written by the loop thread only
        self.future: Call[None] | None = None

    def cancel(self) -> None:
        """Stop the sending task (thread-safe); it then releases the socket and the handle."""
        if self.future is not None:
            self.future.cancel()


async def _send_all(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes, delivery: _Delivery
) -> None:
    """Send ``data``, counting what the kernel took at once (what the client may already
    have: the progress ABOR and the data timeout see), then the rest once it is all sent."""
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    delivery.sent += sent
    if sent < len(data):
        rest = memoryview(data)[sent:]
        await loop.sock_sendall(sock, rest)
        delivery.sent += len(rest)


#: Handle closes nobody waits for (a finished delivery's): referenced until they end.
_closing: set[asyncio.Task[None]] = set()


class SFTPReadStream(_Handle):
    """Sequential reader keeping up to ``depth`` block reads in flight ahead of the consumer.

    Read by a session thread (``read``), or by the loop itself straight into the data
    connection (``send_to``): then no block crosses threads, and the session thread is
    only told when the transfer has ended.
    """

    def __init__(
        self,
        loop: BackgroundLoop,
        fh: asyncssh.SFTPClientFile,
        name: str,
        timeout: float,
        size_hint: int,
        block: int,
        budget: Budget,
        depth: int = READ_DEPTH,
        report: Report = no_report,
    ) -> None:
        super().__init__(loop, fh, name, timeout, report)
        self._size_hint, self._block = size_hint, block
        self._window = _Window(budget, depth)
        self._next = 0  # offset of the next read to submit
        self._eof = False
        self._delivering = False  # send_to owns the stream (its window, its handle) from then on

    def seek(self, offset: int) -> None:
        """Start at ``offset``; drops any read-ahead."""
        self._window.drain()
        self._next, self._eof = offset, False

    def _fill(self, start: Callable[[Coroutine[Any, Any, bytes]], _Pending]) -> None:
        # Read ahead only within the size seen at open; past it, one read at a time until
        # the backend says EOF (the file may still be growing).
        while self._next < self._size_hint or not self._window:
            charge = self._window.admit(self._block)
            if charge is None:
                return
            self._window.push(self._next, start(self._read(self._block, self._next)), charge)
            self._next += self._block

    def _got(self, offset: int, data: bytes) -> None:
        """Account for the block read at ``offset``.

        A short read is EOF, or a server that returns less than asked: everything queued
        after it started at the wrong offset, so reading restarts right after it. A short
        read that reaches the size seen at open is the end (no extra EOF round trip).
        """
        if len(data) < self._block:
            self._window.drain()
            self._next = offset + len(data)
            if not data or self._next >= self._size_hint:
                self._eof = True

    def read(self, size: int = -1) -> bytes | memoryview:
        """Return the next block (whatever ``size`` asks); empty at end of file."""
        if self._eof or self.closed:
            return b""
        self._fill(self.loop.call)
        offset, future = self._window.pop()
        data: bytes = self._wait("read", future)
        self._got(offset, data)
        # A memoryview: asynchat re-slices what a partial send() left over, which for bytes
        # copies the rest of the block each time; memoryview slices are free.
        return memoryview(data)

    def send_to(self, sock: socket.socket, done: Delivered) -> _Delivery:
        """Send the rest of the file into ``sock`` from the loop thread, then call ``done``
        there; ``sock`` and the handle are released when it ends, however it ends."""
        self._delivering = True
        delivery = _Delivery()
        delivery.future = self.loop.call(self._send(sock, delivery, done))
        return delivery

    async def _send(self, sock: socket.socket, delivery: _Delivery, done: Delivered) -> None:
        loop = asyncio.get_running_loop()
        error: Exception | None = None
        try:
            while not self._eof:
                self._fill(loop.create_task)
                offset, task = self._window.pop()
                try:
                    async with asyncio.timeout(self.timeout):
                        data: bytes = await task
                except TimeoutError:
                    raise self._stalled("read") from None
                self._got(offset, data)
                if data:
                    await _send_all(loop, sock, data, delivery)
        except Exception as exc:  # the backend's GatewayError, the data connection's OSError
            error = exc
        finally:  # cancelled too: the session ended the transfer (ABOR, a timeout, its end)
            self._window.drain()
            sock.close()
            # The reply does not wait for the handle's close: the data is delivered, and
            # the backend handles the CLOSE before any later request on this channel.
            self.closed = True
            task = loop.create_task(self._release())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
        done(delivery.sent, error)

    async def _release(self) -> None:
        with contextlib.suppress(GatewayError, TimeoutError):
            async with asyncio.timeout(self.timeout):
                await self._close()

    def close(self) -> None:
        """Release the handle (read errors at close do not matter)."""
        if self._delivering:
            return  # send_to releases it
        self._window.drain()
        self.close_handle()


class SFTPWriteStream(_Handle):
    """Writer coalescing data into blocks, with up to ``depth`` writes at explicit offsets.

    Explicit offsets (not FXF_APPEND) keep pipelined writes in order on every server. The
    session thread blocks when the window is full, so TCP pushes back on the FTP client.
    The first backend error is raised by the next ``write`` or at the latest by ``close``.

    ``confirmed`` is where the data the backend acknowledged ends: every byte before it is
    on the backend, in order. A failed upload keeps exactly that much for a resume (later
    writes may have landed after a gap left by a failed one).
    """

    def __init__(
        self,
        loop: BackgroundLoop,
        fh: asyncssh.SFTPClientFile,
        name: str,
        timeout: float,
        offset: int,
        block: int,
        budget: Budget,
        depth: int = WRITE_DEPTH,
        refine: Callable[[GatewayError], GatewayError] = lambda err: err,
        report: Report = no_report,
        commit: Callable[[], Coroutine[Any, Any, None]] | None = None,
        discard: Discard | None = None,
        truncate: bool = False,
        resumable: bool = False,
    ) -> None:
        super().__init__(loop, fh, name, timeout, report)
        self._offset, self._block = offset, block
        self.confirmed = offset
        # A resumed upload (REST + STOR) ends the file where its data ends: what was past it
        # belongs to another version of the file (a resume of a changed file).
        self._truncate = truncate
        self._positioned = not truncate  # a resume must be told where it starts (seek)
        self._window = _Window(budget, depth)
        self._refine = refine
        self._buffer = bytearray()
        # An atomic upload: commit() renames the temporary file into place after the close
        # succeeded; discard() removes it, or keeps it for a resume, when the upload fails.
        self._commit, self._discard = commit, discard
        # A binary upload: its bytes are the client's file, so what arrived may be resumed.
        self._resumable = resumable
        self._failure: GatewayError | None = None

    def seek(self, offset: int) -> None:
        """Start writing at ``offset`` (REST); only before the first write."""
        self._offset = self.confirmed = offset
        self._positioned = True

    def _collect(self) -> None:
        """Wait for the oldest write (the window holds its end offset)."""
        end, future = self._window.pop()
        self._wait("write", future)
        self.confirmed = end

    def _reap(self, block: bool) -> None:
        """Collect finished writes (all of them if ``block``), raising the first error."""
        while self._window and (block or self._window.oldest_done()):
            self._collect()

    def _submit(self, data: bytes) -> None:
        self._reap(block=False)
        while (charge := self._window.admit(len(data))) is None:
            self._collect()  # window full: TCP pushes back meanwhile
        end = self._offset + len(data)
        self._window.push(end, self.loop.call(self._write(data, self._offset)), charge)
        self._offset = end

    def write(self, data: bytes) -> int:
        """Queue ``data``; raise the first backend error seen so far."""
        try:
            if not self._buffer and self._block // 2 <= len(data) <= self._block:
                self._submit(data)  # big enough to be a request of its own: no copy
                return len(data)
            self._buffer += data
            while len(self._buffer) >= self._block:
                chunk = bytes(memoryview(self._buffer)[: self._block])
                del self._buffer[: self._block]
                self._submit(chunk)
        except GatewayError as err:
            self._failure = self._refine(err)
            raise self._failure from err
        return len(data)

    def close(self) -> None:
        """Flush, wait for every write, close the handle: raise unless all of it succeeded."""
        if self.closed:
            return
        if not self._positioned:
            # A resume closed before it started (its REST position was refused): nothing
            # to store, and no truncation at offset 0.
            self._commit = self._discard = None
            self.close_handle()
            return
        try:
            if self._buffer:
                self._submit(bytes(self._buffer))
                self._buffer.clear()
            # The CLOSE (and a resume's truncation) go out with the last writes: the backend
            # must process requests on one handle in order (draft-ietf-secsh-filexfer-02, 3.
            # "Request Synchronization and Reordering"), so they still mean "after every
            # write". Saves a round trip.
            self.closed = True
            truncating = self.loop.call(self.fh.truncate(self._offset)) if self._truncate else None
            closing = self.loop.call(self._close())
            try:
                self._reap(block=True)
                if truncating is not None:
                    self._wait("truncate", truncating)
            except GatewayError:
                self._settle("close", closing)
                raise
            self._wait("close", closing)
            if self._commit is not None:
                self._wait("rename", self.loop.call(self._committed(self._commit)))
                self._discard = None
        except GatewayError as err:
            self._failure = self._refine(err)
            self.abort()
            raise self._failure from err

    async def _committed(self, commit: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await commit()
        except Exception as exc:
            raise self._failed("rename", exc) from exc

    def abort(self) -> None:
        """Drop the upload: forget queued data, release the handle, and remove the temporary
        file or keep its confirmed part for a resume. A backend out of space keeps nothing:
        the partial would hold the space the resume needs."""
        keep = self._resumable and not isinstance(self._failure, NoSpace | QuotaExceeded)
        if keep and self._discard is not None and not self.closed:
            self._settle_writes()
        self._buffer.clear()
        self._window.drain()
        self.close_handle()
        discard, self._discard = self._discard, None
        if discard is not None:
            discard(self.confirmed if keep else None, self.stalled)

    def _settle_writes(self) -> None:
        """Send what is buffered and wait for the writes in flight, unless the connection
        failed or stalled: every byte that reached the gateway counts for a resume."""
        with contextlib.suppress(GatewayError):
            if self._buffer and self._failure is None:
                self._submit(bytes(self._buffer))
            while self._window and not self.stalled:
                self._collect()
