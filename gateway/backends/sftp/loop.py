"""One background asyncio loop thread that owns every asyncssh object in the process.

FTP session threads never touch asyncssh directly: they submit coroutines here and wait
on the result with a timeout (asyncssh is not thread-safe; docs/architecture.md, "Architecture").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

from gateway.core.errors import BackendTimeout

T = TypeVar("T")

#: Threads of the loop's executor for blocking helpers (asyncssh builds every connection's
#: options there, the readiness check reads known_hosts there): a fixed few, all started
#: with the loop, instead of asyncio's default of up to min(32, cores + 4) started on demand
#: and kept for the life of the process. A thread count that does not drift with load is
#: also what lets bench/soak.py and the fuzz test tell a leak.
EXECUTOR_THREADS = 4


def _new_event_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    """uvloop's loop (a default dependency where it has wheels), else asyncio's own; and its name."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop(), "asyncio"
    return uvloop.new_event_loop(), "uvloop"


class BackgroundLoop:
    """An event loop running in a daemon thread, with blocking helpers for other threads."""

    def __init__(self) -> None:
        self.loop, self.kind = _new_event_loop()  # kind: "uvloop" or "asyncio"
        self._thread = threading.Thread(target=self._run, name="sftp-loop", daemon=True)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            EXECUTOR_THREADS, thread_name_prefix="sftp-loop-worker"
        )

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def start(self) -> BackgroundLoop:
        """Start the loop thread and its executor's threads; returns self."""
        _start_all(self._executor, EXECUTOR_THREADS)
        self.loop.set_default_executor(self._executor)
        self._thread.start()
        return self

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T]) -> Call[T]:
        """Schedule ``coro`` on the loop for one thread that waits for it (cheaper than ``submit``)."""
        return Call(self.loop, coro)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the loop and wait up to ``timeout`` seconds for its result; on
        timeout it is cancelled and BackendTimeout raised."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("BackgroundLoop.run called on the loop's own thread (would deadlock)")
        return Call(self.loop, coro).wait(timeout)

    def in_loop_thread(self) -> bool:
        """True when called from the loop's own thread."""
        return threading.current_thread() is self._thread

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what still runs on the loop, stop it and join its thread."""

        async def cancel_tasks() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.loop.is_running():
            with contextlib.suppress(Exception):
                self.run(cancel_tasks(), timeout)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)


class Call(Generic[T]):
    """One coroutine run on the loop for one waiting thread: a task, and a lock it releases.

    Every backend command and transfer block of every session comes through here;
    run_coroutine_threadsafe (a thread-safe future chained to the task both ways, a
    condition variable per wait) costs more per call.
    """

    __slots__ = ("_coro", "_done_flag", "_error", "_finished", "_loop", "_result", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> None:
        self._loop, self._coro = loop, coro
        self._finished = threading.Lock()
        self._finished.acquire()  # released by the loop when the task is done
        self._task: asyncio.Task[T] | None = None
        self._result: T | None = None
        self._error: BaseException | None = None
        self._done_flag = False
        loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self._task = self._loop.create_task(self._coro)
        self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[T]) -> None:
        if task.cancelled():
            self._error = concurrent.futures.CancelledError()
        elif (error := task.exception()) is not None:
            self._error = error
        else:
            self._result = task.result()
        self._done_flag = True
        self._finished.release()

    def done(self) -> bool:
        """True once the coroutine has ended (any thread)."""
        return self._done_flag

    def cancel(self) -> bool:
        """Cancel the coroutine (any thread); its result no longer matters."""
        self._loop.call_soon_threadsafe(self._cancel)
        return True

    def _cancel(self) -> None:
        if self._task is not None:  # always set: _start was scheduled first
            self._task.cancel()

    def wait(self, timeout: float) -> T:
        """The coroutine's result or exception; past ``timeout`` seconds, BackendTimeout (it is cancelled)."""
        if not self._finished.acquire(timeout=timeout):
            self.cancel()
            raise BackendTimeout()
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


def _start_all(executor: concurrent.futures.ThreadPoolExecutor, count: int) -> None:
    """Make ``executor`` start its ``count`` threads now: it starts one per submit that finds
    no idle thread, so ``count`` tasks that wait for each other start them all."""
    barrier = threading.Barrier(count + 1)
    for _ in range(count):
        executor.submit(barrier.wait, 10)
    barrier.wait(10)
