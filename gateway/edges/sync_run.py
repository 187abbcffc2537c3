"""Running ``ftp-sftp-gateway sync`` for one user or every user of routes.

Who is synced, with which credentials (the user's own password, or the backends' service
accounts), how many users at once, and the progress display. What happens to each file is
gateway.features.sync's. A run plans every user first (so the display knows how many bytes are to
go), then copies; both passes run ``jobs`` users at a time.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

from tqdm import tqdm

from gateway.config import GatewayConfig, RouteConfig, ServiceAccount
from gateway.core import errors
from gateway.core.routing import match_route, render_root
from gateway.core.storage import Kind, Storage
from gateway.edges.logins import Logins, open_pair
from gateway.features.sync import Journal, Plan, Summary, Trees, apply, plan


@dataclass(frozen=True)
class Job:
    """One user's tree to sync."""

    route: RouteConfig
    user: str
    password: str | None = None  # the user's own; None: the backends' service accounts


@dataclass(frozen=True)
class Options:
    """How the run goes (the command line's flags)."""

    dry_run: bool = False
    overwrite: bool = False
    jobs: int = 4


class NoService(Exception):
    """A route's backends lack the service accounts a run without passwords needs."""


def services(cfg: GatewayConfig, route: RouteConfig) -> tuple[ServiceAccount, ServiceAccount]:
    """The (legacy, SFTP) service accounts of ``route``; NoService names the missing key."""
    assert route.legacy is not None
    found = []
    for name in (route.legacy, route.backend):
        service = cfg.backends[name].service
        if service is None:
            raise NoService(
                f"backends.{name}.service is not set: sync --route/--all logs in with an account that "
                "reaches every user's tree (user, password_file or key_file, root: /home/{user})"
            )
        found.append(service)
    return found[0], found[1]


def route_users(cfg: GatewayConfig, route: RouteConfig, logins: Logins) -> list[str]:
    """Every user of ``route`` with a tree on the legacy server: the directories next to
    ``{user}`` in the legacy service root whose name the route matches."""
    legacy, _ = services(cfg, route)
    assert route.legacy is not None
    storage = logins.backends[route.legacy].login(legacy.user, legacy.password)
    try:
        listed = [e.name for e in storage.list_dir(legacy.users_dir) if e.attrs.kind is Kind.DIR]
    finally:
        storage.close()
    users = []
    for name in sorted(listed):
        local = cfg.users.get(name)
        matched = match_route(cfg.routes, name, groups=local.groups if local else frozenset())
        if matched is not None and matched.name == route.name:
            users.append(name)
    return users


@dataclass
class Opened:
    """One job's two logged-in trees."""

    trees: Trees
    owner: tuple[int, int] | None  # what a service account's copies are given
    close: Callable[[], None]


def open_job(cfg: GatewayConfig, logins: Logins, job: Job) -> Opened:
    """Log in to both sides of ``job``; GatewayError with the reason if one refuses."""
    route = job.route
    if job.password is not None:
        legacy, sftp = open_pair(logins, route, job.user, job.password)
        trees = Trees(legacy.storage, legacy.root, sftp.storage, sftp.root, route.name_encoding)
        return Opened(trees, None, lambda: _close(legacy.storage, sftp.storage))
    assert route.legacy is not None
    opened: list[Storage] = []

    def close() -> None:
        _close(*opened)

    try:
        roots = []
        for backend, service in zip((route.legacy, route.backend), services(cfg, route), strict=True):
            storage = logins.backends[backend].login(
                service.user, service.password, service.key_file, job.user
            )
            opened.append(storage)
            root = render_root(service.root, job.user, storage.home())
            try:
                attrs = storage.stat(root)
            except errors.NotFound:
                raise errors.NotFound(f"{job.user}'s tree {root} is not on backend {backend}") from None
            if attrs.kind is not Kind.DIR:
                raise errors.NotADirectory(
                    f"{job.user}'s tree {root} on backend {backend} is not a directory"
                )
            roots.append((root, attrs))
    except BaseException:
        close()
        raise
    (source_root, _), (target_root, target) = roots
    trees = Trees(opened[0], source_root, opened[1], target_root, route.name_encoding)
    return Opened(trees, (target.uid, target.gid), close)


def _close(*storages: Storage) -> None:
    for storage in storages:
        storage.close()


class Display:
    """The progress of a whole run: a bar with bytes, rate and ETA on a terminal, plain
    lines otherwise (every file's action, and the totals at most every few seconds)."""

    EVERY = 5.0  # seconds between two plain total lines

    def __init__(self, total: int, out: TextIO, tty: bool, label: Callable[[Job], str]) -> None:
        self.total, self.out, self.tty, self.label = total, out, tty, label
        self.done, self.started = 0, time.monotonic()
        self._said = self.started  # the first plain totals line after EVERY seconds
        self._lock = threading.Lock()
        self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=out, disable=not tty)

    def for_job(self, job: Job) -> JobProgress:
        """The gateway.features.sync Progress of one job."""
        return JobProgress(self, self.label(job))

    def say(self, line: str) -> None:
        """A line above the bar (or a plain line)."""
        with self._lock:
            if self.tty:
                self.bar.write(line, file=self.out)
            else:
                print(line, file=self.out, flush=True)

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self.done += nbytes
            self.bar.update(nbytes)
            now = time.monotonic()
            if not self.tty and nbytes and now - self._said >= self.EVERY:
                self._said = now
                print(self.totals(), file=self.out, flush=True)

    def totals(self) -> str:
        """Bytes so far, rate and ETA, as one line."""
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        left = self.total - self.done
        eta = tqdm.format_interval(left / rate) if rate > 0 and left > 0 else "-"
        size = tqdm.format_sizeof
        return (
            f"sync: {size(self.done, 'B', 1024)} of {size(self.total, 'B', 1024)}, "
            f"{size(rate, 'B/s', 1024)}, ETA {eta}"
        )

    def close(self) -> None:
        """End the bar (plain lines: the last totals)."""
        self.bar.close()
        if not self.tty and self.total:
            print(self.totals(), file=self.out, flush=True)


