"""The scale-out recipes: deploy/haproxy/haproxy.cfg and deploy/kubernetes-scale-out/.

Checks that the pieces agree: each gateway pod renders (with the init container's own
script) a valid config with a passive range of its own; HAProxy sends each range to its pod
only and balances the control port over all of them; the balancer Service publishes every
range on the one address the gateways advertise; only the HAProxy pods may reach the ports
where a PROXY header is believed. ``haproxy -c`` and ``kubectl kustomize`` run when present.
The shipped haproxy.cfg itself runs in front of two gateways in test_haproxy.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import config
from gateway.edges import cli
from tests.integration.test_deploy import DEPLOY, load_yaml, port_range, with_known_hosts

SCALE = DEPLOY / "kubernetes-scale-out"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
KUBECTL = shutil.which("kubectl")


def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object of the overlay's own manifests."""
    found = {}
    for resource in yaml.safe_load((SCALE / "kustomization.yaml").read_text())["resources"]:
        if resource.endswith(".yaml"):
            for obj in load_yaml(SCALE / resource):
                found[(obj["kind"], obj["metadata"]["name"])] = obj
    return found


def statefulset() -> dict[str, Any]:
    return objects()[("StatefulSet", "ftp-sftp-gateway")]


def render(ordinal: int, tmp_path: Path) -> dict[str, Any]:
    """The gateway.yaml pod ``ordinal`` runs with: the init container's script, run by sh."""
    pod = statefulset()["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    script = init["args"][0]
    template = objects()[("ConfigMap", "ftp-sftp-gateway-template")]["data"]["gateway.yaml"]
    (tmp_path / "template").mkdir(parents=True, exist_ok=True)
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "template" / "gateway.yaml").write_text(template)
    script = script.replace("/etc/ftp-sftp-gateway/template", str(tmp_path / "template"))
    script = script.replace("/run/ftp-sftp-gateway", str(tmp_path / "run"))
    # The script ends by checking the result with check-config (done below, with a
    # known_hosts file that exists here).
    script = re.sub(r"exec ftp-sftp-gateway check-config .*", "", script)
    name = statefulset()["metadata"]["name"]
    subprocess.run(
        ["sh", "-c", script], check=True, env={"HOSTNAME": f"{name}-{ordinal}", "PATH": "/usr/bin:/bin"}
    )
    rendered: dict[str, Any] = yaml.safe_load((tmp_path / "run" / "gateway.yaml").read_text())
    return rendered


