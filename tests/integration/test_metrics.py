"""Prometheus metrics: scraped from the real /metrics listener after real FTP sessions."""

from __future__ import annotations

import ftplib
import io
import json
import os
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.gateway_env import seed, wait_for


def scrape(gw) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    port = gw.gateway.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_logins_commands_and_transfers_are_counted_exactly(gw, user):
    payload = os.urandom(300_000)
    seed(user, "down.bin", payload)
    bad = gw.connect()
    with pytest.raises(ftplib.error_perm):
        bad.login(user.name, "wrong")
    bad.close()
    ftp = gw.login(user)
    ftp.storbinary("STOR up.bin", io.BytesIO(payload))
    got = io.BytesIO()
    ftp.retrbinary("RETR down.bin", got.write)
    ftp.sendcmd("NOOP")
    with pytest.raises(ftplib.error_perm):
        ftp.sendcmd("SIZE missing")
    ftp.sock.sendall(b"XYZZY\r\n")
    assert ftp.getline().startswith("500")
    ftp.quit()
    assert wait_for(lambda: value(scrape(gw), "ftpgw_sessions_active") == 0)
    m = scrape(gw)
    assert value(m, "ftpgw_logins_total", result="ok", route="route0", tls="no") == 1
    assert value(m, "ftpgw_logins_total", result="bad_credentials", route="route0", tls="no") == 1
    assert value(m, "ftpgw_transfers_total", direction="upload", result="ok") == 1
    assert value(m, "ftpgw_transfers_total", direction="download", result="ok") == 1
    assert value(m, "ftpgw_transfer_bytes_total", direction="upload", backend="main") == len(payload)
    assert value(m, "ftpgw_transfer_bytes_total", direction="download", backend="main") == len(payload)
    assert value(m, "ftpgw_transfer_duration_seconds_count", direction="upload") == 1
    assert value(m, "ftpgw_commands_total", command="NOOP", code_class="2xx") == 1
    assert value(m, "ftpgw_commands_total", command="SIZE", code_class="5xx") == 1
    assert value(m, "ftpgw_commands_total", command="OTHER", code_class="5xx") == 1  # XYZZY folded
    assert value(m, "ftpgw_sessions_total", result="authenticated") == 1
    assert value(m, "ftpgw_sessions_total", result="unauthenticated") == 1
    assert value(m, "ftpgw_backend_connects_total", backend="main", result="ok") == 1
    assert value(m, "ftpgw_backend_connects_total", backend="main", result="auth_failed") == 1
    assert value(m, "ftpgw_build_info", version=__import__("gateway").__version__) == 1
    # ftplib uses PASV on IPv4: one data connection per transfer, the listener gone after.
    assert value(m, "ftpgw_data_connections_total", mode="pasv", result="ok") == 2
    assert value(m, "ftpgw_passive_ports_in_use") == 0
    # Backend side: both logins timed (one failed), the missing file is the backend's ENOENT.
    assert value(m, "ftpgw_backend_op_duration_seconds_count", backend="main", op="login") == 2
    assert value(m, "ftpgw_backend_errors_total", backend="main", kind="login_refused") == 1
    assert value(m, "ftpgw_backend_errors_total", backend="main", kind="not_found") >= 1
    assert value(m, "ftpgw_backend_op_duration_seconds_count", backend="main", op="open") == 2
    assert value(m, "ftpgw_backend_op_duration_seconds_count", backend="main", op="close") == 2
    assert value(m, "ftpgw_backend_errors_total", backend="main", kind="backend_failure") == 0


def test_data_connections_by_mode_and_result(gw, user):
    seed(user, "f.txt", b"x" * 1000)
    ftp = gw.login(user)
    ftp.set_pasv(False)
    ftp.retrbinary("RETR f.txt", lambda _: None)  # PORT
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ftp.sendcmd(f"EPRT |1|127.0.0.1|{listener.getsockname()[1]}|")
        ftp.sendcmd("RETR f.txt")
        with listener.accept()[0] as data:
            assert data.makefile("rb").read() == b"x" * 1000
        ftp.voidresp()
    ftp.set_pasv(True)
    ftp.af = socket.AF_INET6  # ftplib then uses EPSV, also with an IPv4 server
    ftp.retrbinary("RETR f.txt", lambda _: None)
    # A data connection from another address is dropped (FTP bounce / port theft) and
    # counted; the listener stays open for the real client.
    port = int(ftp.sendcmd("EPSV").split("|")[3])
    stranger = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0), timeout=5)
    assert stranger.recv(1) == b""  # the gateway closes it at once
    stranger.close()
    assert wait_for(lambda: value(scrape(gw), "ftpgw_data_connections_total", mode="epsv", result="rejected"))
    assert value(scrape(gw), "ftpgw_passive_ports_in_use") == 1
    ftp.sendcmd("PASV")  # replaces the open EPSV listener, which was never used
    ftp.quit()
    assert wait_for(lambda: value(scrape(gw), "ftpgw_sessions_active") == 0)
    m = scrape(gw)
    assert value(m, "ftpgw_data_connections_total", mode="port", result="ok") == 1
    assert value(m, "ftpgw_data_connections_total", mode="eprt", result="ok") == 1
    assert value(m, "ftpgw_data_connections_total", mode="epsv", result="ok") == 1
    assert value(m, "ftpgw_data_connections_total", mode="epsv", result="rejected") == 1
    assert value(m, "ftpgw_data_connections_total", mode="epsv", result="unused") == 1
    assert value(m, "ftpgw_data_connections_total", mode="pasv", result="unused") == 1
    assert value(m, "ftpgw_passive_ports_in_use") == 0


