import os
from pathlib import Path

import pytest
import yaml

from gateway import config
from gateway.core.passwords import hash_password

EXAMPLE = Path(__file__).parents[2] / "config" / "gateway.example.yaml"


@pytest.fixture
def known_hosts(tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text(
        "[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn3tQ4+aZWv6N3sDPdTRR0Oq8M9hzJ2g4HxWxYkHtbA\n"
    )
    return str(path)


def example_doc(known_hosts):
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["backends"]["main"]["known_hosts"] = known_hosts
    return doc


def test_example_config_is_valid_and_matches_defaults(known_hosts):
    cfg = config.parse(example_doc(known_hosts))
    assert cfg.listen == config.ListenConfig()
    assert cfg.limits == config.LimitsConfig()
    assert cfg.guard == config.GuardConfig()
    assert cfg.listing == config.ListingConfig()
    assert cfg.tls == config.TLSConfig()  # commented out in the example: plain FTP
    assert cfg.report == config.ReportConfig()  # no database: nothing recorded
    assert cfg.backends["main"].known_hosts == known_hosts
    assert cfg.routes[0].root == "/home/{user}"
    assert cfg.routes[0].auth == "passthrough"


def test_minimal_config(known_hosts):
    cfg = config.parse(
        {
            "backends": {"b": {"host": "h", "known_hosts": known_hosts}},
            "routes": [{"match": {"user": "*"}, "backend": "b"}],
        }
    )
    assert cfg.listen.port == 2121
    assert cfg.backends["b"].port == 22
    assert cfg.routes[0].root == "~"


def problems_of(doc):
    with pytest.raises(config.ConfigError) as exc:
        config.parse(doc)
    return exc.value.problems


def test_every_problem_is_reported_at_once_with_its_key(known_hosts, tmp_path):
    doc = example_doc(known_hosts)
    doc["listen"]["port"] = 70000
    doc["listen"]["passive_ports"] = [3000]
    doc["listen"]["masquerade_address"] = "not-an-ip"
    doc["listen"]["colour"] = "blue"
    doc["limits"]["idle_timeout"] = "soon"
    doc["backends"]["main"]["known_hosts"] = str(tmp_path / "missing")
    doc["backends"]["main"]["port"] = True
    doc["routes"][0]["backend"] = "nope"
    doc["routes"][0]["root"] = "relative/{user}"
    doc["routes"][0]["auth"] = "magic"
    doc["routes"][0]["match"]["hostname"] = "x"
    doc["log"]["level"] = "loud"
    doc["extra"] = 1
    problems = problems_of(doc)
    keys = [p.split(":")[0] for p in problems]
    assert keys == [
        "backends.main.port",
        "backends.main.known_hosts",
        "listen.port",
        "listen.passive_ports",
        "listen.masquerade_address",
        "listen.colour",
        "limits.idle_timeout",
        "routes[0].match.hostname",
        "routes[0].backend",
        "routes[0].auth",
        "routes[0].root",
        "log.level",
        "extra",
    ]
    text = "\n".join(problems)
    assert "file not found" in text and "ssh-keyscan" in text  # names the fix
    assert "unknown backend 'nope' (defined: main)" in text
    assert "unknown key" in text


def test_required_keys(known_hosts):
    problems = problems_of({"routes": [{"match": {"user": "*"}}]})
    assert any(p.startswith("backends:") for p in problems)
    assert any(p.startswith("routes[0].backend: required") for p in problems)
    problems = problems_of({"backends": {"b": {"host": "h"}}, "routes": [{"backend": "b"}]})
    assert (
        "backends.b.known_hosts: required key is missing (or pin host_key_fingerprints: [SHA256:...])"
        in problems
    )
    assert "routes[0].match: required key is missing" in problems


def test_known_hosts_without_keys_is_refused(tmp_path):
    empty = tmp_path / "kh"
    empty.write_text("# nothing\n")
    problems = problems_of(
        {
            "backends": {"b": {"host": "h", "known_hosts": str(empty)}},
            "routes": [{"match": {"user": "*"}, "backend": "b"}],
        }
    )
    assert problems == [
        f"backends.b.known_hosts: file has no host keys: {empty} (host keys are always verified)"
    ]


def one_route(known_hosts, **route):
    return {
        "backends": {"b": {"host": "h", "known_hosts": known_hosts}},
        "routes": [{"match": {"user": "*"}, "backend": "b", **route}],
    }


@pytest.mark.parametrize("root", ["/x/{uid}", "/x/{user!r}", "/x/{{user}}", "/srv/{user}/..", "/a/../b"])
def test_root_templates_that_would_not_mean_what_they_say(known_hosts, root):
    (problem,) = problems_of(one_route(known_hosts, root=root))
    assert problem.startswith("routes[0].root: ")


@pytest.mark.parametrize("banner", ["two\r\n230 lines", "tab\there", "multi\nline"])
def test_banner_must_be_one_printable_line(known_hosts, banner):
    assert problems_of(one_route(known_hosts, banner=banner)) == [
        "routes[0].banner: must be one line of printable text (no CR, LF or tabs)"
    ]


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0, -1, 10**9])
def test_timeouts_must_be_finite_and_sane(known_hosts, value):
    doc = one_route(known_hosts)
    doc["backends"]["b"]["operation_timeout"] = value
    (problem,) = problems_of(doc)
    assert problem.startswith("backends.b.operation_timeout: must be a number of seconds")


