"""The readiness report: real FTP clients through the gateway, the usage store, `report`."""

from __future__ import annotations

import csv
import ftplib
import io
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.helpers.gateway_env import CLI, base_config, legacy_config, seed, wait_for
from tests.helpers.postgres import PASSWORD as POSTGRES_PASSWORD

SCHEMA_FILE = Path(__file__).parents[2] / "gateway" / "features" / "usage" / "report.schema.json"
SCHEMA = json.loads(SCHEMA_FILE.read_text())


#: What every reason and warning ends with: when its problem was first and last seen.
WHEN = re.compile(r" \(first \d{4}-\d\d-\d\d \d\d:\d\d, last \d{4}-\d\d-\d\d \d\d:\d\d UTC\)$")


def untimed(lines: list[str]) -> list[str]:
    """Reasons or warnings without their times."""
    return [WHEN.sub("", line) for line in lines]


def with_report(doc, tmp_path, **report):
    """The usage record on; one clean transfer is evidence enough here (report.ready_after)."""
    doc["report"] = {
        "database": str(tmp_path / "usage.sqlite"),
        "ready_after": {"transfers": 1, "days": 0},
        **report,
    }
    return doc


def report(tmp_path, doc, *args, fmt="json"):
    """`ftp-sftp-gateway report` on the gateway's config: parsed JSON, CSV rows or the table."""
    path = tmp_path / "report.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run(
        [*CLI, "report", "--config", str(path), "--format", fmt, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    if fmt == "json":
        document = json.loads(out)
        jsonschema.validate(document, SCHEMA)
        return {u["user"]: u for u in document["users"]}
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(out)))
    return out


def run_client(args, **kwargs):
    subprocess.run(args, check=True, capture_output=True, timeout=120, **kwargs)


def test_real_clients_are_fingerprinted_and_judged(gateway_factory, sshd, user, user2, tmp_path):
    doc = with_report(base_config(sshd), tmp_path)
    gw = gateway_factory(doc)
    payload = os.urandom(100_000)
    seed(user, "down.bin", payload)
    seed(user2, "text.txt", "line\n" * 100)
    # user: Python ftplib, curl and lftp, each a clean session.
    ftp = gw.login(user)
    ftp.storbinary("STOR up.bin", io.BytesIO(payload))
    ftp.retrbinary("RETR down.bin", io.BytesIO().write)
    ftp.retrlines("LIST", lambda line: None)
    ftp.quit()
    url = f"ftp://{user.name}:{user.password}@127.0.0.1:{gw.port}"
    run_client(["curl", "-sS", "-o", str(tmp_path / "c.bin"), f"{url}/down.bin"])
    lftp = f"set ftp:ssl-allow no; open -p {gw.port} -u {user.name},{user.password} 127.0.0.1; "
    lftp += f"get down.bin -o {tmp_path / 'l.bin'}; put {tmp_path / 'c.bin'} -o l-up.bin"
    run_client(["lftp", "-c", lftp])
    # user2: a mainframe-style job: SITE RECFM (refused), TYPE A on binary data, active mode.
    job = gw.login(user2)
    with pytest.raises(ftplib.error_perm, match=r"^500"):
        job.sendcmd("SITE RECFM=FB")
    job.set_pasv(False)
    job.voidcmd("TYPE A")
    conn = job.transfercmd("STOR packed.dat")
    conn.sendall(b"\x00\x01binary\r\n\x00")
    conn.close()
    job.voidresp()
    job.retrlines("RETR text.txt", lambda line: None)
    job.quit()
    gw.stop()  # the store writes what is queued

    users = report(tmp_path, doc)
    u1, u2 = users[user.name], users[user2.name]
    assert set(u1["clients"]) == {"Python ftplib", "curl", "lftp 4.9.2"}
    assert u1["logins"] == 3 and u1["refused_logins"] == 0
    assert u1["transfers"]["uploads"] == 2 and u1["transfers"]["downloads"] == 3
    assert u1["transfers"]["bytes_down"] == 3 * len(payload)
    assert u1["transfers"]["bytes_up"] == 2 * len(payload)
    assert u1["tls_share"] == 0 and u1["client_ips"] == ["127.0.0.1"]
    assert u1["routes"][0]["phase"] == "sftp" and u1["phase"] == "sftp"
    # lftp says CLNT once, before login (it said it again after login while OPTS UTF8 ON got 530 there)
    assert u1["commands"]["CLNT"] == 1 and u1["commands"]["RETR"] == 3
    assert u1["data_connections"]["active"] == 0 and u1["data_connections"]["passive"] >= 5
    assert u1["verdict"] == "ready", u1
    assert u1["reasons"] == ["5 clean transfers over sftp in 1 day"]
    assert "3 of 3 logins in plain FTP (no TLS)" in untimed(u1["warnings"])
    assert u1["untranslatable"] == []

    assert u2["verdict"] == "blocked"
    assert WHEN.search(u2["reasons"][0])  # every reason says when it was first and last seen
    assert untimed(u2["reasons"]) == ["uses SITE RECFM (1x): SFTP has no equivalent"]
    assert u2["site_commands"] == {"RECFM": 1}
    assert u2["transfers"]["type_a"] == 2 and u2["transfers"]["type_a_binary"] == 1
    assert u2["untranslatable"] == ["SITE RECFM", "TYPE A on binary data", "active mode only"]
    assert u2["error_replies"] == {"500": 1}
    assert u2["data_connections"] == {"passive": 0, "active": 2}

    rows = report(tmp_path, doc, fmt="csv")
    assert [r["user"] for r in rows] == sorted([user.name, user2.name])
    assert {r["user"]: r["verdict"] for r in rows} == {user.name: "ready", user2.name: "blocked"}
    table = report(tmp_path, doc, "--user", user2.name, fmt="table")
    assert "blocked: uses SITE RECFM (1x)" in table and user.name not in table


