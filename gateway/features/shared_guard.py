"""One guard across gateway instances: failed logins and unbans shared through the PostgreSQL
usage record (``guard.shared``).

Every instance writes its guard's events (a failure of a user from an address, an unban)
to the ``guard_events`` table and reads the other instances' events about once a second,
applying each to its own guard as the workers of one instance already do
(gateway.features.guard): all instances score the same failures, so all reach the same bans,
and a client spread over N instances gets ``guard.max_failures`` attempts in all. An
instance that starts replays the events still relevant (failures within the window, bans
still running), each at the time it happened.

The database is never in a login's path: events are queued and written by this module's
thread, and read into the local guard. When the database is unreachable the guard goes on
with what it knows (the failures made here); the outage is logged once and counted, events
are kept (up to ``QUEUE_LIMIT``) and written when it returns, and the instance catches up
on the others' events of the last ``_CATCH_UP`` seconds.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

from gateway.config import GuardConfig
from gateway.features.guard import Event
from gateway.features.usage.database import Database, StoreError, errors, open_database, shown

log = logging.getLogger("gateway.guard")

#: Seconds between two reads of the other instances' events (a ban reaches them within about this).
POLL_EVERY = 1.0
#: Events waiting to be written while the database is away; beyond, the oldest are dropped.
QUEUE_LIMIT = 10_000
#: Events read per poll at most (an attack from many addresses is read over several polls).
_BATCH = 5_000
#: Events replayed at start at most (the newest).
_REPLAY = 100_000
#: Seconds of the others' events read at each poll (a window, because ids can commit out of
#: order: an event with a smaller id may become visible after a larger one was read).
_CATCH_UP = 30.0

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS guard_events (
    id BIGSERIAL PRIMARY KEY, at TIMESTAMPTZ NOT NULL DEFAULT now(), instance TEXT NOT NULL,
    op TEXT NOT NULL, source TEXT NOT NULL, "user" TEXT NOT NULL DEFAULT '')""",
    "CREATE INDEX IF NOT EXISTS guard_events_at ON guard_events (at)",
)


class SharedGuard:
    """Carries one process's guard events to and from the other instances (thread-safe ``publish``)."""

    def __init__(
        self,
        cfg: GuardConfig,
        location: str,
        password: str | None,
        apply: Callable[[Event, float], None],
        instance: str | None = None,
        on_error: Callable[[], None] = lambda: None,
    ) -> None:
        self._location, self._password, self._apply, self._on_error = location, password, apply, on_error
        #: Events of this instance are not applied again (its workers share them directly).
        self.instance = instance or secrets.token_hex(8)
        #: Events older than this no longer change any guard: failures out of the window,
        #: bans over, earlier bans forgotten.
        self._horizon = max(cfg.window, cfg.max_ban_time, cfg.forget_after) + cfg.window
        self._outbox: deque[Event] = deque(maxlen=QUEUE_LIMIT)
        self._seen: dict[int, float] = {}  # event ids applied, with when (pruned after _CATCH_UP)
        self._last = 0  # the largest event id applied
        self._db: Database | None = None
        self._away = False  # the database is unreachable (logged once per outage)
        self._replayed = False
        self._pruned_at = 0.0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="guard-shared", daemon=True)

    def start(self) -> SharedGuard:
        """Create the table if needed, replay what is still relevant, then poll in the background."""
        try:
            self._connect()
            self._poll()
        except StoreError:
            pass  # logged; the thread retries
        except errors() as err:
            self._failed(err)
        self._thread.start()
        return self

    def publish(self, event: Event) -> None:
        """Queue one of this process's events for the other instances (never blocks)."""
        self._outbox.append(event)
        self._wake.set()

    def close(self) -> None:
        """Write what is queued (briefly) and stop."""
        self._stop.set()
        self._wake.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(POLL_EVERY)
            self._wake.clear()
            try:
                self._connect()
                self._flush()
                self._poll()
                self._prune()
            except StoreError:
                pass  # logged by _failed
            except errors() as err:
                self._failed(err)
        try:  # the last events of this instance, if the database takes them now
            self._connect()
            self._flush()
        except StoreError:
            pass
        except errors() as err:
            self._failed(err)
        if self._db is not None:
            self._db.close()

    def _connect(self) -> None:
        if self._db is not None:
            return
        try:
            db = open_database(self._location, self._password)
            with db.write_transaction():
                for statement in _SCHEMA:
                    db.execute(statement)
        except StoreError as err:
            self._failed(err)
            raise
        except errors() as err:
            self._failed(err)
            raise StoreError(str(err)) from err
        self._db = db
        if self._away:
            self._away = False
            log.warning(
                "guard: shared store %s reachable again; sharing failures and bans", shown(self._location)
            )

    def _failed(self, err: Exception) -> None:
        self._on_error()
        if self._db is not None:
            self._db.close()
            self._db = None
        if not self._away:
            self._away = True
            log.error(
                "guard: shared store %s unreachable (%s); this instance's guard goes on alone",
                shown(self._location),
                str(err).strip(),
            )

    def _flush(self) -> None:
        assert self._db is not None
        while self._outbox:
            events = list(self._outbox)
            with self._db.conn.transaction():  # PostgreSQL only; no need to wait for usage writers
                for event in events:
                    self._db.execute(
                        'INSERT INTO guard_events (instance, op, source, "user") VALUES (?, ?, ?, ?)',
                        (self.instance, event.get("op", ""), event.get("source", ""), event.get("user", "")),
                    )
            for _ in events:
                self._outbox.popleft()

    def _poll(self) -> None:
        """Apply the other instances' events not applied yet, each at the age it has."""
        assert self._db is not None
        columns = 'SELECT id, op, source, "user", extract(epoch FROM now() - at) FROM guard_events'
        if not self._replayed:  # the newest events within the horizon, applied oldest first
            rows = self._db.execute(
                f"{columns} WHERE at >= now() - make_interval(secs => ?) AND instance <> ? "
                "ORDER BY id DESC LIMIT ?",
                (self._horizon, self.instance, _REPLAY),
            ).fetchall()[::-1]
            self._replayed = True
        else:  # ids a little below the last applied too: they may have committed late
            rows = self._db.execute(
                f"{columns} WHERE at >= now() - make_interval(secs => ?) AND instance <> ? AND id > ? "
                "ORDER BY id LIMIT ?",
                (_CATCH_UP, self.instance, self._last - _BATCH // 5, _BATCH),
            ).fetchall()
        now = time.monotonic()
        for event_id, op, source, user, age in rows:
            if event_id in self._seen:
                continue
            self._seen[event_id] = now
            self._last = max(self._last, event_id)
            try:
                self._apply({"op": op, "source": source, "user": user}, float(age))
            except Exception:  # a bad event must not end the sharing
                log.exception("guard: event %d from another instance not applied", event_id)

    def _prune(self) -> None:
        now = time.monotonic()
        for event_id in [i for i, seen in self._seen.items() if now - seen > 2 * _CATCH_UP]:
            del self._seen[event_id]
        if self._db is not None and now - self._pruned_at >= 60:
            self._pruned_at = now
            self._db.execute(
                "DELETE FROM guard_events WHERE at < now() - make_interval(secs => ?)", (self._horizon,)
            )
