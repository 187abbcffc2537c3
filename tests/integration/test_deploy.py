"""The deployment files in deploy/: syntax, cross-references and the external validators.

No gateway process and no container runtime are needed. Checks that need a tool (promtool
from Debian's ``prometheus`` package, systemd-analyze, ``docker compose``) skip when it is
missing. Every consistency check goes through a helper that returns what is wrong, and the
helpers are tested on broken input too, so these tests can fail.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import config
from gateway.edges import cli

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
KUBE = DEPLOY / "kubernetes"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "ftp-sftp-gateway.json"
UNIT = DEPLOY / "systemd" / "ftp-sftp-gateway.service"
DOCKERFILE = DEPLOY / "Dockerfile"

# What the gateway exports (docs/operations.md, "Metrics"). Counters carry _total; histograms are
# queried through _bucket, _sum and _count.
GAUGES = {
    "ftpgw_sessions_active",
    "ftpgw_backend_connections",
    "ftpgw_backend_up",
    "ftpgw_passive_ports_in_use",
    "ftpgw_passive_ports",
    "ftpgw_route_phase_changed_timestamp_seconds",
    "ftpgw_draining",
    "ftpgw_build_info",
}
COUNTERS = {
    f"ftpgw_{name}_total"
    for name in (
        "sessions",
        "logins",
        "commands",
        "transfers",
        "transfer_bytes",
        "data_connections",
        "tls_sessions",
        "backend_connects",
        "backend_errors",
        "guard_bans",
        "config_reloads",
        "phase_logins",
        "shadow_mismatches",
    )
}
#: Read from report.database at scrape time (Metrics.watch_usage), when it is set.
USAGE_VIEW = {"ftpgw_users", "ftpgw_users_plain_ftp"}
#: Only with report.per_user_metrics set.
PER_USER = {f"ftpgw_user_{name}_total" for name in ("logins", "transfers", "failed_logins")}
HISTOGRAMS = {"ftpgw_transfer_duration_seconds", "ftpgw_backend_op_duration_seconds"}
KNOWN_METRICS = (
    GAUGES
    | COUNTERS
    | HISTOGRAMS
    | USAGE_VIEW
    | PER_USER
    | {f"{h}{s}" for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
)
METRIC_RE = re.compile(r"\bftpgw_[A-Za-z0-9_]*")

DRAIN_TIMEOUT_DEFAULT = 30.0


# --- helpers -------------------------------------------------------------------------


def load_yaml(path: Path) -> list[Any]:
    return list(yaml.safe_load_all(path.read_text(encoding="utf-8")))


def unknown_metrics(texts: Iterable[str]) -> list[str]:
    """Every ftpgw_* name in ``texts`` that the gateway does not export."""
    return sorted({name for text in texts for name in METRIC_RE.findall(text)} - KNOWN_METRICS)


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """All panels, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard_panels(dashboard["panels"]) for t in p.get("targets", [])]


def alert_rules(rules_doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules_doc["groups"] for rule in group["rules"]]


def compose_missing_paths(compose_file: Path) -> list[str]:
    """Host paths the compose file refers to (build contexts, Dockerfiles, bind mounts,
    env files) that do not exist, relative to the compose file's directory."""
    base = compose_file.parent
    doc = yaml.safe_load(compose_file.read_text(encoding="utf-8"))
    wanted: list[tuple[str, str]] = []
    for name, service in (doc.get("services") or {}).items():
        build = service.get("build")
        if isinstance(build, str):
            build = {"context": build}
        if isinstance(build, dict):
            context = build.get("context", ".")
            wanted.append((f"{name}: build context", context))
            wanted.append((f"{name}: dockerfile", str(Path(context) / build.get("dockerfile", "Dockerfile"))))
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                source = volume.split(":", 1)[0]
                if source.startswith((".", "/", "~")):
                    wanted.append((f"{name}: bind mount", source))
            elif volume.get("type") == "bind":
                wanted.append((f"{name}: bind mount", volume["source"]))
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            wanted.append((f"{name}: env_file", env_file if isinstance(env_file, str) else env_file["path"]))
    return [f"{what}: {path}" for what, path in wanted if not (base / path).exists()]