def test_backend_connections_and_up(gw, user):
    ftp = gw.login(user)
    assert value(scrape(gw), "ftpgw_backend_connections", backend="main", state="active") == 1
    ftp.quit()
    assert wait_for(lambda: value(scrape(gw), "ftpgw_backend_connections", backend="main", state="idle") == 1)
    assert value(scrape(gw), "ftpgw_backend_connections", backend="main", state="active") == 0
    assert wait_for(lambda: value(scrape(gw), "ftpgw_backend_up", backend="main") == 1)


def test_an_interrupted_download_counts_as_failed_with_the_bytes_it_moved(gw, user):
    seed(user, "big.bin", os.urandom(16 * 2**20))
    ftp = gw.login(user)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")
    conn.recv(65536)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()
    with pytest.raises(ftplib.error_temp):
        ftp.voidresp()
    # Counted right after the 426 goes out (pyftpdlib replies first): a scrape may come between.
    assert wait_for(
        lambda: value(scrape(gw), "ftpgw_transfers_total", direction="download", result="failed") == 1
    )
    m = scrape(gw)
    assert value(m, "ftpgw_transfers_total", direction="download", result="ok") == 0
    sent = value(m, "ftpgw_transfer_bytes_total", direction="download", backend="main")
    assert 0 < sent < 16 * 2**20


def test_metrics_listen_on_loopback_by_default():
    from gateway.config import MetricsConfig

    assert MetricsConfig().address == "127.0.0.1"
    assert MetricsConfig().enabled


def test_concurrent_sessions_gauge(gw, user):
    sessions = [gw.login(user) for _ in range(3)]
    assert value(scrape(gw), "ftpgw_sessions_active") == 3
    for ftp in sessions:
        ftp.quit()
    assert wait_for(lambda: value(scrape(gw), "ftpgw_sessions_active") == 0)