def upload_once(gw, user, name):
    ftp = gw.login(user)
    ftp.storbinary(f"STOR {name}", io.BytesIO(b"x" * 1000))
    ftp.quit()


def on_postgres(doc, server, tmp_path):
    """The usage record on a new database of the test PostgreSQL server, as several
    instances share it: a URL without the password, the password in a file."""
    secret = tmp_path / "db-password"
    secret.write_text(POSTGRES_PASSWORD + "\n")
    doc["report"].update({"database": server.url(), "password_file": str(secret)})
    return doc


@pytest.mark.parametrize("record", ["sqlite", "postgresql"])
def test_store_survives_restarts_and_concurrent_sessions_lose_nothing(
    request, gateway_factory, sshd, user, tmp_path, record
):
    doc = with_report(base_config(sshd), tmp_path)
    if record == "postgresql":
        doc = on_postgres(doc, request.getfixturevalue("postgres"), tmp_path)
    doc["guard"] = {"max_unauthenticated_per_ip": 32, "max_failures": 32}  # 12 logins at once
    first = gateway_factory(doc)
    upload_once(first, user, "before-restart.bin")
    first.stop()
    # Two gateways (as two workers would) on one database, 12 sessions each at once.
    gateways = [gateway_factory(doc), gateway_factory(doc)]
    errors = []

    def session(gw, index):
        try:
            upload_once(gw, user, f"c{index}.bin")
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=session, args=(gw, i)) for i in range(12) for gw in gateways]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    for gw in gateways:
        gw.stop()
    u = report(tmp_path, doc)[user.name]
    assert u["logins"] == 25
    assert u["transfers"]["uploads"] == 25 and u["transfers"]["bytes_up"] == 25_000
    assert u["commands"]["STOR"] == 25 and u["reply_classes"]["2xx"] >= 25 * 3