def kustomization_missing(directory: Path) -> list[str]:
    """Files listed in kustomization.yaml (resources, patches, generators) that do not exist."""
    doc = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = list(doc.get("resources", []))
    listed += [p["path"] if isinstance(p, dict) else p for p in doc.get("patches", []) if "path" in p]
    for generator in doc.get("configMapGenerator", []) + doc.get("secretGenerator", []):
        listed += [f.split("=", 1)[-1] for f in generator.get("files", [])]
    return [item for item in listed if not (directory / item).exists()]


def kube_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, for every document of every file kustomization.yaml lists."""
    doc = yaml.safe_load((KUBE / "kustomization.yaml").read_text(encoding="utf-8"))
    objects = {}
    for resource in doc["resources"]:
        for obj in load_yaml(KUBE / resource):
            if obj:
                objects[(obj["kind"], obj["metadata"]["name"])] = obj
    return objects


def port_range(ports: list[int]) -> list[int]:
    low, high = ports
    return list(range(low, high + 1))


def compose_gateway_config() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose" / "gateway.yaml").read_text(encoding="utf-8"))


def kube_gateway_config() -> dict[str, Any]:
    configmap = kube_objects()[("ConfigMap", "ftp-sftp-gateway")]
    return yaml.safe_load(configmap["data"]["gateway.yaml"])


def with_known_hosts(cfg: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """``cfg`` with every backend's known_hosts replaced by a file trusting a fresh key for
    its host, in the form ssh-keyscan writes (bare host name for port 22), and the usage
    record's password file by one in ``tmp_path``."""
    import asyncssh

    cfg = json.loads(json.dumps(cfg))
    if "password_file" in cfg.get("report", {}):
        secret = tmp_path / "db-password"
        secret.write_text("a-password\n")
        cfg["report"]["password_file"] = str(secret)
    for name, backend in cfg["backends"].items():
        key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()
        host = backend["host"] if backend.get("port", 22) == 22 else f"[{backend['host']}]:{backend['port']}"
        path = tmp_path / f"known_hosts.{name}"
        path.write_text(f"{host} {key[0]} {key[1]}\n")
        backend["known_hosts"] = str(path)
    return cfg


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def cli_args_problem(args: list[str]) -> str | None:
    """None if the gateway's own argument parser accepts ``args``, else why not."""
    try:
        cli.build_parser().parse_args(args)
    except SystemExit:
        return f"ftp-sftp-gateway rejects arguments {args}"
    return None


def systemd_verify_problems(unit: Path, tmp_path: Path) -> list[str]:
    """Problems ``systemd-analyze verify`` reports for ``unit``: exit status and stderr lines
    about it. ExecStart= is pointed at an executable that exists here (verify fails on a
    missing binary, and the unit names the install location, /usr/local/bin); the user
    named in User= need not exist for verify."""
    text = unit.read_text(encoding="utf-8")
    binary = shutil.which("ftp-sftp-gateway") or shutil.which("true") or "/bin/true"
    copy = tmp_path / unit.name
    copy.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={binary}", text, flags=re.M), encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    problems = [line for line in result.stderr.splitlines() if unit.name in line or str(copy) in line]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}: {result.stderr.strip()}")
    return problems


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|min|m)?", value.strip())
    assert match, f"not a duration: {value!r}"
    number, unit = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60, "min": 60}[unit]


# --- syntax --------------------------------------------------------------------------

YAML_FILES = sorted(p for ext in ("*.yml", "*.yaml") for p in DEPLOY.rglob(ext))


def test_deploy_has_yaml_files() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    assert {"docker-compose.yml", "prometheus/alerts.yml", "kubernetes/kustomization.yaml"} <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses(path: Path) -> None:
    documents = load_yaml(path)
    assert documents and all(doc is not None for doc in documents), f"{path}: empty document"


