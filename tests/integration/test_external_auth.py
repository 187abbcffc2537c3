"""``auth: external``: a command or an HTTP endpoint decides each login."""

from __future__ import annotations

import ftplib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.helpers.gateway_env import base_config


def authority(tmp_path, answer: dict, seen: str = "seen.json") -> list[str]:
    """A command that records its request and prints ``answer``."""
    script = tmp_path / "auth.py"
    script.write_text(
        "import json, sys\n"
        f"request = sys.stdin.read()\nopen({str(tmp_path / seen)!r}, 'w').write(request)\n"
        f"print(json.dumps({answer!r}))\n"
    )
    return [sys.executable, str(script)]


def external_config(sshd, **external):
    doc = base_config(sshd, external_auth=external)
    doc["routes"][0]["auth"] = "external"
    return doc


def test_command_allows_with_passthrough_and_sees_the_request(gateway_factory, sshd, user, tmp_path):
    gw = gateway_factory(external_config(sshd, command=authority(tmp_path, {"allow": True})))
    ftp = gw.connect()
    ftp.login(user.name, user.password)
    ftp.quit()
    request = json.loads((tmp_path / "seen.json").read_text())
    assert request == {"user": user.name, "password": user.password, "client_ip": "127.0.0.1", "tls": False}


def test_command_maps_to_another_backend_account(gateway_factory, sshd, user, user2, tmp_path):
    answer = {"allow": True, "backend_user": user2.name, "backend_password": user2.password}
    gw = gateway_factory(external_config(sshd, command=authority(tmp_path, answer)))
    (user2.home / "marker.txt").write_text("x")
    ftp = gw.connect()
    ftp.login("partner-from-crm", "whatever-the-crm-accepts")
    assert ftp.nlst() == ["marker.txt"]
    ftp.quit()


def test_a_denial_is_530_and_counts_for_the_guard(gateway_factory, sshd, user, tmp_path):
    doc = external_config(sshd, command=authority(tmp_path, {"allow": False}))
    doc["guard"] = {"max_failures": 2}
    gw = gateway_factory(doc)
    for _ in range(2):
        ftp = gw.connect()
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.login(user.name, user.password)
        ftp.close()
    assert gw.gateway.metrics.registry.get_sample_value("ftpgw_guard_bans_total") == 1


@pytest.mark.parametrize("command", [["false"], [sys.executable, "-c", "print('not json')"]])
def test_a_broken_authority_is_421_not_a_hang(gateway_factory, sshd, user, command):
    gw = gateway_factory(external_config(sshd, command=command, timeout=2))
    ftp = gw.connect()
    ftp.sendcmd(f"USER {user.name}")
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        ftp.sendcmd(f"PASS {user.password}")


def test_http_endpoint(gateway_factory, sshd, user):
    requests: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            body = json.dumps({"allow": requests[-1]["password"] == user.password}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/ftp-login"
        gw = gateway_factory(external_config(sshd, url=url))
        ftp = gw.connect()
        ftp.login(user.name, user.password)
        ftp.quit()
        ftp = gw.connect()
        with pytest.raises(ftplib.error_perm, match=r"^530"):
            ftp.login(user.name, "wrong")
        assert [r["user"] for r in requests] == [user.name, user.name]
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("external", "problem"),
    [
        ({"url": "http://auth.example.com/login"}, "external_auth.url: must be an https:// URL"),
        ({"url": "https://u:p@auth.example.com/"}, "external_auth.url: must not carry credentials"),
        ({"command": ["no-such-program-here"]}, "external_auth.command: no-such-program-here is not"),
        ({"command": ["/bin/true"], "url": "https://a.example/"}, "external_auth.command: set exactly one"),
    ],
)
def test_external_auth_config_problems(sshd, external, problem):
    from gateway import config

    with pytest.raises(config.ConfigError) as err:
        config.parse(external_config(sshd, **external))
    assert err.value.problems[0].startswith(problem), err.value.problems


def test_the_authority_may_only_pick_keys_in_key_dir(gateway_factory, sshd, user, tmp_path):
    answer = {"allow": True, "backend_user": user.name, "backend_key_file": "/etc/ssh/ssh_host_ed25519_key"}
    gw = gateway_factory(external_config(sshd, command=authority(tmp_path, answer), key_dir=str(tmp_path)))
    ftp = gw.connect()
    ftp.sendcmd(f"USER {user.name}")
    with pytest.raises(ftplib.error_temp, match=r"^421"):
        ftp.sendcmd(f"PASS {user.password}")


def test_the_command_gets_neither_the_gateway_environment_nor_a_proxy(
    gateway_factory, sshd, user, tmp_path, monkeypatch
):
    monkeypatch.setenv("GW_SOME_SECRET", "not-for-the-command")
    script = tmp_path / "env.py"
    script.write_text(
        "import json, os, sys\nsys.stdin.read()\n"
        f"open({str(tmp_path / 'env.json')!r}, 'w').write(json.dumps(dict(os.environ)))\n"
        "print(json.dumps({'allow': True}))\n"
    )
    gw = gateway_factory(external_config(sshd, command=[sys.executable, str(script)]))
    ftp = gw.connect()
    ftp.login(user.name, user.password)
    ftp.quit()
    assert "GW_SOME_SECRET" not in json.loads((tmp_path / "env.json").read_text())