def test_postgresql_stopped_mid_run_logins_go_on_and_every_session_is_counted_once_it_returns(
    postgres, gateway_factory, sshd, user, tmp_path
):
    doc = on_postgres(with_report(base_config(sshd), tmp_path), postgres, tmp_path)
    gw = gateway_factory(doc)
    upload_once(gw, user, "before.bin")
    postgres.stop()
    try:
        for n in range(3):
            upload_once(gw, user, f"during{n}.bin")  # the record is down: sessions are not
        assert gw.login(user).sendcmd("NOOP").startswith("200")
    finally:
        postgres.restart()
    upload_once(gw, user, "after.bin")
    gw.stop()  # the writer flushes what it held and what came after
    u = report(tmp_path, doc)[user.name]
    assert u["logins"] == 6
    assert u["transfers"]["uploads"] == 5


def test_report_db_copy_moves_a_single_instance_record_into_postgresql_and_the_report_is_the_same(
    postgres, gateway_factory, sshd, user, user2, tmp_path
):
    doc = with_report(base_config(sshd), tmp_path)
    gw = gateway_factory(doc)
    upload_once(gw, user, "a.bin")
    upload_once(gw, user2, "b.bin")
    ftp = gw.connect()
    with pytest.raises(ftplib.error_perm):
        ftp.login(user.name, "wrong")
    gw.stop()
    before = report(tmp_path, doc, fmt="table")
    shared = on_postgres(with_report(base_config(sshd), tmp_path), postgres, tmp_path)

    def copy(*extra):
        env = {**os.environ, "DB_PASSWORD": POSTGRES_PASSWORD}
        return subprocess.run(
            [*CLI, "report-db", "copy", "--from", doc["report"]["database"],
             "--to", shared["report"]["database"], "--password-env", "DB_PASSWORD", *extra],
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip

    done = copy()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("copied 3 usage rows and 0 sync journal entries")
    assert report(tmp_path, shared, fmt="table") == before
    again = copy()  # the same sessions twice would count them twice
    assert again.returncode == 1 and "--merge" in again.stderr
    assert report(tmp_path, shared)[user.name]["logins"] == 1
    assert copy("--merge").returncode == 0  # as another instance's record of the same days would be
    assert report(tmp_path, shared)[user.name]["logins"] == 2


def test_every_phase_of_a_migration_is_told_truthfully(gateway_factory, sshd, legacy_ftp, user2, tmp_path):
    """The walkthrough in small: legacy, shadow, sftp, then retired, one gateway after another."""
    (legacy_ftp.twin_home / "in.txt").write_text("from the legacy server\n")
    seed(user2, "in.txt", "from the sftp server\n")
    docs = {}
    for phase in ("legacy", "shadow", "sftp", "retired"):
        docs[phase] = doc = with_report(legacy_config(sshd, legacy_ftp, phase), tmp_path)
        route = doc["routes"][0]
        route["match"]["user"], route["root"] = user2.name, "~"  # the same account on both servers
        route["notice"] = "FTP is off: use sftp://files.example.com"

    def session(phase, upload=False):
        gw = gateway_factory(docs[phase])
        ftp = gw.login(user2)
        ftp.retrbinary("RETR in.txt", io.BytesIO().write)
        if upload:
            ftp.storbinary(f"STOR {phase}.bin", io.BytesIO(b"y" * 500))
        ftp.quit()
        gw.stop()
        return report(tmp_path, docs[phase])[user2.name]

    u = session("legacy")
    assert (u["verdict"], u["phase"]) == ("not proven", "legacy")
    assert u["reasons"] == [
        "no transfers over sftp yet (phase legacy): move the route to shadow or sftp to test"
    ]
    assert [(r["route"], r["phase"], r["backend"], r["logins"]) for r in u["routes"]] == [
        ("partners", "legacy", "old-ftp", 1)
    ]
    u = session("shadow", upload=True)  # the upload is replayed on SFTP: first evidence
    assert (u["verdict"], u["reasons"]) == ("ready", ["1 clean transfer over sftp in 1 day"])
    assert (u["sftp_path"]["transfers"], u["sftp_path"]["shadow_problems"]) == (1, 0)
    assert (user2.home / "shadow.bin").exists()
    u = session("sftp", upload=True)
    assert (u["verdict"], u["reasons"]) == ("ready", ["3 clean transfers over sftp in 1 day"])
    assert [r["phase"] for r in u["routes"]] == ["sftp", "shadow", "legacy"]  # latest first

    gw = gateway_factory(docs["retired"])
    refused = gw.connect()
    with pytest.raises(ftplib.error_perm, match="FTP is off"):
        refused.login(user2.name, user2.password)
    refused.close()
    gw.stop()
    u = report(tmp_path, docs["retired"])[user2.name]
    assert (u["verdict"], u["phase"], u["refused_logins"], u["logins"]) == ("retired", "retired", 1, 3)
    assert all(WHEN.search(reason) for reason in u["reasons"])
    assert untimed(u["reasons"]) == [
        "FTP is off for route partners, yet 1 refused login, the last from 127.0.0.1 (client: unknown)"
    ]


def test_prometheus_view_by_phase_tls_and_capped_users(gateway_factory, sshd, user, user2, tmp_path):
    from gateway.features.usage import store
    from tests.integration.test_metrics import scrape, value

    doc = with_report(base_config(sshd), tmp_path, per_user_metrics=1)
    gw = gateway_factory(doc)
    upload_once(gw, user, "m.bin")
    gw.login(user2).quit()
    database = doc["report"]["database"]
    assert wait_for(lambda: len(store.read(database)) == 2)  # the writer is asynchronous
    m = scrape(gw)
    assert value(m, "ftpgw_phase_logins_total", phase="sftp", tls="no") == 2
    assert value(m, "ftpgw_phase_transfers_total", phase="sftp", tls="no") == 1
    # One user has series of its own; every further user is "_other" (bounded cardinality).
    assert value(m, "ftpgw_user_logins_total", user=user.name, tls="no") == 1
    assert value(m, "ftpgw_user_logins_total", user="_other", tls="no") == 1
    assert value(m, "ftpgw_user_transfers_total", user=user.name, result="ok") == 1
    assert not any(dict(labels).get("user") == user2.name for _, labels in m)
    assert value(m, "ftpgw_users", phase="sftp") == 2 and value(m, "ftpgw_users", phase="legacy") == 0
    assert value(m, "ftpgw_users_plain_ftp") == 2
    # Failed logins: under the name of a user who has a series; a made-up name never gets one.
    for name in (user.name, "made-up"):
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            gw.connect().login(name, "wrong password")
    m = scrape(gw)
    assert value(m, "ftpgw_user_failed_logins_total", user=user.name, result="bad_credentials") == 1
    assert value(m, "ftpgw_user_failed_logins_total", user="_other", result="bad_credentials") == 1
    gw.stop()
    # After a restart the series go first to the users the record saw last (user2 here): a
    # user locked out by a phase change made with a restart still shows under their name.
    again = gateway_factory(doc)
    with pytest.raises(ftplib.error_perm, match=r"^530"):
        again.connect().login(user2.name, "wrong password")
    m = scrape(again)
    assert value(m, "ftpgw_user_failed_logins_total", user=user2.name, result="bad_credentials") == 1


def test_without_a_database_nothing_is_recorded_and_report_says_how(gateway_factory, sshd, user, tmp_path):
    doc = base_config(sshd)
    gw = gateway_factory(doc)
    gw.login(user).quit()
    assert gw.gateway.usage is None
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run([*CLI, "report", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "report.database is not set" in out.stderr and out.stdout == ""
    command = [*CLI, "report", "--config", str(path), "--since", "yesterday"]
    bad = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "use 30m, 12h, 7d, 2w or a date YYYY-MM-DD" in bad.stderr


def test_a_database_that_is_not_sqlite_stops_the_start_with_the_reason(sshd, tmp_path):
    database = tmp_path / "usage.sqlite"
    database.write_text("this is not a database\n" * 100)
    doc = with_report(base_config(sshd), tmp_path)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = subprocess.run([*CLI, "run", "--config", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert f"report.database: usage database {database}: file is not a database" in out.stderr


def test_a_partner_locked_out_after_the_flip_is_flagged_with_times(
    gateway_factory, sshd, legacy_ftp, user2, tmp_path
):
    """The most likely switch-over failure: the partner's job logs in fine in shadow, the
    route moves to sftp, where the account's password differs: every login gets 530."""
    docs = {}
    for phase in ("shadow", "sftp"):
        docs[phase] = doc = with_report(legacy_config(sshd, legacy_ftp, phase), tmp_path)
        doc["routes"][0]["match"]["user"] = user2.name
    gw = gateway_factory(docs["shadow"])
    gw.login(user2).quit()
    gw.stop()
    subprocess.run(["chpasswd"], input=f"{user2.name}:Another-pw-9\n".encode(), check=True)  # the SFTP one
    try:
        gw = gateway_factory(docs["sftp"])
        for _ in range(3):
            ftp = gw.connect()
            with pytest.raises(ftplib.error_perm, match=r"^530"):
                ftp.login(user2.name, user2.password)  # the password that worked on the legacy server
            ftp.close()
        gw.stop()
    finally:
        subprocess.run(["chpasswd"], input=f"{user2.name}:{user2.password}\n".encode(), check=True)
    u = report(tmp_path, docs["sftp"], "--user", user2.name)[user2.name]
    assert (u["verdict"], u["phase"], u["logins"], u["failed_logins"]) == (
        "locked out",
        "sftp",
        1,
        {"bad_credentials": 3},
    )
    assert u["locked_out_since"] is not None
    (reason,) = u["reasons"]
    assert reason.startswith("every login since ") and ", after the move from shadow to sftp: " in reason
    assert "bad_credentials (3x); the last successful one was " in reason and "from 127.0.0.1" in reason
    table = report(tmp_path, docs["sftp"], fmt="table")
    assert table.splitlines()[0].startswith(f"LOCKED OUT: {user2.name} since ")
    assert "1 +3 failed" in table
    path = tmp_path / "report.yaml"  # written by report()
    nobody = subprocess.run(
        [*CLI, "report", "--config", str(path), "--user", "nobody"], capture_output=True, text=True
    )
    assert nobody.returncode == 1 and "no session of user 'nobody' is recorded" in nobody.stderr


def test_since_counts_only_the_problems_inside_it(sshd, tmp_path):
    """A batch job's SITE RECFM and failed upload three hours ago, six clean uploads ten
    minutes ago (in one day's row, unless midnight fell between): blocked over the whole
    record, ready over the last hour."""
    from gateway.features.usage import store
    from gateway.features.usage.session import SessionUsage

    doc = with_report(base_config(sshd), tmp_path)
    clock = [time.time() - 3 * 3600]
    usage = SessionUsage("192.0.2.7", clock=lambda: clock[0])
    usage.logged_in("batch", "route0", "sftp", "main", tls=True)
    usage.command("SITE RECFM", "FB", 500)
    clock[0] += 30
    usage.transfer(upload=True, completed=False, nbytes=100, ascii=False)
    records = usage.take(logout=True)
    clock[0] = time.time() - 600
    usage.logged_in("batch", "route0", "sftp", "main", tls=True)
    for _ in range(6):
        usage.transfer(upload=True, completed=True, nbytes=100, ascii=False)
    records += usage.take()
    conn = store.connect(doc["report"]["database"])
    store.write(conn, records)
    conn.close()

    whole = report(tmp_path, doc)["batch"]
    assert whole["verdict"] == "blocked"
    assert untimed(whole["reasons"]) == [
        "uses SITE RECFM (1x): SFTP has no equivalent",
        "1 of 7 transfers over sftp failed (14%)",
    ]
    assert all(WHEN.search(line) for line in whole["reasons"] + whole["warnings"])
    recent = report(tmp_path, doc, "--since", "1h")["batch"]
    assert (recent["verdict"], recent["reasons"], recent["warnings"]) == (
        "ready",
        ["6 clean transfers over sftp in 1 day"],
        [],
    )