def test_dashboard_parses_and_uses_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels(dashboard["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], f"panel {panel['title']!r} has no query"
    ids = [p["id"] for p in dashboard_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "duplicate panel ids"


# --- metric names --------------------------------------------------------------------


def test_unknown_metrics_helper_finds_misspelt_names() -> None:
    assert unknown_metrics(['rate(ftpgw_transfer_bytes_total[5m]) / ftpgw_sesions_active{a="b"}']) == [
        "ftpgw_sesions_active"
    ]
    assert (
        unknown_metrics(["histogram_quantile(0.9, rate(ftpgw_backend_op_duration_seconds_bucket[5m]))"]) == []
    )


def test_known_metrics_are_what_the_gateway_exports() -> None:
    from gateway.features.metrics import Metrics

    exported = set()
    for family in Metrics(per_user=1).registry.collect():
        exported |= {sample.name for sample in family.samples}
        exported.add(family.name + ("_total" if family.type == "counter" else ""))
    assert sorted((GAUGES | COUNTERS | HISTOGRAMS | PER_USER) - exported) == []


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = dashboard_exprs(dashboard)
    assert all(METRIC_RE.search(e) for e in exprs), [e for e in exprs if not METRIC_RE.search(e)]
    texts = exprs + [p.get("description", "") for p in dashboard_panels(dashboard["panels"])]
    assert unknown_metrics(texts) == []
    used = {name for e in exprs for name in METRIC_RE.findall(e)}
    wanted = {
        "ftpgw_sessions_active",
        "ftpgw_logins_total",
        "ftpgw_commands_total",
        "ftpgw_transfer_bytes_total",
        "ftpgw_transfers_total",
        "ftpgw_transfer_duration_seconds_bucket",
        "ftpgw_backend_up",
        "ftpgw_backend_connections",
        "ftpgw_backend_op_duration_seconds_bucket",
        "ftpgw_backend_errors_total",
        "ftpgw_passive_ports_in_use",
        "ftpgw_data_connections_total",
        "ftpgw_guard_bans_total",
        "ftpgw_user_failed_logins_total",
    }
    assert sorted(wanted - used) == []


def test_alert_rules_use_only_exported_metrics_and_are_documented() -> None:
    rules = alert_rules(yaml.safe_load(ALERTS.read_text(encoding="utf-8")))
    assert unknown_metrics(r["expr"] for r in rules) == []
    assert unknown_metrics(v for r in rules for v in r["annotations"].values()) == []
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    assert {
        "FtpgwDown",
        "FtpgwBackendDown",
        "FtpgwHostKeyMismatch",
        "FtpgwBanStorm",
        "FtpgwTransferErrorRate",
        "FtpgwBackendErrorSpike",
        "FtpgwPlainFtpLoginsAfterCutoff",
        "FtpgwConfigReloadFailed",
        "FtpgwPassivePortsExhausted",
        "FtpgwShadowMismatches",
        "FtpgwFailedLoginsAfterPhaseChange",
    } <= set(names)
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        # Non-gateway series: only the scrape health of the gateway's own job.
        foreign = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*\{", rule["expr"])) - KNOWN_METRICS
        assert foreign <= {"up"}, (rule["alert"], foreign)
    by_name = {r["alert"]: r for r in rules}
    assert by_name["FtpgwHostKeyMismatch"]["labels"]["severity"] == "critical"
    assert 'job="ftp-sftp-gateway"' in by_name["FtpgwDown"]["expr"]


def test_the_passive_port_alert_follows_the_exported_range_size() -> None:
    """No range size written into the rule: it compares with ftpgw_passive_ports, which the
    gateway sets from listen.passive_ports (its share, with workers)."""
    rule = {r["alert"]: r for r in alert_rules(yaml.safe_load(ALERTS.read_text(encoding="utf-8")))}[
        "FtpgwPassivePortsExhausted"
    ]
    assert rule["expr"] == "ftpgw_passive_ports_in_use >= 0.8 * ftpgw_passive_ports"


# --- docker compose ------------------------------------------------------------------


def test_compose_missing_paths_helper_reports_missing_files(tmp_path: Path) -> None:
    (tmp_path / "present.yaml").write_text("x: 1\n")
    (tmp_path / "docker-compose.yml").write_text(
        yaml.safe_dump(
            {
                "services": {
                    "a": {
                        "build": {"context": ".", "dockerfile": "nope/Dockerfile"},
                        "volumes": ["./present.yaml:/x:ro", "./absent.yaml:/y:ro", "named:/z"],
                    }
                }
            }
        )
    )
    assert compose_missing_paths(tmp_path / "docker-compose.yml") == [
        "a: dockerfile: nope/Dockerfile",
        "a: bind mount: ./absent.yaml",
    ]


def test_compose_references_existing_files() -> None:
    assert compose_missing_paths(COMPOSE) == []


def test_compose_wiring() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {"keygen", "sftp", "postgres", "gateway", "prometheus", "grafana"}
    gateway = services["gateway"]
    assert gateway["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert gateway["depends_on"]["keygen"]["condition"] == "service_completed_successfully"
    assert "sftp" in gateway["depends_on"]

    mounts = {v.split(":")[1]: v for v in gateway["volumes"]}
    assert mounts["/etc/ftp-sftp-gateway/gateway.yaml"].endswith(":ro")
    cfg = compose_gateway_config()
    known_hosts = Path(cfg["backends"]["main"]["known_hosts"])
    assert str(known_hosts.parent) in mounts, "known_hosts directory is not mounted into the gateway"
    # The private host key stays out of the gateway container.
    sftp_volumes = {v.split(":")[0] for v in services["sftp"]["volumes"]}
    assert not sftp_volumes & {v.split(":")[0] for v in gateway["volumes"]}

    # The usage record and the shared guard on the postgres service: its role, database and
    # password file (made by keygen, in a volume of keygen, postgres and the gateway only).
    postgres = services["postgres"]
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "healthcheck" in postgres
    url = urllib.parse.urlsplit(cfg["report"]["database"])
    env = postgres["environment"]
    assert (url.hostname, url.username, url.path.strip("/")) == (
        "postgres",
        env["POSTGRES_USER"],
        env["POSTGRES_DB"],
    )
    assert url.password is None and cfg["guard"]["shared"] is True
    secret_dir = str(Path(cfg["report"]["password_file"]).parent)
    assert Path(env["POSTGRES_PASSWORD_FILE"]).parent == Path(secret_dir)
    volume = {v.split(":")[1]: v.split(":")[0] for v in gateway["volumes"]}[secret_dir]
    assert {v.split(":")[0] for v in postgres["volumes"]} >= {volume}
    assert f"{volume}:/dbsecret" in services["keygen"]["volumes"]
    assert volume not in {v.split(":")[0] for v in services["sftp"]["volumes"]}

    # Passive ports published 1:1 and equal to the configured range; the metrics port stays
    # on the host's loopback.
    low, high = cfg["listen"]["passive_ports"]
    assert f"{low}-{high}:{low}-{high}" in gateway["ports"]
    assert f"{cfg['listen']['port']}:{cfg['listen']['port']}" in gateway["ports"]
    assert f"127.0.0.1:{cfg['metrics']['port']}:{cfg['metrics']['port']}" in gateway["ports"]
    drain = cfg.get("limits", {}).get("drain_timeout", DRAIN_TIMEOUT_DEFAULT)
    assert seconds(gateway["stop_grace_period"]) > drain

    # Prometheus loads the alert rules where its config says, and scrapes the gateway.
    prom_mounts = dict(v.rsplit(":", 2)[:2] for v in services["prometheus"]["volumes"] if v.startswith("."))
    prom_cfg = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text(encoding="utf-8"))
    assert prom_mounts["./prometheus/alerts.yml"] in prom_cfg["rule_files"]
    job = prom_cfg["scrape_configs"][0]
    assert job["job_name"] == "ftp-sftp-gateway"
    assert job["static_configs"][0]["targets"] == [f"gateway:{cfg['metrics']['port']}"]

    # Grafana's dashboard provider reads the directory the dashboard is mounted into.
    graf_mounts = dict(v.rsplit(":", 2)[:2] for v in services["grafana"]["volumes"] if v.startswith("."))
    provider = load_yaml(DEPLOY / "compose/grafana/provisioning/dashboards/ftp-sftp-gateway.yml")[0]
    dashboard_target = Path(graf_mounts["./grafana/ftp-sftp-gateway.json"])
    assert str(dashboard_target.parent) == provider["providers"][0]["options"]["path"]
    assert "./compose/grafana/provisioning" in graf_mounts


def test_keygen_writes_known_hosts_the_gateway_trusts(tmp_path: Path) -> None:
    """Runs the keygen script twice (the key is made once) and checks the known_hosts line
    is found by asyncssh exactly as a connection to sftp:22 looks it up (port 22 -> no port)."""
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen not installed (Debian: openssh-client)")
    import asyncssh

    hostkey, known = tmp_path / "hostkey", tmp_path / "known"
    hostkey.mkdir()
    known.mkdir()
    secret = tmp_path / "dbsecret"
    secret.mkdir()
    env = {
        **os.environ,
        "HOSTKEY_DIR": str(hostkey),
        "KNOWN_HOSTS_DIR": str(known),
        "DB_SECRET_DIR": str(secret),
    }
    script = DEPLOY / "compose" / "keygen" / "keygen.sh"
    passwords = []
    for _ in range(2):
        subprocess.run(["sh", str(script)], env=env, check=True, capture_output=True, timeout=60)
        passwords.append((secret / "db-password").read_text())
    assert passwords[0] == passwords[1] and re.fullmatch(r"[0-9a-f]{48}", passwords[0])  # made once
    assert sorted(p.name for p in hostkey.iterdir()) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    assert (hostkey / "ssh_host_ed25519_key").stat().st_mode & 0o077 == 0
    assert (known / "known_hosts").stat().st_mode & 0o004, "the gateway (uid 10001) cannot read it"
    host_key = asyncssh.read_public_key(str(hostkey / "ssh_host_ed25519_key.pub"))
    trusted = asyncssh.read_known_hosts(str(known / "known_hosts")).match("sftp", "", None)[0]
    assert [k.public_data for k in trusted] == [host_key.public_data]


def test_docker_compose_config_validates() -> None:
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("`docker compose` (the Compose v2 plugin) is not installed")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# --- gateway configs -------------------------------------------------------------------


@pytest.mark.parametrize("which", ["compose", "kubernetes"])
def test_gateway_configs_parse(which: str, tmp_path: Path) -> None:
    raw = compose_gateway_config() if which == "compose" else kube_gateway_config()
    cfg = config.parse(with_known_hosts(raw, tmp_path))
    # Reachable from outside the container/pod, and PASV replies carry a usable address.
    assert cfg.listen.address == "0.0.0.0"
    assert cfg.metrics.address == "0.0.0.0"
    assert cfg.listen.masquerade_address
    assert cfg.log.format == "json"
    assert raw["backends"]["main"]["known_hosts"].startswith("/")


@pytest.mark.parametrize("which", ["compose", "kubernetes"])
def test_gateway_configs_pass_check_config(which: str, tmp_path: Path) -> None:
    raw = compose_gateway_config() if which == "compose" else kube_gateway_config()
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(with_known_hosts(raw, tmp_path)))
    assert cli.main(["check-config", str(path)]) == 0


# --- kubernetes ----------------------------------------------------------------------


def test_kustomization_missing_helper_reports_missing_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("kind: x\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml, b.yaml]\n")
    assert kustomization_missing(tmp_path) == ["b.yaml"]


def test_kustomization_lists_every_manifest_and_they_exist() -> None:
    assert kustomization_missing(KUBE) == []
    listed = set(yaml.safe_load((KUBE / "kustomization.yaml").read_text())["resources"])
    present = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert present == listed, "a manifest in deploy/kubernetes is not in kustomization.yaml"


def test_kubernetes_deployment() -> None:
    objects = kube_objects()
    deployment = objects[("Deployment", "ftp-sftp-gateway")]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    cfg = kube_gateway_config()
    assert ports["metrics"] == cfg["metrics"]["port"]
    assert ports["ftp"] == cfg["listen"]["port"]
    pasv = sorted(v for k, v in ports.items() if k.startswith("pasv-"))
    assert pasv == port_range(cfg["listen"]["passive_ports"])

    drain = cfg.get("limits", {}).get("drain_timeout", DRAIN_TIMEOUT_DEFAULT)
    assert pod["terminationGracePeriodSeconds"] > drain
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    assert cli_args_problem(container["args"]) is None

    # The config directory holds gateway.yaml (ConfigMap) and known_hosts (Secret), at the
    # paths the container arguments and the config name.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volume = {v["name"]: v for v in pod["volumes"]}["config"]
    files = {}
    for source in volume["projected"]["sources"]:
        kind, ref = next(iter(source.items()))
        obj = objects[("ConfigMap" if kind == "configMap" else "Secret", ref["name"])]
        data = {**obj.get("data", {}), **obj.get("stringData", {})}
        for item in ref["items"]:
            assert item["key"] in data
            files[f"{mounts['config']}/{item['path']}"] = item["key"]
    assert container["args"][-1] in files
    assert cfg["backends"]["main"]["known_hosts"] in files


def test_kubernetes_services() -> None:
    objects = kube_objects()
    pod_template = objects[("Deployment", "ftp-sftp-gateway")]["spec"]["template"]
    pod_labels = pod_template["metadata"]["labels"]
    container_ports = {p["name"]: p["containerPort"] for p in pod_template["spec"]["containers"][0]["ports"]}
    cfg = kube_gateway_config()

    ftp = objects[("Service", "ftp-sftp-gateway")]["spec"]
    assert ftp["type"] in ("LoadBalancer", "NodePort")
    assert ftp["externalTrafficPolicy"] == "Local"
    assert ftp["sessionAffinity"] == "ClientIP"
    assert ftp["selector"].items() <= pod_labels.items()
    for port in ftp["ports"]:
        target = port["targetPort"]
        assert target in container_ports or target in container_ports.values(), port
    pasv = [p for p in ftp["ports"] if p["name"].startswith("pasv-")]
    # A PASV reply names the port the client dials: external and pod port must be equal.
    assert all(p["port"] == p["targetPort"] for p in pasv)
    assert sorted(p["port"] for p in pasv) == port_range(cfg["listen"]["passive_ports"])
    assert "metrics" not in {p["name"] for p in ftp["ports"]}

    metrics = objects[("Service", "ftp-sftp-gateway-metrics")]
    assert metrics["spec"]["type"] == "ClusterIP"
    assert metrics["spec"]["selector"].items() <= pod_labels.items()
    assert [p["name"] for p in metrics["spec"]["ports"]] == ["metrics"]

    monitor = objects[("ServiceMonitor", "ftp-sftp-gateway")]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics["metadata"]["labels"].items()
    assert (
        not monitor["spec"]["selector"]["matchLabels"].items()
        <= objects[("Service", "ftp-sftp-gateway")]["metadata"]["labels"].items()
    ), "the ServiceMonitor would also scrape the FTP Service"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    # The alert rules match job="ftp-sftp-gateway".
    assert metrics["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "ftp-sftp-gateway"

    pdb = objects[("PodDisruptionBudget", "ftp-sftp-gateway")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    # With one replica, minAvailable 1 or maxUnavailable 0 would block every node drain.
    assert pdb.get("maxUnavailable", 0) >= 1 and "minAvailable" not in pdb


def test_known_hosts_examples_use_the_port_22_form() -> None:
    """asyncssh (like OpenSSH) looks up a port-22 host without a port: a "[host]:22" line
    passes check-config but fails every login with a host key mismatch. (The compose
    keygen's line is checked by running it, above.)"""
    secret = kube_objects()[("Secret", "ftp-sftp-gateway-known-hosts")]
    lines = [ln for ln in secret["stringData"]["known_hosts"].splitlines() if ln and not ln.startswith("#")]
    assert lines and not [ln for ln in lines if ln.split()[0].endswith("]:22")]


# --- Dockerfile ----------------------------------------------------------------------


def test_dockerfile() -> None:
    instructions = dockerfile_instructions(DOCKERFILE)
    by_kind: dict[str, list[str]] = {}
    for kind, args in instructions:
        by_kind.setdefault(kind, []).append(args)
    assert all(f.startswith("${PYTHON_IMAGE}") for f in by_kind["FROM"])
    assert re.search(r"python:3\.11-slim", dict(instructions)["ARG"])
    assert by_kind["USER"] == ["10001:10001"]
    # The default install, with the PostgreSQL driver for a shared report.database.
    assert any("--find-links=/wheels 'ftp-sftp-gateway[postgres]'" in r for r in by_kind["RUN"])
    assert by_kind["STOPSIGNAL"] == ["SIGTERM"]
    assert json.loads(by_kind["ENTRYPOINT"][0]) == ["ftp-sftp-gateway"]
    cmd = json.loads(by_kind["CMD"][0])
    assert cli_args_problem(cmd) is None
    assert cmd[-1] == "/etc/ftp-sftp-gateway/gateway.yaml"
    (healthcheck,) = by_kind["HEALTHCHECK"]
    assert "http://127.0.0.1:9102/healthz" in healthcheck and "urllib" in healthcheck

    exposed = by_kind["EXPOSE"][0].split()
    cfg = compose_gateway_config()
    low, high = cfg["listen"]["passive_ports"]
    assert {str(cfg["listen"]["port"]), f"{low}-{high}", str(cfg["metrics"]["port"])} <= set(exposed)

    # Everything the image copies from the context passes the build's .dockerignore.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    copied = {
        src.rstrip("/") for args in by_kind["COPY"] if "--from" not in args for src in args.split()[:-1]
    }
    assert copied <= allowed
    assert all((ROOT / src).exists() for src in copied)


def test_cli_args_helper_rejects_bad_arguments() -> None:
    assert cli_args_problem(["run", "--config", "x.yaml"]) is None
    assert cli_args_problem(["serve", "x.yaml"]) is not None


# --- prometheus ----------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.skip("promtool not installed (Debian package: prometheus)")
    return path


def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", str(ALERTS_TEST)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool has no query linter; the dashboard's queries, with Grafana's variables filled
    in, go through `promtool check rules` as recording rules."""
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text(encoding="utf-8")))
    grafana_vars = {"$__rate_interval": "1m", "$__range": "1h", "$instance": ".*"}
    rules = []
    for index, expr in enumerate(exprs):
        for var, value in grafana_vars.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- systemd -------------------------------------------------------------------------


def test_systemd_unit_settings() -> None:
    settings = unit_settings(UNIT.read_text(encoding="utf-8"))
    exec_start = shlex.split(settings["ExecStart"][0])
    assert exec_start[0] == "/usr/local/bin/ftp-sftp-gateway"
    assert cli_args_problem(exec_start[1:]) is None
    assert settings["User"] == ["ftpgw"]
    assert settings["KillSignal"] == ["SIGTERM"]
    assert seconds(settings["TimeoutStopSec"][0]) > DRAIN_TIMEOUT_DEFAULT
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]  # SIGHUP reloads the config
    assert settings["RestartPreventExitStatus"] == ["2"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "SystemCallArchitectures": "native",
    }.items():
        assert settings.get(key) == [value], key
    assert "@system-service" in settings["SystemCallFilter"]
    # Left out on purpose (see the unit): cffi callbacks need W+X memory.
    assert "MemoryDenyWriteExecute" not in settings


def test_systemd_verify_helper_reports_problems(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    broken = tmp_path / "src" / UNIT.name
    broken.parent.mkdir()
    broken.write_text(UNIT.read_text().replace("[Service]\n", "[Service]\nProtectSystm=strict\n"))
    problems = systemd_verify_problems(broken, tmp_path)
    assert any("ProtectSystm" in p for p in problems), problems


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed")
    assert systemd_verify_problems(UNIT, tmp_path) == []
