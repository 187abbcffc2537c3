"""Command line: run, check-config, hash-password, sync, report, report-db, bans, unban, demo (the edge).

Over 400 lines: one function per subcommand and the argument parser; each imports what it
runs when it runs (``--help`` and ``check-config`` stay quick), and the work itself lives in
the modules they call (``gateway.edges.sync_run``, ``gateway.edges.connectivity``,
``gateway.features.usage``).
"""

from __future__ import annotations

import argparse
import base64
import calendar
import functools
import getpass
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import __version__, config
from gateway.core import errors, logs
from gateway.edges import malloc
from gateway.edges.workers import early_reloads, remember_reload

if TYPE_CHECKING:  # imported where used: `--help` and check-config stay quick
    from gateway.edges.logins import Logins
    from gateway.edges.sync_run import Job

log = logging.getLogger("gateway")


def _load(path: str) -> config.GatewayConfig | None:
    """The validated config, or None after printing every problem."""
    from gateway.edges.app import backend_problems

    try:
        cfg = config.load(path)
        problems = backend_problems(cfg)
    except config.ConfigError as err:
        problems = err.problems
    if not problems:
        return cfg
    print(f"{path}: {len(problems)} problem(s):", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return None


def _serve(cfg: config.GatewayConfig, banner: str | None = None, config_path: str | None = None) -> int:
    malloc.limit_arenas()  # (SIGHUP: main() already keeps a reload asked for during the start)
    if banner:
        print(banner, flush=True)
    if cfg.report.database:  # before any worker: a bad file must stop the start, not loop restarts
        from gateway.features.usage.store import StoreError, connect

        try:
            connect(cfg.report.database, password=cfg.report.password).close()
        except StoreError as err:
            print(f"report.database: {err} (fix or move the file, or set another path)", file=sys.stderr)
            return 2
    if cfg.workers > 1:
        from gateway.edges.workers import listen_sockets, supervise

        try:
            sock, implicit = listen_sockets(cfg)
        except OSError as err:
            print(f"cannot listen on {_ports(cfg)}: {err.strerror or err}", file=sys.stderr)
            return 1
        return supervise(cfg, sock, implicit, functools.partial(_serve_one, config_path=config_path))
    return _serve_one(cfg, config_path=config_path)


def _ports(cfg: config.GatewayConfig) -> str:
    ports = [cfg.listen.port] + ([cfg.tls.implicit_port] if cfg.tls.enabled and cfg.tls.implicit_port else [])
    return f"{cfg.listen.address} port {' and '.join(map(str, ports))}"


def _serve_one(
    cfg: config.GatewayConfig,
    sock: socket.socket | None = None,
    implicit: socket.socket | None = None,
    adapt: Callable[[config.GatewayConfig], config.GatewayConfig] = lambda cfg: cfg,
    config_path: str | None = None,
) -> int:
    """Run one gateway process until SIGTERM/SIGINT (SIGHUP reloads ``config_path``)."""
    from gateway.edges.app import Gateway, ListenError
    from gateway.features.usage.store import StoreError

    try:
        gateway = Gateway(cfg, sock, implicit, config_path, adapt)
    except ListenError as err:
        print(err, file=sys.stderr)
        return 1
    except StoreError as err:
        print(f"report.database: {err} (fix or move the file, or set another path)", file=sys.stderr)
        return 2

    malloc.trim_periodically()  # in each process: threads do not survive the workers' fork
    signal.signal(signal.SIGTERM, gateway.on_signal)
    signal.signal(signal.SIGHUP, gateway.on_signal)
    while early_reloads:
        gateway.on_signal(early_reloads.pop())
    # A worker (sock given) leaves SIGINT to its supervisor: Ctrl-C reaches the whole process
    # group, and the supervisor's forwarded SIGTERM would otherwise be a second, "stop now".
    signal.signal(signal.SIGINT, gateway.on_signal if sock is None else signal.SIG_IGN)
    host, port = gateway.address
    tls = {"off": "plain FTP only", "optional": "FTPS optional", "required": "FTPS required"}[cfg.tls.mode]
    loop = gateway.logins.loop.kind
    log.info(
        "ftp-sftp-gateway %s listening on %s:%d, %s, SSH on %s (pid %d)",
        *(__version__, host, port, tls, loop, os.getpid()),
    )
    if gateway.implicit_address is not None:
        log.info("implicit FTPS on %s:%d", *gateway.implicit_address)
    gateway.serve_forever()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Serve with a config file."""
    cfg = _load(args.config)
    if cfg is None:
        return 2
    logs.setup(cfg.log.level, cfg.log.format, cfg.log.transfer_log)
    return _serve(cfg, config_path=args.config)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file: exit 0, or list every problem and exit 2."""
    cfg = _load(args.config)
    if cfg is None:
        return 2
    if args.print:
        import yaml

        print(yaml.safe_dump(config.document(cfg), sort_keys=False), end="")
        return 0
    routes = ", ".join(f"{r.name}({r.user}->{r.backend})" for r in cfg.routes)
    print(f"{args.config}: OK: {len(cfg.backends)} backend(s), routes {routes}")
    if args.user and not args.connect:
        print("check-config: --user is for --connect", file=sys.stderr)
        return 2
    return _connect(cfg, args) if args.connect else 0


def _connect(cfg: config.GatewayConfig, args: argparse.Namespace) -> int:
    """``--connect``: 0 if every backend (and the user's login) answered as it should, else 1."""
    from gateway.edges.connectivity import check
    from gateway.edges.logins import Logins
    from gateway.features.metrics import Metrics

    if args.password_env and args.password_env not in os.environ:
        print(f"check-config: --password-env {args.password_env}: that variable is not set", file=sys.stderr)
        return 2
    password = None
    if args.user:
        password = os.environ[args.password_env] if args.password_env else _read_password()
    logs.setup("critical")  # the lines below say what failed; the gateway's own log would repeat it
    logins = Logins(cfg, Metrics())
    failed = 0
    try:
        for fine, line in check(cfg, logins, args.user, password):
            print(f"  {'ok  ' if fine else 'FAIL'} {line}")
            failed += not fine
    finally:
        logins.close_backends()
    print(
        f"{args.config}: " + (f"{failed} connection check(s) failed" if failed else "every backend answered")
    )
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Gateway plus an embedded SFTP server serving a local folder, for a first run."""
    from gateway.backends.sftp.demo_server import start_demo_sftp
    from gateway.backends.sftp.loop import BackgroundLoop

    logs.setup(args.log_level)
    data = Path(args.data).resolve()
    data.mkdir(parents=True, exist_ok=True)
    welcome = data / "welcome.txt"
    if not welcome.exists():
        welcome.write_text("Hello from ftp-sftp-gateway: this file lives on the demo SFTP server.\n")
    metrics_port = args.metrics_port or _free_port()
    state = Path(tempfile.mkdtemp(prefix="ftp-sftp-gateway-demo-"))  # the SFTP server's keys
    try:
        sftp_port, known_hosts = start_demo_sftp(BackgroundLoop().start(), data, state, "demo", "demo")
        cfg = config.parse(
            {
                "listen": {
                    "address": "127.0.0.1",
                    "port": args.port,
                    "passive_ports": list(args.passive_ports),
                },
                "backends": {
                    "demo": {"host": "127.0.0.1", "port": sftp_port, "known_hosts": str(known_hosts)}
                },
                "routes": [{"match": {"user": "*"}, "backend": "demo", "auth": "passthrough", "root": "~"}],
                "limits": {"failed_login_delay": 1},
                "metrics": {"address": "127.0.0.1", "port": metrics_port},
            }
        )
        low, high = args.passive_ports
        banner = (
            f"Demo gateway on ftp://127.0.0.1:{args.port}/ -> embedded SFTP server 127.0.0.1:{sftp_port}\n"
            f"serving {data} (user demo, password demo), passive ports {low}-{high}. Try:\n"
            f"  curl ftp://demo:demo@127.0.0.1:{args.port}/\n"
            f"  curl ftp://demo:demo@127.0.0.1:{args.port}/welcome.txt\n"
            f"  curl -T somefile ftp://demo:demo@127.0.0.1:{args.port}/\n"
            f"Metrics: curl http://127.0.0.1:{metrics_port}/metrics\n"
            "Stop with Ctrl-C."
        )
        return _serve(cfg, banner)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for the demo's metrics listener)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def _port_range(value: str) -> tuple[int, int]:
    """``--passive-ports``: LOW-HIGH."""
    low, _, high = value.partition("-")
    try:
        first, last = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: use LOW-HIGH, e.g. 30000-30100") from None
    if not 1024 <= first <= last <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: ports 1024-65535, LOW <= HIGH")
    return first, last


def cmd_hash_password(args: argparse.Namespace) -> int:
    """Print the password_hash for a gateway-local user (`users.NAME.password_hash`)."""
    from gateway.core.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("the two passwords differ", file=sys.stderr)
            return 1
    else:  # piped: one line, e.g. from a secrets manager
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("empty password refused", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Copy users' trees from their route's legacy FTP server to its SFTP backend."""
    from gateway.edges import sync_run
    from gateway.edges.logins import Logins
    from gateway.features.metrics import Metrics
    from gateway.features.usage.journal import Journal
    from gateway.features.usage.store import StoreError

    cfg = _load(args.config)
    if cfg is None:
        return 2
    logs.setup("warning")
    logins = Logins(cfg, Metrics())
    try:
        jobs = _sync_jobs(cfg, args, logins)
        if isinstance(jobs, str):
            print(f"sync: {jobs}", file=sys.stderr)
            return 2
        database = cfg.report.database

        def journal(job: sync_run.Job) -> Journal | None:
            return Journal(database, job.route.name, job.user, cfg.report.password) if database else None

        options = sync_run.Options(args.dry_run, args.overwrite, args.jobs)
        try:
            outcomes = sync_run.run(cfg, logins, jobs, options, journal)
        except StoreError as err:  # the journal's database: unreadable, locked past its timeout, disk full
            print(f"\nsync: {err}; what was copied so far is in place: run sync again", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\nsync: interrupted; what was copied so far is in place: run sync again", file=sys.stderr)
            os._exit(130)  # not waiting for the copies under way (their threads would hold the exit)
    except sync_run.NoService as err:
        print(f"sync: {err}", file=sys.stderr)
        return 2
    except errors.GatewayError as err:
        print(f"sync: cannot list the route's users on the legacy server: {err.reply()}", file=sys.stderr)
        return 1
    finally:
        logins.close_backends()
    for line in sync_run.summary_lines(outcomes, args.dry_run):
        print(line)
    if database is None and any(o.summary and o.summary.conflicts for o in outcomes):
        print("  (report.database is not set: without sync's journal every difference on SFTP is a conflict)")
    return 1 if sync_run.failed(outcomes) else 0


def _sync_jobs(cfg: config.GatewayConfig, args: argparse.Namespace, logins: Logins) -> list[Job] | str:
    """Whose trees ``sync`` copies, with which credentials; or why it cannot start."""
    from gateway.core.routing import match_route
    from gateway.edges import sync_run

    by_name = {route.name: route for route in cfg.routes}
    if args.route and args.route not in by_name:
        return f"no route named {args.route!r} (routes: {', '.join(by_name)})"
    if not (args.user or args.route or args.all):
        return "name --user USER, --route NAME or --all"
    pairs: list[tuple[config.RouteConfig | None, str | None]] = []
    if args.user:
        for user in args.user:
            local = cfg.users.get(user)
            groups = local.groups if local else frozenset()
            route = by_name[args.route] if args.route else match_route(cfg.routes, user, groups=groups)
            pairs.append((route, user))
    elif args.route:
        pairs = [(by_name[args.route], None)]
    else:
        phases = args.phase.split(",")
        pairs = [(route, None) for route in cfg.routes if route.phase in phases and route.legacy]
        if not pairs:
            return f"no route with a legacy FTP backend in phase {args.phase}"
    for route, user in pairs:
        if route is None or route.legacy is None:
            return "no route with a legacy FTP backend" + (f" for user {user!r}" if user else "")
        if route.phase not in config.LEGACY_PHASES and not args.force:
            # The SFTP side is where these users' data now lives: copying the legacy tree
            # over it would bring back old versions of files changed since the switch.
            return (
                f"route {route.name!r} is in phase {route.phase!r}: its users' data lives on SFTP now; "
                "sync is for the legacy and shadow phases (--force runs it anyway; conflicts are still kept)"
            )
    if args.password_env and args.password_env not in os.environ:
        return f"--password-env {args.password_env}: that variable is not set"
    route, user = pairs[0]
    assert route is not None and route.legacy is not None
    if len(pairs) == 1 and user is not None:
        with_service = all(cfg.backends[name].service for name in (route.legacy, route.backend))
        if args.password_env or not with_service:  # the user's own password
            password = os.environ[args.password_env] if args.password_env else _read_password()
            return [sync_run.Job(route, user, password)]
    elif args.password_env:
        return (
            "--password-env is for one --user: several users are copied with the backends' service accounts"
        )
    jobs = []
    for route, user in pairs:
        assert route is not None
        sync_run.services(cfg, route)  # NoService names the missing key
        users = [user] if user is not None else sync_run.route_users(cfg, route, logins)
        jobs += [sync_run.Job(route, name) for name in users]
    return jobs or "no users: the route matches none of the directories in the legacy service root"


def _jobs(value: str) -> int:
    """``--jobs``: 1 to 32."""
    if not value.isdigit() or not 1 <= int(value) <= 32:
        raise argparse.ArgumentTypeError(f"{value!r}: a number of users from 1 to 32")
    return int(value)


_SINCE = re.compile(r"^(\d+)([mhdw])$")
_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def since_arg(value: str) -> float:
    """``--since``: ``30m``, ``12h``, ``7d``, ``2w`` ago, or a date ``YYYY-MM-DD`` (UTC)."""
    if match := _SINCE.match(value):
        return time.time() - int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        return float(calendar.timegm(time.strptime(value, "%Y-%m-%d")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: use 30m, 12h, 7d, 2w or a date YYYY-MM-DD") from None


def cmd_report(args: argparse.Namespace) -> int:
    """Print the migration readiness report from the usage database."""
    from gateway.features.usage import readiness, render, store

    try:
        cfg = config.load(args.config)
    except config.ConfigError as err:
        print(f"{args.config}: {len(err.problems)} problem(s):", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    database = cfg.report.database
    if database is None:
        print(
            f"{args.config}: report.database is not set, so nothing is recorded: add\n"
            "  report:\n    database: /var/lib/ftp-sftp-gateway/usage.sqlite\n"
            "and restart the gateway; the report covers sessions from then on.",
            file=sys.stderr,
        )
        return 2
    if not config.is_postgres(database) and not Path(database).exists():
        print(f"{database}: no usage recorded yet (the gateway creates it when it starts)", file=sys.stderr)
        return 1
    try:
        password = cfg.report.password
        rows = store.read(database, args.since, args.user, password)
        if args.user is not None and not rows and not store.read(database, None, args.user, password):
            print(
                f"report: no session of user {args.user!r} is recorded (names are case-sensitive)",
                file=sys.stderr,
            )
            return 1
    except store.StoreError as err:
        print(str(err), file=sys.stderr)
        return 1
    now = time.time()
    evidence = readiness.Evidence(cfg.report.ready_after_transfers, cfg.report.ready_after_days)
    reports = readiness.assess(rows, now, evidence, args.since)
    if args.format == "json":
        sys.stdout.write(render.to_json(reports, args.since, now))
    elif args.format == "csv":
        sys.stdout.write(render.to_csv(reports))
    else:
        sys.stdout.write(render.to_table(reports, args.since, now))
    return 0


def cmd_report_db_copy(args: argparse.Namespace) -> int:
    from gateway.features.usage import store
    from gateway.features.usage.database import shown

    source = getattr(args, "from")
    if config.is_postgres(source) or not Path(source).is_file():
        print(f"report-db copy: --from must be an existing SQLite file, got {source}", file=sys.stderr)
        return 2
    password = os.environ.get(args.password_env) if args.password_env else None
    if args.password_env and not password:
        print(f"report-db copy: environment variable {args.password_env} is empty or unset", file=sys.stderr)
        return 2
    try:
        rows, entries = store.copy(source, args.to, password, args.merge)
    except store.StoreError as err:
        print(f"report-db copy: {err}", file=sys.stderr)
        return 1
    print(f"copied {rows} usage rows and {entries} sync journal entries from {source} to {shown(args.to)}")
    return 0


def cmd_bans(args: argparse.Namespace) -> int:
    """List the brute-force guard's bans in force, per gateway process."""
    cfg = _load(args.config)
    if cfg is None:
        return 2
    failed = 0
    for where, answer in _ask_processes(cfg, "GET", "/admin/bans"):
        if not isinstance(answer, dict):
            print(f"{where}: {answer}", file=sys.stderr)
            failed += 1
            continue
        bans = answer["bans"]
        print(f"{where}: {len(bans)} ban(s)")
        for ban in bans:
            who = f"user {ban['user']!r} from {ban['source']}" if ban["user"] else f"address {ban['source']}"
            print(f"  {who}: {ban['seconds_left']} s left")
    return 1 if failed else 0


def cmd_unban(args: argparse.Namespace) -> int:
    """Lift the bans of an address (and of its users) in every gateway process."""
    cfg = _load(args.config)
    if cfg is None:
        return 2
    failed = lifted = 0
    query = urllib.parse.urlencode({"address": args.address})
    for where, answer in _ask_processes(cfg, "POST", f"/admin/unban?{query}"):
        if not isinstance(answer, dict):
            print(f"{where}: {answer}", file=sys.stderr)
            failed += 1
            continue
        lifted += answer["lifted"]
        print(f"{where}: {answer['lifted']} ban(s) of {args.address} lifted")
    print(f"{lifted} ban(s) lifted in all")
    return 1 if failed else 0


def _ask_processes(cfg: config.GatewayConfig, method: str, path: str) -> Iterator[tuple[str, object]]:
    """(which process, its JSON answer or the reason it gave none) from every gateway
    process's metrics listener (worker i listens on metrics.port + i)."""
    m = cfg.metrics
    if not m.enabled:
        yield "metrics listener", "metrics.enabled is false: bans and unban go through it"
        return
    # The admin endpoints answer clients on the gateway's host only: reach it over loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(m.address, m.address)
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    context = None
    if m.tls is not None:  # the gateway's own certificate, over loopback
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    headers = {}
    if m.basic_auth is not None:
        token = base64.b64encode(f"{m.basic_auth.username}:{m.basic_auth.password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    for index in range(cfg.workers):
        port = m.port + index
        where = f"process {index + 1} of {cfg.workers} (port {port})"
        url = f"{'https' if context else 'http'}://{host}:{port}{path}"
        request = urllib.request.Request(url, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as reply:
                yield where, json.loads(reply.read())
        except urllib.error.HTTPError as err:
            yield where, f"HTTP {err.code}: {err.read().decode(errors='replace').strip()}"
        except (OSError, ValueError) as err:
            yield where, f"no answer from {url}: {getattr(err, 'reason', err)} (is the gateway running?)"


def _read_password() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("Password of the user (on both servers): ")
    return sys.stdin.readline().rstrip("\r\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    parser = argparse.ArgumentParser(prog="ftp-sftp-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve FTP with the given config")
    run.add_argument("--config", "-c", required=True, help="YAML config file")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", help="YAML config file")
    check.add_argument(
        "--print",
        action="store_true",
        help="print the effective config (every default; secrets as their file or variable)",
    )
    check.add_argument(
        "--connect",
        action="store_true",
        help="also connect to every backend (host keys, service accounts); exit 1 if one fails",
    )
    check.add_argument("--user", help="with --connect: also log this user in through their route")
    check.add_argument(
        "--password-env", help="with --user: environment variable with the password (else asked for)"
    )
    check.set_defaults(func=cmd_check_config)
    hasher = sub.add_parser("hash-password", help="print a password hash for `users` (reads the password)")
    hasher.set_defaults(func=cmd_hash_password)
    syncer = sub.add_parser(
        "sync",
        help="copy users' files from the legacy FTP server to SFTP",
        description="Copy --user's tree (with their password, or the backends' service accounts), "
        "or every user of --route or of --all routes (service accounts), from the legacy FTP "
        "server to SFTP. Files changed on SFTP since sync copied them are conflicts, left alone.",
    )
    syncer.add_argument("--config", "-c", required=True, help="YAML config file")
    who = syncer.add_mutually_exclusive_group()
    who.add_argument("--user", action="append", help="a user whose tree to copy (repeatable)")
    who.add_argument("--all", action="store_true", help="every user of every route in --phase")
    syncer.add_argument("--route", help="the route (with --user: default the one the user matches)")
    syncer.add_argument(
        "--phase", default="legacy,shadow", help="with --all: the routes' phases (default legacy,shadow)"
    )
    syncer.add_argument("--jobs", type=_jobs, default=4, help="users copied at once (default 4)")
    syncer.add_argument("--dry-run", action="store_true", help="only say what would be copied")
    syncer.add_argument(
        "--overwrite", action="store_true", help="replace SFTP files that changed since sync copied them"
    )
    syncer.add_argument("--force", action="store_true", help="run for a route in the sftp or retired phase")
    syncer.add_argument(
        "--password-env", help="with one --user: environment variable with their password (else asked for)"
    )
    syncer.set_defaults(func=cmd_sync)
    report = sub.add_parser("report", help="migration readiness: who still uses FTP, with what, verdicts")
    report.add_argument("--config", "-c", required=True, help="YAML config file (its report.database)")
    report.add_argument("--format", choices=("table", "json", "csv"), default="table")
    report.add_argument("--user", help="only this FTP user")
    report.add_argument("--since", type=since_arg, help="only sessions since: 30m, 12h, 7d, 2w, YYYY-MM-DD")
    report.set_defaults(func=cmd_report)
    report_db = sub.add_parser("report-db", help="manage the usage record (report.database)")
    report_db_sub = report_db.add_subparsers(dest="action", required=True)
    copier = report_db_sub.add_parser(
        "copy", help="add a single-instance SQLite record to another record, e.g. a shared PostgreSQL one"
    )
    copier.add_argument("--from", required=True, metavar="FILE", help="the SQLite usage record to copy")
    copier.add_argument(
        "--to", required=True, help="the target: postgresql://USER@HOST/DB (or an SQLite file)"
    )
    copier.add_argument(
        "--password-env", help="environment variable with the target's password (else libpq's)"
    )
    copier.add_argument(
        "--merge", action="store_true", help="add to usage the target already holds of those days"
    )
    copier.set_defaults(func=cmd_report_db_copy)
    bans = sub.add_parser("bans", help="the brute-force guard's bans in force (the running gateway)")
    bans.add_argument("--config", "-c", required=True, help="YAML config file (its metrics listener)")
    bans.set_defaults(func=cmd_bans)
    unban = sub.add_parser("unban", help="lift the bans of a client address in the running gateway")
    unban.add_argument("address", help="the client IP address (an IPv6 address lifts its /64)")
    unban.add_argument("--config", "-c", required=True, help="YAML config file (its metrics listener)")
    unban.set_defaults(func=cmd_unban)
    demo = sub.add_parser("demo", help="run with an embedded demo SFTP server")
    demo.add_argument("--port", type=int, default=2121, help="FTP port (default 2121)")
    demo.add_argument("--data", default="demo-data", help="folder to serve (default ./demo-data)")
    demo.add_argument(
        "--passive-ports", type=_port_range, default=(30000, 30100), help="LOW-HIGH (default 30000-30100)"
    )
    demo.add_argument(
        "--metrics-port", type=int, default=0, help="metrics and health port (default: a free one)"
    )
    demo.add_argument("--log-level", default="info", choices=config.LOG_LEVELS)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ftp-sftp-gateway`` command."""
    args = build_parser().parse_args(argv)
    if args.func in (cmd_run, cmd_demo):
        # SIGHUP would end the process until the gateway takes it: a reload asked for while
        # it starts (systemctl reload right after start) is kept instead (early_reloads).
        signal.signal(signal.SIGHUP, remember_reload)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