def http_get(gw, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{gw.gateway.metrics_port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_healthz_and_readyz_with_a_good_backend(gw):
    assert http_get(gw, "/healthz") == (200, "ok\n")
    assert wait_for(lambda: http_get(gw, "/readyz") == (200, "ready\n"))


def test_readyz_names_the_failing_backend(gateway_factory, sshd, tmp_path):
    from tests.helpers.gateway_env import base_config
    from tests.helpers.sshd import free_port

    wrong = tmp_path / "known_hosts"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f {tmp_path / 'other'}")
    pub = (tmp_path / "other.pub").read_text().split()
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    doc = base_config(sshd)
    doc["backends"]["impostor"] = {"host": "127.0.0.1", "port": sshd.port, "known_hosts": str(wrong)}
    doc["backends"]["down"] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "known_hosts": str(sshd.known_hosts),
        "connect_timeout": 2,
    }
    gw = gateway_factory(doc)
    assert wait_for(lambda: not http_get(gw, "/readyz")[1].startswith("starting"), timeout=20)
    status, body = http_get(gw, "/readyz")
    assert status == 503
    lines = sorted(body.splitlines())
    assert len(lines) == 2
    assert lines[0].startswith("backend down: unreachable")
    assert lines[1].startswith("backend impostor: host key SHA256:") and "not in known_hosts" in lines[1]
    assert http_get(gw, "/healthz")[0] == 200


def test_metrics_over_tls_with_basic_auth(gateway_factory, sshd, tmp_path):
    import base64
    import ssl
    import subprocess

    from tests.helpers.gateway_env import base_config

    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "1",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    (tmp_path / "pw").write_text("s3cret-metrics\n")
    doc = base_config(sshd)
    doc["metrics"].update(
        basic_auth={"username": "prom", "password_file": str(tmp_path / "pw")},
        tls={"certfile": str(tmp_path / "cert.pem"), "keyfile": str(tmp_path / "key.pem")},
    )
    gw = gateway_factory(doc)
    base = f"https://127.0.0.1:{gw.gateway.metrics_port}"
    ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))

    def get(path, password=None):
        req = urllib.request.Request(base + path)
        if password is not None:
            req.add_header("Authorization", "Basic " + base64.b64encode(f"prom:{password}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    assert get("/metrics")[0] == 401
    assert get("/metrics", "wrong")[0] == 401
    status, body = get("/metrics", "s3cret-metrics")
    assert status == 200 and "ftpgw_sessions_active" in body
    assert get("/healthz") == (200, "ok\n")  # probes carry no credentials
    with pytest.raises(OSError):  # plain HTTP is not served
        urllib.request.urlopen(f"http://127.0.0.1:{gw.gateway.metrics_port}/healthz", timeout=5)
    weak = subprocess.run(  # TLS 1.2 without forward secrecy: refused, as on the FTPS ports
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gw.gateway.metrics_port}", "-tls1_2",
         "-cipher", "AES128-SHA@SECLEVEL=0"],
        input="", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert weak.returncode != 0 and "Cipher is (NONE)" in weak.stdout


def test_promtool_accepts_the_exposition(gw, user):
    ftp = gw.login(user)
    ftp.storbinary("STOR x.bin", io.BytesIO(b"x" * 1000))
    ftp.quit()
    text = urllib.request.urlopen(f"http://127.0.0.1:{gw.gateway.metrics_port}/metrics", timeout=10).read()
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"ftpgw_backend_op_duration_seconds_bucket" in text


def test_a_real_prometheus_sees_the_counters_move(gw, user, tmp_path):
    from tests.helpers.sshd import free_port, wait_port

    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: ftpgw\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{gw.gateway.metrics_port}']}}]\n"
    )
    args = [
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    prometheus = subprocess.Popen(["prometheus", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def query(expr: str) -> float | None:
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            result = json.loads(urllib.request.urlopen(url, timeout=5).read())["data"]["result"]
        except OSError:
            return None
        return float(result[0]["value"][1]) if result else None

    try:
        wait_port("127.0.0.1", port, timeout=30)
        assert wait_for(lambda: query('up{job="ftpgw"}') == 1, timeout=30)
        before = query('sum(ftpgw_transfers_total{direction="upload",result="ok"})') or 0
        ftp = gw.login(user)
        for i in range(3):
            ftp.storbinary(f"STOR p{i}.bin", io.BytesIO(b"p" * 10_000))
        ftp.quit()
        expr = 'sum(ftpgw_transfer_bytes_total{direction="upload"})'
        assert wait_for(lambda: query(expr) == 30_000, timeout=30)
        assert query('sum(ftpgw_transfers_total{direction="upload",result="ok"})') == before + 3
        assert query('ftpgw_logins_total{result="ok",tls="no"}') == 1
    finally:
        prometheus.terminate()
        prometheus.wait(30)


def test_readyz_follows_a_backend_sshd_that_stops_and_returns(gateway_factory, sshd, tmp_path, monkeypatch):
    import gateway.edges.app
    from tests.helpers.gateway_env import base_config
    from tests.helpers.sshd import OpenSSHServer

    monkeypatch.setattr(gateway.edges.app, "READY_INTERVAL", 0.5)
    second = OpenSSHServer(tmp_path / "sshd2").start()
    try:
        doc = base_config(sshd)
        doc["backends"]["second"] = {
            "host": "127.0.0.1",
            "port": second.port,
            "known_hosts": str(second.known_hosts),
            "connect_timeout": 2,
        }
        gw = gateway_factory(doc)
        assert wait_for(lambda: http_get(gw, "/readyz") == (200, "ready\n"), timeout=20)
        assert value(scrape(gw), "ftpgw_backend_up", backend="second") == 1
        second.stop()
        assert wait_for(lambda: http_get(gw, "/readyz")[0] == 503, timeout=20)
        assert http_get(gw, "/readyz")[1].startswith("backend second: unreachable")
        assert value(scrape(gw), "ftpgw_backend_up", backend="second") == 0
        assert value(scrape(gw), "ftpgw_backend_up", backend="main") == 1
        second.start()  # same port, same host key
        assert wait_for(lambda: http_get(gw, "/readyz") == (200, "ready\n"), timeout=20)
    finally:
        second.stop()


def raw_http(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return sock.makefile("rb").read()


def test_the_listener_answers_bad_requests_plainly_and_closes(gw):
    port = gw.gateway.metrics_port
    head = raw_http(port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (
        head.startswith(b"HTTP/1.1 200 OK\r\n")
        and b"Content-Length: 3\r\n" in head
        and head.endswith(b"\r\n\r\n")
    )
    assert raw_http(port, b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
    assert raw_http(port, b"GET /nothing HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404 ")
    assert raw_http(port, b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    try:  # a head over 8 KiB: closed (reset, as the rest was never read), no reply
        too_long = raw_http(port, b"GET /" + b"x" * 10000 + b" HTTP/1.1\r\n\r\n")
    except ConnectionResetError:
        too_long = b""
    assert too_long == b""
    gzipped = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(gzipped, timeout=10) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