def test_duplicate_route_names(known_hosts):
    doc = one_route(known_hosts, name="a")
    doc["routes"].append({"name": "a", "match": {"user": "x"}, "backend": "b"})
    assert problems_of(doc) == ["routes[1].name: duplicate name 'a' (routes[0])"]


def test_missing_match_and_non_mapping_document(known_hosts):
    assert problems_of(
        {"backends": {"b": {"host": "h", "known_hosts": known_hosts}}, "routes": [{"backend": "b"}]}
    ) == ["routes[0].match: required key is missing"]
    problems = problems_of(["not", "a", "mapping"])
    assert problems[0] == "config: must be a mapping, got list"


def test_relative_known_hosts_is_relative_to_the_config_file(tmp_path, known_hosts, monkeypatch):
    confdir = tmp_path / "etc"
    confdir.mkdir()
    (confdir / "kh").write_text(Path(known_hosts).read_text())
    (confdir / "gw.yaml").write_text(yaml.safe_dump(one_route("kh")))
    monkeypatch.chdir(tmp_path)
    cfg = config.load(confdir / "gw.yaml")
    assert cfg.backends["b"].known_hosts == str(confdir / "kh")


def test_load_reports_yaml_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [unclosed\n")
    with pytest.raises(config.ConfigError) as exc:
        config.load(bad)
    assert "not valid YAML" in exc.value.problems[0]
    with pytest.raises(config.ConfigError) as exc:
        config.load(tmp_path / "absent.yaml")
    assert "cannot read config file" in exc.value.problems[0]


def test_yaml_tags_are_not_executed(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("listen: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(config.ConfigError) as exc:
        config.load(evil)
    assert "not valid YAML" in exc.value.problems[0]


def _with_metrics(known_hosts, **metrics):
    return {
        "backends": {"b": {"host": "h", "known_hosts": known_hosts}},
        "routes": [{"backend": "b", "match": {"user": "*"}}],
        "metrics": metrics,
    }


def test_metrics_basic_auth_reads_the_password_from_a_file_or_the_environment(
    known_hosts, tmp_path, monkeypatch
):
    (tmp_path / "pw").write_text("from-file\n")
    cfg = config.parse(
        _with_metrics(known_hosts, basic_auth={"username": "p", "password_file": "pw"}), tmp_path
    )
    assert cfg.metrics.basic_auth == config.BasicAuth("p", "from-file")
    assert "from-file" not in repr(cfg)  # never in a log line or traceback
    monkeypatch.setenv("GW_METRICS_PW", "from-env")
    cfg = config.parse(
        _with_metrics(known_hosts, basic_auth={"username": "p", "password_env": "GW_METRICS_PW"})
    )
    assert cfg.metrics.basic_auth is not None and cfg.metrics.basic_auth.password == "from-env"


@pytest.mark.parametrize(
    ("auth", "problem"),
    [
        ({"username": "p"}, "metrics.basic_auth.password_file: set exactly one of"),
        (
            {"username": "p", "password_env": "GW_UNSET_VARIABLE"},
            "metrics.basic_auth.password_env: the password",
        ),
        ({"username": "p", "password_file": "nope"}, "metrics.basic_auth.password_file: cannot read /"),
        ({"username": "p", "password_file": "latin1"}, "metrics.basic_auth.password_file: cannot read"),
        (
            {"username": "p", "password_env": "A", "password_file": "pw"},
            "metrics.basic_auth.password_file: set",
        ),
        ({"username": "a:b", "password_env": "HOME"}, "metrics.basic_auth.username: non-empty"),
    ],
)
def test_metrics_basic_auth_problems(known_hosts, tmp_path, auth, problem):
    (tmp_path / "latin1").write_bytes(b"caf\xe9\n")
    (tmp_path / "pw").write_text("x\n")
    with pytest.raises(config.ConfigError) as err:
        config.parse(_with_metrics(known_hosts, basic_auth=auth), tmp_path)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_metrics_tls_needs_readable_files(known_hosts, tmp_path):
    with pytest.raises(config.ConfigError) as err:
        config.parse(_with_metrics(known_hosts, tls={"certfile": "c.pem"}), tmp_path)
    assert sorted(err.value.problems) == [
        f"metrics.tls.certfile: cannot read file {tmp_path / 'c.pem'}",
        "metrics.tls.keyfile: required key is missing",
    ]


def test_metrics_tls_pair_is_loaded_at_check_time(known_hosts, tmp_path):
    import subprocess

    def make(name, *extra):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", *extra,
             "-subj", "/CN=x", "-days", "1", "-keyout", str(tmp_path / f"{name}.key"),
             "-out", str(tmp_path / f"{name}.crt")],
            check=True, capture_output=True,
        )  # fmt: skip

    make("a", "-nodes")
    make("b", "-nodes")
    make("enc", "-passout", "pass:secret")
    ok = config.parse(_with_metrics(known_hosts, tls={"certfile": "a.crt", "keyfile": "a.key"}), tmp_path)
    assert ok.metrics.tls == config.TLSFiles(str(tmp_path / "a.crt"), str(tmp_path / "a.key"))
    for cert, key, problem in [
        ("a.crt", "b.key", "metrics.tls.keyfile: not a PEM certificate and matching private key"),
        ("enc.crt", "enc.key", "metrics.tls.keyfile: the key is encrypted"),
        ("a.key", "a.key", "metrics.tls.keyfile: not a PEM certificate"),
    ]:
        with pytest.raises(config.ConfigError) as err:
            config.parse(_with_metrics(known_hosts, tls={"certfile": cert, "keyfile": key}), tmp_path)
        assert err.value.problems[0].startswith(problem), err.value.problems


def test_transfer_log_directory_must_exist(known_hosts, tmp_path):
    doc = _with_metrics(known_hosts)
    doc["log"] = {"transfer_log": "xferlog"}
    assert config.parse(doc, tmp_path).log.transfer_log == str(tmp_path / "xferlog")
    doc["log"] = {"transfer_log": "missing/xferlog"}
    with pytest.raises(config.ConfigError) as err:
        config.parse(doc, tmp_path)
    assert err.value.problems[0].startswith("log.transfer_log: directory")
    doc["log"] = {"transfer_log": "."}
    with pytest.raises(config.ConfigError) as err:
        config.parse(doc, tmp_path)
    assert (
        err.value.problems[0].startswith("log.transfer_log: ") and "is a directory" in err.value.problems[0]
    )


def test_tls_section(known_hosts, tmp_path):
    import subprocess

    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-subj", "/CN=x", "-days", "1", "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    doc = _with_metrics(known_hosts)
    doc["tls"] = {"certfile": "c.pem", "keyfile": "k.pem"}
    tls = config.parse(doc, tmp_path).tls
    assert (tls.mode, tls.enabled, tls.implicit_port) == ("required", True, None)  # secure default
    doc["tls"] = {"mode": "off", "certfile": "missing.pem"}
    assert not config.parse(doc, tmp_path).tls.enabled
    doc["tls"] = {"mode": "sometimes", "implicit_port": "990", "keyfile": "k.pem", "ciphers": "NO-SUCH"}
    with pytest.raises(config.ConfigError) as err:
        config.parse(doc, tmp_path)
    assert sorted(p.split(":")[0] for p in err.value.problems) == [
        "tls.certfile",
        "tls.ciphers",
        "tls.implicit_port",
        "tls.mode",
    ]


def test_the_example_names_the_default_tls_1_2_ciphers():
    line = next(ln for ln in EXAMPLE.read_text().splitlines() if ln.startswith("#   ciphers:"))
    assert yaml.safe_load(line.lstrip("# "))["ciphers"] == config.TLS12_CIPHERS
    suites = config.TLS12_CIPHERS.split(":")
    assert all("ECDHE" in name and ("GCM" in name or "POLY1305" in name) for name in suites)


def test_login_names_and_the_per_user_connection_cap(known_hosts):
    doc = _with_metrics(known_hosts)
    doc["limits"] = {"user_names": "[a-z]+"}
    doc["backends"]["b"]["pool"] = {"max_connections_per_user": 4}
    cfg = config.parse(doc)
    assert (cfg.limits.user_names, cfg.backends["b"].pool.max_connections_per_user) == ("[a-z]+", 4)
    doc["backends"]["b"]["pool"] = {"max_connections_per_user": 0}
    doc["users"] = {"Partner-A": {"password_hash": hash_password("x"), "backend_password_env": "PATH"}}
    with pytest.raises(config.ConfigError) as err:
        config.parse(doc)
    assert [p.split(":")[0] for p in err.value.problems] == [
        "backends.b.pool.max_connections_per_user",
        "users.Partner-A",
    ]
    doc["limits"] = {"user_names": "[a-z"}
    with pytest.raises(config.ConfigError, match=r"limits\.user_names: not a regular expression"):
        config.parse(doc)


def test_route_phase_and_notice(known_hosts):
    doc = _with_metrics(known_hosts)
    doc["routes"][0].update(phase="retired", notice="Use sftp://Files.example.com")
    route = config.parse(doc).routes[0]
    assert (route.phase, route.banner) == ("retired", "Use sftp://Files.example.com")
    doc["routes"][0].update(phase="shadow", banner="old name too")
    with pytest.raises(config.ConfigError) as err:
        config.parse(doc)
    assert sorted(p.split(":")[0] for p in err.value.problems) == ["routes[0].banner", "routes[0].legacy"]
    assert "phase shadow needs the legacy FTP backend" in " ".join(err.value.problems)


def test_legacy_backends_and_routes(known_hosts):
    doc = _with_metrics(known_hosts)
    doc["backends"]["old"] = {"type": "ftp", "host": "10.0.0.5", "tls": "explicit"}
    doc["routes"][0].update(phase="legacy", legacy="old")
    cfg = config.parse(doc)
    assert (cfg.backends["old"].type, cfg.backends["old"].port, cfg.backends["old"].tls) == (
        "ftp",
        21,
        "explicit",
    )
    assert (cfg.routes[0].phase, cfg.routes[0].legacy) == ("legacy", "old")
    doc["routes"][0].update(backend="old", legacy="b")
    with pytest.raises(config.ConfigError) as err:
        config.parse(doc)
    assert sorted(p.split(":")[0] for p in err.value.problems) == ["routes[0].backend", "routes[0].legacy"]
    doc["routes"][0].update(backend="b", legacy=None)
    with pytest.raises(config.ConfigError) as err:
        config.parse(doc)
    assert err.value.problems == ["routes[0].legacy: phase legacy needs the legacy FTP backend named here"]


def test_the_migration_walkthrough_config_is_valid(known_hosts):
    doc = yaml.safe_load((EXAMPLE.parent / "migration.example.yaml").read_text())
    doc["backends"]["main"]["known_hosts"] = known_hosts
    cfg = config.parse(doc)
    route = cfg.routes[0]
    assert (route.phase, route.legacy, cfg.backends["old-ftp"].type) == ("legacy", "old-ftp", "ftp")


def test_report_on_postgresql_takes_a_url_without_password_and_the_password_from_a_file(
    known_hosts, tmp_path
):
    doc = example_doc(known_hosts)
    (tmp_path / "db-password").write_text("s3cret\n")
    doc["report"] = {"database": "postgresql://ftpgw@db.internal/ftpgw", "password_file": "db-password"}
    cfg = config.parse(doc, tmp_path)
    assert (cfg.report.database, cfg.report.password) == ("postgresql://ftpgw@db.internal/ftpgw", "s3cret")
    assert "s3cret" not in repr(cfg)
    assert config.document(cfg)["report"]["password_file"] == str(tmp_path / "db-password")
    for database, problem in [
        ("postgresql://ftpgw:s3cret@db.internal/ftpgw", "report.database: must not hold the password"),
        ("postgresql://db.internal", "report.database: must name a host and a database"),
    ]:
        doc["report"] = {"database": database}
        with pytest.raises(config.ConfigError) as err:
            config.parse(doc, tmp_path)
        assert err.value.problems[0].startswith(problem), err.value.problems
    doc["report"] = {"database": "usage.sqlite", "password_env": "DB_PASSWORD"}
    with pytest.raises(config.ConfigError) as err:
        config.parse(doc, tmp_path)
    assert err.value.problems == [
        "report.password_env: is only for a PostgreSQL report.database (postgresql://...)"
    ]


def test_report_section(known_hosts, tmp_path):
    doc = example_doc(known_hosts)
    doc["report"] = {"database": "usage.sqlite", "retention_days": 14, "per_user_metrics": 50}
    cfg = config.parse(doc, tmp_path)
    assert cfg.report == config.ReportConfig(str(tmp_path / "usage.sqlite"), 14, 50)
    assert (cfg.report.ready_after_transfers, cfg.report.ready_after_days) == (5, 3.0)  # the defaults
    doc["report"]["ready_after"] = {"transfers": 20, "days": 7}
    cfg = config.parse(doc, tmp_path)
    assert (cfg.report.ready_after_transfers, cfg.report.ready_after_days) == (20, 7.0)
    doc["report"]["ready_after"] = {"transfers": 0, "weeks": 1}
    with pytest.raises(config.ConfigError) as err:
        config.parse(doc, tmp_path)
    assert err.value.problems == [
        "report.ready_after.transfers: must be from 1 to 1000000",
        "report.ready_after.weeks: unknown key (known keys here: days, transfers)",
    ]
    doc["report"] = {"database": str(tmp_path / "missing" / "u.sqlite"), "retention_days": 0, "keep": 1}
    with pytest.raises(config.ConfigError) as err:
        config.parse(doc, tmp_path)
    assert err.value.problems == [
        f"report.database: directory {tmp_path / 'missing'} does not exist or is not writable",
        "report.retention_days: must be from 1 to 3650",
        "report.keep: unknown key (known keys here: database, password_env, password_file, per_user_metrics, "
        "ready_after, retention_days)",
    ]


def test_the_walkthrough_config_records_usage_next_to_itself(known_hosts, tmp_path):
    doc = yaml.safe_load((EXAMPLE.parent / "migration.example.yaml").read_text())
    doc["backends"]["main"]["known_hosts"] = known_hosts
    cfg = config.parse(doc, tmp_path)
    assert cfg.report == config.ReportConfig(str(tmp_path / "usage.sqlite"), 90, 0)


def test_listing_section(known_hosts):
    doc = _with_metrics(known_hosts)
    doc["listing"] = {"dotfiles": "shown"}
    assert config.parse(doc).listing.dotfiles == "shown"
    doc["listing"] = {"dotfiles": "sometimes"}
    with pytest.raises(config.ConfigError, match=r"listing\.dotfiles: must be one of hidden, shown"):
        config.parse(doc)


def test_uploads_section(known_hosts):
    doc = _with_metrics(known_hosts)
    assert config.parse(doc).uploads.partial_ttl == 86400
    doc["uploads"] = {"partial_ttl": 3600}
    assert config.parse(doc).uploads.partial_ttl == 3600
    doc["uploads"] = {"partial_ttl": 5}
    with pytest.raises(config.ConfigError, match=r"uploads\.partial_ttl: must be from 60 to 2592000"):
        config.parse(doc)
    doc["uploads"] = {"partial_tl": 3600}
    with pytest.raises(config.ConfigError, match=r"uploads\.partial_tl"):
        config.parse(doc)


def test_route_name_encoding(known_hosts):
    doc = _with_metrics(known_hosts)
    assert config.parse(doc).routes[0].name_encoding is None  # names are bytes, as they are
    doc["routes"][0]["name_encoding"] = "cp1252"
    assert config.parse(doc).routes[0].name_encoding == "cp1252"
    doc["routes"][0]["name_encoding"] = "klingon"
    with pytest.raises(config.ConfigError, match=r"routes\[0\]\.name_encoding: unknown encoding 'klingon'"):
        config.parse(doc)
    doc["routes"][0]["name_encoding"] = "utf-16"
    with pytest.raises(config.ConfigError, match=r"routes\[0\]\.name_encoding: 'utf-16' does not keep ASCII"):
        config.parse(doc)


def test_a_missing_backend_key_file_is_the_only_problem_reported(known_hosts, tmp_path):
    """Not also "set exactly one of backend_password_file or ..." nor "'mapped' needs
    gateway-local users" because the one user with the problem was left out."""
    doc = _with_metrics(known_hosts)
    doc["routes"][0]["auth"] = "mapped"
    doc["users"] = {"partner": {"password_hash": hash_password("x"), "backend_key_file": "keys/partner"}}
    with pytest.raises(config.ConfigError) as err:
        config.parse(doc, tmp_path)
    assert err.value.problems == [
        f"users.partner.backend_key_file: cannot read file {tmp_path / 'keys/partner'}"
    ]


def test_print_shows_an_unset_secret_as_null_and_a_set_one_redacted():
    key_only = config.LocalUser("partner", "scrypt$...", "partner", None, "/etc/gw/partner.key", frozenset())
    with_password = config.LocalUser("other", "scrypt$...", "other", "s3cret", None, frozenset())
    shown = config.redacted({"users": {"partner": key_only, "other": with_password}})["users"]
    assert (shown["partner"]["backend_password"], shown["partner"]["backend_key_file"]) == (
        None,
        "/etc/gw/partner.key",
    )
    assert (shown["other"]["backend_password"], shown["other"]["password_hash"]) == (
        "<redacted>",
        "<redacted>",
    )


def _with_services(known_hosts, sftp=None, legacy=None):
    return {
        "backends": {
            "b": {"host": "h", "known_hosts": known_hosts, **({"service": sftp} if sftp else {})},
            "old": {"type": "ftp", "host": "o", **({"service": legacy} if legacy else {})},
        },
        "routes": [{"backend": "b", "legacy": "old", "phase": "shadow", "match": {"user": "*"}}],
    }


def test_service_accounts_for_sync(known_hosts, tmp_path):
    (tmp_path / "key").write_text("not read here\n")
    (tmp_path / "pw").write_text("admin-pw\n")
    cfg = config.parse(
        _with_services(
            known_hosts,
            sftp={"user": "svc", "key_file": "key", "root": "/srv/sftp/{user}/data"},
            legacy={"user": "admin", "password_file": "pw"},
        ),
        tmp_path,
    )
    assert cfg.backends["b"].service == config.ServiceAccount(
        "svc", None, str(tmp_path / "key"), "/srv/sftp/{user}/data"
    )
    assert cfg.backends["old"].service == config.ServiceAccount("admin", "admin-pw", None, "/home/{user}")
    assert "admin-pw" not in repr(cfg)
    assert config.redacted(cfg.backends["old"])["service"]["password"] == "<redacted>"


@pytest.mark.parametrize(
    ("sftp", "legacy", "problem"),
    [
        (
            {"user": "s", "password_env": "HOME", "root": "/home"},
            None,
            "backends.b.service.root: must be an absolute path with {user}",
        ),
        (
            {"user": "s", "password_env": "HOME", "root": "/x/u{user}"},
            None,
            "backends.b.service.root: must be an absolute",
        ),
        (
            {"user": "s", "password_env": "HOME", "root": "{user}"},
            None,
            "backends.b.service.root: must be an absolute",
        ),
        (
            {"user": "s", "key_file": "pw", "password_env": "HOME"},
            None,
            "backends.b.service.key_file: set either a key or a password",
        ),
        ({"user": "s"}, None, "backends.b.service.password_file: set exactly one of"),
        (None, {"user": "a", "key_file": "pw"}, "backends.old.service.key_file: unknown key"),
        (None, {"password_env": "HOME"}, "backends.old.service.user: required key is missing"),
    ],
)
def test_service_account_problems(known_hosts, tmp_path, sftp, legacy, problem):
    (tmp_path / "pw").write_text("x\n")
    with pytest.raises(config.ConfigError) as err:
        config.parse(_with_services(known_hosts, sftp, legacy), tmp_path)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_print_gives_a_document_check_config_accepts(known_hosts, tmp_path, tls_files, monkeypatch):
    """check-config --print: every section written out, secrets as their file or variable;
    parsed again it is the same config (and never holds a secret's value)."""
    from gateway.core.passwords import hash_password

    (tmp_path / "admin.pass").write_text("legacy-admin-secret\n")
    (tmp_path / "acme.pw").write_text("acme-sftp-secret\n")
    (tmp_path / "key").write_text("key\n")
    (tmp_path / "auth.sh").write_text("#!/bin/sh\n")
    (tmp_path / "auth.sh").chmod(0o755)
    monkeypatch.setenv("GW_METRICS_PW", "metrics-secret")
    doc = {
        "listen": {"passive_ports": [31000, 31010], "proxy_protocol": {"trusted": ["10.0.0.0/8"]}},
        "backends": {
            "main": {"host": "h", "known_hosts": known_hosts, "service": {"user": "root", "key_file": "key"}},
            "old": {
                "type": "ftp",
                "host": "o",
                "tls": "explicit",
                "service": {"user": "admin", "password_file": "admin.pass", "root": "/{user}"},
            },
        },
        "routes": [
            {"name": "acme", "match": {"user": "acme"}, "backend": "main", "auth": "mapped"},
            {
                "name": "partners",
                "match": {"user": "p-*", "network": ["192.0.2.0/24"]},
                "backend": "main",
                "legacy": "old",
                "phase": "shadow",
                "notice": "moving",
                "permissions": {"read_only": True, "commands": ["RETR", "LIST"]},
                "name_encoding": "cp1252",
            },
            {"name": "ext", "match": {"user": "*", "group": "g"}, "backend": "main", "home": "~"},
            {"name": "sso", "match": {"user": "x-*"}, "backend": "main", "auth": "external"},
        ],
        "users": {
            "acme": {
                "password_hash": hash_password("pw"),
                "backend_password_file": "acme.pw",
                "groups": ["g"],
            },
            "keyed": {"password_hash": hash_password("pw"), "backend_key_file": "key"},
        },
        "external_auth": {"command": ["./auth.sh", "--x"]},
        "metrics": {"basic_auth": {"username": "prom", "password_env": "GW_METRICS_PW"}},
        "tls": {"mode": "optional", "certfile": str(tls_files.cert), "keyfile": str(tls_files.key)},
        "guard": {"allow": ["198.51.100.0/24"]},
        "report": {"database": "usage.sqlite", "ready_after": {"transfers": 2, "days": 1}},
        "listing": {"dotfiles": "shown"},
        "uploads": {"partial_ttl": 600},
        "log": {"level": "debug"},
        "workers": 2,
    }
    cfg = config.parse(doc, tmp_path)
    printed = yaml.safe_dump(config.document(cfg), sort_keys=False)
    for secret in ("legacy-admin-secret", "acme-sftp-secret", "metrics-secret"):
        assert secret not in printed
    assert f"password_file: {tmp_path / 'admin.pass'}" in printed and "password_env: GW_METRICS_PW" in printed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = config.parse(yaml.safe_load(printed), elsewhere)  # absolute names: any directory
    assert again == cfg


def test_workers_auto_is_one_per_core_this_process_may_use(known_hosts):
    doc = example_doc(known_hosts)
    doc["workers"] = "auto"
    assert 1 <= config.parse(doc).workers <= min(64, len(os.sched_getaffinity(0)))  # a CPU quota caps it
    doc["workers"] = "many"
    with pytest.raises(config.ConfigError) as err:
        config.parse(doc)
    assert err.value.problems == ["workers: must be a number from 1 to 64, or auto (not 'many')"]
    doc["workers"] = 0
    with pytest.raises(config.ConfigError) as err:
        config.parse(doc)
    assert err.value.problems == ["workers: must be from 1 to 64"]