@dataclass
class JobProgress:
    """One job's view of the Display."""

    display: Display
    label: str

    def step(self, relative: str, action: str) -> None:
        if action != "skip" or not self.display.tty:
            self.display.say(f"{self.label}{action}: {relative}")
        self.display.bar.set_description_str(f"{self.label}{relative}", refresh=False)

    def advance(self, nbytes: int) -> None:
        self.display.advance(nbytes)


@dataclass
class Outcome:
    """What became of one job."""

    job: Job
    summary: Summary | None = None
    problem: str | None = None  # the job could not run (login refused, tree missing)


def run(
    cfg: GatewayConfig,
    logins: Logins,
    jobs: list[Job],
    options: Options,
    journal: Callable[[Job], Journal | None],
    out: TextIO = sys.stderr,
) -> list[Outcome]:
    """Plan every job, then carry the plans out, ``options.jobs`` users at a time."""
    many = len(jobs) > 1
    outcomes = {job: Outcome(job) for job in jobs}
    plans: dict[Job, Plan] = {}

    def planned(job: Job) -> None:
        with _opened(cfg, logins, job, journal) as (opened, kept):
            plans[job] = plan(opened.trees, options.overwrite, kept)

    _each(jobs, options.jobs, planned, outcomes)
    total = sum(p.bytes_to_copy for p in plans.values())
    display = Display(total, out, out.isatty(), lambda job: f"[{job.user}] " if many else "")

    def carried_out(job: Job) -> None:
        with _opened(cfg, logins, job, journal) as (opened, kept):
            progress = display.for_job(job)
            outcomes[job].summary = apply(
                opened.trees,
                plans[job].steps,
                progress,
                options.dry_run,
                kept,
                opened.owner,
                options.overwrite,
            )

    try:
        _each([job for job in jobs if job in plans], options.jobs, carried_out, outcomes)
    finally:
        display.close()
    return list(outcomes.values())


def _each(jobs: list[Job], at_once: int, work: Callable[[Job], None], outcomes: dict[Job, Outcome]) -> None:
    """``work(job)`` for every job, ``at_once`` at a time; a job's failure is its outcome.

    The journal's database failing (StoreError) ends the run, and so does Ctrl-C, without
    waiting for the copies under way: what reached SFTP is in place (a file's part in its
    partial), and the next run goes on from there.
    """
    pool = concurrent.futures.ThreadPoolExecutor(max(1, at_once), thread_name_prefix="sync")
    futures = {pool.submit(work, job): job for job in jobs}
    try:
        for future in concurrent.futures.as_completed(futures):
            job = futures[future]
            try:
                future.result()
            except (errors.LoginRefused, errors.BackendUnavailable) as err:
                outcomes[job].problem = f"cannot log in: {err.reply()}"
            except errors.GatewayError as err:  # the user's tree is missing, or cannot be listed
                outcomes[job].problem = err.text if err.code in (550, 553) else err.reply()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


@contextlib.contextmanager
def _opened(
    cfg: GatewayConfig, logins: Logins, job: Job, journal: Callable[[Job], Journal | None]
) -> Iterator[tuple[Opened, Journal | None]]:
    """The job's trees and journal (opened in the calling thread: an SQLite connection
    belongs to its thread), closed on the way out."""
    opened = open_job(cfg, logins, job)
    try:
        kept = journal(job)
        try:
            yield opened, kept
        finally:
            if kept is not None:
                kept.close()
    finally:
        opened.close()


def summary_lines(outcomes: list[Outcome], dry_run: bool) -> Iterator[str]:
    """The end of a run: a line per user (and a total), then every problem."""
    verb = "would copy" if dry_run else "copied"
    many = len(outcomes) > 1
    total = Summary()
    for outcome in outcomes:
        prefix = f"{outcome.job.user}: " if many else ""
        if outcome.summary is None:
            yield f"{prefix}not synced: {outcome.problem}"
            continue
        yield prefix + _line(outcome.summary, verb)
        for name in ("files", "copied", "skipped", "bytes_copied"):
            setattr(total, name, getattr(total, name) + getattr(outcome.summary, name))
        for name in ("mismatches", "errors", "conflicts"):
            getattr(total, name).extend(f"{prefix}{p}" for p in getattr(outcome.summary, name))
    if many:
        yield f"all {len(outcomes)} users: " + _line(total, verb)
    for conflict in total.conflicts:
        yield f"  conflict: {conflict}"
    yield from (f"  {error}" for error in total.errors)
    yield from (f"  {m}: SHA-256 differs after the copy" for m in total.mismatches)


def _line(summary: Summary, verb: str) -> str:
    return (
        f"{summary.files} files: {summary.copied} {verb} ({summary.bytes_copied} bytes), "
        f"{summary.skipped} already matching, {len(summary.conflicts)} conflicts, "
        f"{len(summary.mismatches)} mismatches, {len(summary.errors)} errors"
    )


def failed(outcomes: list[Outcome]) -> bool:
    """True if anything needs the operator: a user not synced, a conflict, an error."""
    return any(
        o.summary is None or o.summary.errors or o.summary.mismatches or o.summary.conflicts for o in outcomes
    )