def haproxy_sections(text: str) -> dict[str, list[str]]:
    """Section header ("listen ftp_passive_gw0") -> its lines, comments dropped."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line.startswith(" "):
            current = sections.setdefault(line.strip(), [])
        else:
            current.append(line.strip())
    return sections


def k8s_haproxy_cfg() -> str:
    return str(objects()[("ConfigMap", "ftp-sftp-gateway-haproxy")]["data"]["haproxy.cfg"])


def test_each_pod_renders_a_valid_config_with_a_passive_range_of_its_own(tmp_path: Path) -> None:
    replicas = statefulset()["spec"]["replicas"]
    assert replicas >= 2
    ranges = []
    for ordinal in range(replicas):
        raw = render(ordinal, tmp_path / str(ordinal))
        cfg = config.parse(with_known_hosts(raw, tmp_path))
        ranges.append(cfg.listen.passive_ports)
        assert cfg.listen.passive_ports == (30000 + 10 * ordinal, 30009 + 10 * ordinal)
        assert cfg.listen.proxy_protocol.trusted, "behind HAProxy the client address comes in PROXY headers"
        assert cfg.listen.masquerade_address == "203.0.113.10"  # the one balancer address
        assert cfg.listen.active_mode is False
        assert cfg.backends["main"].atomic_uploads is True
        path = tmp_path / f"gateway-{ordinal}.yaml"
        path.write_text(yaml.safe_dump(with_known_hosts(raw, tmp_path)))
        assert cli.main(["check-config", str(path)]) == 0
    ports = [p for low, high in ranges for p in range(low, high + 1)]
    assert len(ports) == len(set(ports)), f"passive ranges overlap: {ranges}"


def test_the_unrendered_template_is_refused_with_the_key_named(tmp_path: Path, capsys) -> None:
    template = objects()[("ConfigMap", "ftp-sftp-gateway-template")]["data"]["gateway.yaml"]
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(with_known_hosts(yaml.safe_load(template), tmp_path)))
    assert cli.main(["check-config", str(path)]) == 2
    assert "listen.passive_ports" in capsys.readouterr().err


def test_haproxy_sends_each_range_to_its_pod_and_balances_the_control_port(tmp_path: Path) -> None:
    replicas = statefulset()["spec"]["replicas"]
    namespace = yaml.safe_load((SCALE / "kustomization.yaml").read_text())["namespace"]
    service = objects()[("Service", "ftp-sftp-gateway-pods")]
    sections = haproxy_sections(k8s_haproxy_cfg())
    fqdn = [
        f"ftp-sftp-gateway-{i}.{service['metadata']['name']}.{namespace}.svc.cluster.local"
        for i in range(replicas)
    ]
    control = [line.split()[1:3] for line in sections["backend ftp_control"] if line.startswith("server ")]
    assert control == [[f"gw{i}", f"{fqdn[i]}:2121"] for i in range(replicas)]
    assert "bind :2121" in sections["frontend ftp_control"]
    for i in range(replicas):
        raw = render(i, tmp_path / str(i))
        low, high = raw["listen"]["passive_ports"]
        lines = sections[f"listen ftp_passive_gw{i}"]
        assert f"bind :{low}-{high}" in lines
        (server,) = [line.split() for line in lines if line.startswith("server ")]
        assert server[1:3] == [f"gw{i}", fqdn[i]]  # no port: the one the client dialed
        assert "send-proxy-v2" in server and f"ftp_control/gw{i}" in server
    assert service["spec"]["clusterIP"] == "None"
    assert (
        service["spec"]["selector"].items() <= statefulset()["spec"]["template"]["metadata"]["labels"].items()
    )
    if Path(HAPROXY).exists():
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(k8s_haproxy_cfg())
        result = subprocess.run([HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_balancer_service_publishes_every_range_on_one_address(tmp_path: Path) -> None:
    replicas = statefulset()["spec"]["replicas"]
    service = objects()[("Service", "ftp-sftp-gateway-balancer")]["spec"]
    balancer = objects()[("Deployment", "ftp-sftp-gateway-balancer")]["spec"]["template"]
    assert service["type"] == "LoadBalancer"
    assert service["externalTrafficPolicy"] == "Local"  # the client's address reaches HAProxy
    assert service["selector"].items() <= balancer["metadata"]["labels"].items()
    ports = {p["name"]: p for p in service["ports"]}
    assert (ports["ftp"]["port"], ports["ftp"]["targetPort"]) == (21, 2121)
    passive = sorted(p["port"] for name, p in ports.items() if name.startswith("pasv-"))
    assert all(p["port"] == p["targetPort"] for name, p in ports.items() if name.startswith("pasv-"))
    wanted = sorted(
        p
        for i in range(replicas)
        for p in port_range(render(i, tmp_path / str(i))["listen"]["passive_ports"])
    )
    assert passive == wanted


def test_only_the_balancer_pods_reach_the_ports_that_believe_proxy_headers(tmp_path: Path) -> None:
    replicas = statefulset()["spec"]["replicas"]
    policy = objects()[("NetworkPolicy", "ftp-sftp-gateway")]["spec"]
    gateway_labels = statefulset()["spec"]["template"]["metadata"]["labels"]
    balancer_labels = objects()[("Deployment", "ftp-sftp-gateway-balancer")]["spec"]["template"]["metadata"][
        "labels"
    ]
    assert policy["podSelector"]["matchLabels"].items() <= gateway_labels.items()
    assert policy["policyTypes"] == ["Ingress"]
    wanted = {2121} | {
        p
        for i in range(replicas)
        for p in port_range(render(i, tmp_path / str(i))["listen"]["passive_ports"])
    }
    for rule in policy["ingress"]:
        covered = {
            p for spec in rule["ports"] for p in range(spec["port"], spec.get("endPort", spec["port"]) + 1)
        }
        if covered & wanted:
            (source,) = rule["from"]
            assert source["podSelector"]["matchLabels"].items() <= balancer_labels.items()
            assert not source["podSelector"]["matchLabels"].items() <= gateway_labels.items()
            assert wanted <= covered
        else:
            assert covered == {9102}  # metrics and probes only


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed (kubectl kustomize builds the overlay)")
def test_the_overlay_builds_and_replaces_the_single_instance_objects() -> None:
    result = subprocess.run([KUBECTL, "kustomize", str(SCALE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    built = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(result.stdout) if o}
    assert ("Deployment", "ftp-sftp-gateway") not in built
    assert ("Service", "ftp-sftp-gateway") not in built
    assert ("ConfigMap", "ftp-sftp-gateway") not in built
    assert {
        ("StatefulSet", "ftp-sftp-gateway"),
        ("Secret", "ftp-sftp-gateway-known-hosts"),
        ("Service", "ftp-sftp-gateway-metrics"),
        ("PodDisruptionBudget", "ftp-sftp-gateway"),
        ("NetworkPolicy", "ftp-sftp-gateway"),
        ("Deployment", "ftp-sftp-gateway-balancer"),
        ("StatefulSet", "ftp-sftp-gateway-postgres"),
        ("Secret", "ftp-sftp-gateway-db"),
    } <= built


@pytest.mark.skipif(not Path(HAPROXY).exists(), reason=f"{HAPROXY} not installed (Debian package haproxy)")
def test_the_shipped_haproxy_recipe_is_valid() -> None:
    result = subprocess.run(
        [HAPROXY, "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_pod_shares_one_usage_record_and_guard_in_the_trial_postgresql(tmp_path: Path) -> None:
    raw = render(0, tmp_path)
    url = urllib.parse.urlsplit(raw["report"]["database"])
    assert url.scheme == "postgresql" and url.password is None and raw["guard"]["shared"] is True
    secret_dir = str(Path(raw["report"]["password_file"]).parent)
    pod = statefulset()["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    for container in (*pod["initContainers"], *pod["containers"]):  # check-config reads it too
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert secrets[mounts[secret_dir]] == "ftp-sftp-gateway-db", container["name"]
    service = objects()[("Service", "ftp-sftp-gateway-postgres")]
    assert (url.hostname, url.port) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    trial = objects()[("StatefulSet", "ftp-sftp-gateway-postgres")]["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in trial["containers"][0]["env"]}
    assert (url.username, url.path.strip("/")) == (env["POSTGRES_USER"], env["POSTGRES_DB"])
    assert {v["secret"]["secretName"] for v in trial["volumes"] if "secret" in v} == {"ftp-sftp-gateway-db"}
    assert objects()[("Secret", "ftp-sftp-gateway-db")]["stringData"]["password"] == "REPLACE-ME"
    assert "REPLACE-ME" in trial["initContainers"][0]["args"][0]  # the placeholder never runs
