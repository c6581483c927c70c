"""Who may call what, over what: tokens and roles, mutual TLS, the audit log, and the limits that keep one
client from taking the server from the others. Real servers on 127.0.0.1, a throwaway CA (certs.py)."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time

import numpy as np
import pytest
import requests
from certs import Authority
from google.protobuf import text_format
from repo_files import copy_version, write_config
from tensorflow_serving.config import model_server_config_pb2

import hostile
from localhost.ports import free_port
from serving import protos
from serving.__main__ import build_parser
from serving.auth import load_tokens
from serving.client import GrpcClient, RestClient, ServingClientError
from serving.process import ServerProcess
from serving.server import warn_if_exposed

pytestmark = pytest.mark.xdist_group("test_security")  # its module-scoped server starts once, in one worker
PREDICT_TOKEN = "p" * 20 + "-predict-secret"  # may use hpt only
ADMIN_TOKEN = "a" * 20 + "-admin-secret"
NEW_TOKEN = "n" * 20 + "-added-on-sighup"
BODY = '{"instances": [1.0]}'


def token_file(path, *entries):
    lines = ["tokens:"] + [f"  - {{id: {i}, token: '{t}', role: {r}" + (f", models: [{m}]" if m else "") + "}"
                           for i, t, r, m in entries]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def secured(tmp_path_factory, half_plus_two_base):
    """A server with tokens, mutual TLS and an audit log; models hpt and other (both half_plus_two)."""
    work = tmp_path_factory.mktemp("secured")
    for name in ("hpt", "other"):
        copy_version(half_plus_two_base, 123, work / name / "123")
    config = write_config(work / "models.config", [("hpt", work / "hpt", ""), ("other", work / "other", "")])
    tokens = token_file(work / "tokens.yaml", ("dashboards", PREDICT_TOKEN, "predict", "hpt"),
                        ("deployer", ADMIN_TOKEN, "admin", None))
    ca = Authority(work)
    server_cert, server_key = ca.issue("server", server=True)
    client_cert = ca.issue("client", server=False)
    ssl_config = protos.SSLConfig(server_key=server_key.read_text(), server_cert=server_cert.read_text(),
                                  custom_ca=ca.cert_file.read_text(), client_verify=True)
    (work / "ssl.config").write_text(text_format.MessageToString(ssl_config))
    grpc_port = free_port()
    tls = {"ca_cert": ca.cert_file, "client_cert": client_cert}
    (work / "monitoring.config").write_text("prometheus_config { enable: true }")
    process = ServerProcess(f"--model_config_file={config}", f"--port={grpc_port}", f"--auth_token_file={tokens}",
                            f"--monitoring_config_file={work / 'monitoring.config'}",
                            "--auth_allow_status", f"--audit_log_file={work / 'audit.jsonl'}",
                            f"--ssl_config_file={work / 'ssl.config'}", log_dir=work, client_options=tls)
    process.target, process.work, process.tls, process.ca, process.config = (
        f"127.0.0.1:{grpc_port}", work, tls, ca, config)
    process.wait_available("hpt")
    process.wait_available("other")
    yield process
    assert process.stop() == 0, process.log_tail()
    log = process.log.read_text() + (work / "audit.jsonl").read_text()
    assert not any(secret in log for secret in (PREDICT_TOKEN, ADMIN_TOKEN, NEW_TOKEN))  # never logged


def audit(server) -> list[dict]:
    return [json.loads(line) for line in (server.work / "audit.jsonl").read_text().splitlines()]


def rest(server, token=None, **options):
    return RestClient(server.url, token=token, **{**server.tls, **options})


def test_rest_tokens_roles_and_models(secured):
    with rest(secured) as anonymous, rest(secured, token="not-a-token-at-all") as forged, \
            rest(secured, token=PREDICT_TOKEN) as predictor, rest(secured, token=ADMIN_TOKEN) as admin:
        assert anonymous.status("hpt")[0]["state"] == "AVAILABLE"  # --auth_allow_status: health checks need no token
        for client, status, message in [(anonymous, 401, "Missing credentials"), (forged, 401, "Invalid credentials")]:
            with pytest.raises(ServingClientError) as info:
                client.predict("hpt", [1.0])
            assert (info.value.status, info.value.message.split(":")[0]) == (status, message)
        assert predictor.predict("hpt", [1.0])["y"].tolist() == [2.5]
        with pytest.raises(ServingClientError) as info:
            predictor.predict("other", [1.0])
        assert info.value.status == 403 and info.value.message == "Token 'dashboards' (role predict) may not use model 'other'"
        assert admin.predict("other", [1.0])["y"].tolist() == [2.5]
    tls = {"verify": str(secured.ca.cert_file), "cert": tuple(map(str, secured.tls["client_cert"])), "timeout": 10}
    raw = requests.post(f"{secured.url}/v1/models/hpt:predict", data=BODY, **tls)
    assert raw.status_code == 401 and raw.headers["WWW-Authenticate"] == "Bearer"
    metrics = f"{secured.url}/monitoring/prometheus/metrics"
    assert requests.get(metrics, **tls).status_code == 401  # open status (--auth_allow_status) is not open metrics
    assert requests.get(f"{metrics}?x=1", **tls).status_code == 401  # the metrics page, whatever its query string
    scraped = requests.get(metrics, headers={"Authorization": f"Bearer {PREDICT_TOKEN}"}, **tls)
    assert scraped.status_code == 200 and "serving_requests_total" in scraped.text
    failures = [e for e in audit(secured) if e["action"] == "auth_failure"]
    assert {(e["token_id"], e["result"].split(":")[0]) for e in failures} >= {(None, "UNAUTHENTICATED"),
                                                                             ("dashboards", "PERMISSION_DENIED")}
    assert all(e["peer"].startswith("127.0.0.1:") and e["target"].startswith("REST ") for e in failures)


def test_grpc_tokens_roles_and_audited_reload(secured):
    with GrpcClient(secured.target, **secured.tls) as anonymous, \
            GrpcClient(secured.target, token=PREDICT_TOKEN, **secured.tls) as predictor, \
            GrpcClient(secured.target, token=ADMIN_TOKEN, **secured.tls) as admin:
        assert anonymous.status("other")[0]["state"] == "AVAILABLE"
        with pytest.raises(ServingClientError, match="UNAUTHENTICATED: Missing credentials"):
            anonymous.predict("hpt", np.array([1.0], np.float32))
        assert predictor.predict("hpt", np.array([1.0], np.float32))["y"].tolist() == [2.5]
        with pytest.raises(ServingClientError, match="PERMISSION_DENIED: Token 'dashboards' .* model 'other'"):
            predictor.metadata("other")
        config = model_server_config_pb2.ModelServerConfig()
        text_format.Parse(secured.config.read_text(), config)
        config.model_config_list.config[0].version_labels["stable"] = 123
        with pytest.raises(ServingClientError, match="PERMISSION_DENIED: Token 'dashboards' .* reload"):
            predictor.reload_config(config)
        admin.reload_config(config)
        assert admin.predict("hpt", np.array([1.0], np.float32), label="stable")["y"].tolist() == [2.5]
    entries = audit(secured)
    reload = [e for e in entries if e["action"] == "reload"]
    assert [(e["token_id"], e["target"], e["result"]) for e in reload] == [("deployer", "hpt,other", "OK")]
    assert reload[0]["peer"].startswith("ipv4:127.0.0.1:")
    assert [e["target"] for e in entries if e["action"] == "label_change"] == ["hpt/stable: - -> 123"]
    assert any(e["action"] == "auth_failure" and e["token_id"] == "dashboards" and "reload" in e["result"]
               for e in entries)


def test_tls_refuses_clients_without_the_ca_or_a_client_certificate(secured, tmp_path):
    stranger = Authority(tmp_path, "stranger CA")
    with RestClient(secured.url, token=ADMIN_TOKEN, ca_cert=stranger.cert_file,
                    client_cert=secured.tls["client_cert"]) as client:
        with pytest.raises(ServingClientError, match="TLS with .* failed"):
            client.status("hpt")  # the server's certificate is not signed by a CA this client trusts
    with rest(secured, token=ADMIN_TOKEN, client_cert=None) as client:
        with pytest.raises(ServingClientError, match="UNAVAILABLE"):
            client.status("hpt")  # mutual TLS: no client certificate, no connection
    with GrpcClient(secured.target, token=ADMIN_TOKEN, ca_cert=secured.ca.cert_file, timeout_s=5) as client:
        with pytest.raises(ServingClientError, match="UNAVAILABLE"):
            client.status("hpt")
    with pytest.raises(requests.ConnectionError):  # clear text to the TLS port: hung up on
        requests.get(secured.url.replace("https", "http") + "/v1/models/hpt", timeout=5)


def test_sighup_reloads_tokens_and_a_broken_file_keeps_them(secured):
    tokens = secured.work / "tokens.yaml"
    original = tokens.read_text()
    try:
        token_file(tokens, ("deployer", ADMIN_TOKEN, "admin", None), ("newcomer", NEW_TOKEN, "predict", None))
        os.kill(secured.process.pid, signal.SIGHUP)
        with rest(secured, token=NEW_TOKEN) as newcomer, rest(secured, token=PREDICT_TOKEN) as removed:
            _eventually(lambda: newcomer.predict("other", [2.0])["y"].tolist() == [3.0])
            with pytest.raises(ServingClientError, match="Invalid credentials"):
                removed.predict("hpt", [1.0])
            tokens.write_text("tokens: [{id: x, token: short, role: root}]\n")
            os.kill(secured.process.pid, signal.SIGHUP)
            _eventually(lambda: any(e["action"] == "token_reload" and e["result"] != "OK" for e in audit(secured)))
            assert newcomer.predict("other", [2.0])["y"].tolist() == [3.0]
    finally:
        tokens.write_text(original)
        os.kill(secured.process.pid, signal.SIGHUP)
    log = secured.log.read_text()
    assert "Keeping the previous tokens" in log and "tokens[0] (id 'x'): token: expected a string of at least" in log


def _eventually(condition, timeout_s=10):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except ServingClientError:
            pass
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.1)


@pytest.mark.parametrize("text, message", [
    ("tokens: []", "non-empty list `tokens:`"),
    ("tokens: [{id: a, token: '0123456789abcdef', role: owner}]", "tokens[0] (id 'a'): role: expected one of"),
    ("tokens: [{id: a, token: 'tiny', role: admin}]", "token: expected a string of at least 16 characters (received str of 4)"),
    ("tokens: [{id: a, token: '0123456789abcdef', role: admin}, {id: a, token: '0123456789abcdeg', role: admin}]",
     "id 'a' is used by more than one token"),
    ("tokens: [{id: a, token: '0123456789abcdef', role: admin, models: digits}]", "models: expected a list"),
    ("tokens: [{id: a, secret: '0123456789abcdef', role: admin}]", "unknown key(s) ['secret']"),
])
def test_bad_token_files_are_explained_without_the_secret(tmp_path, text, message):
    path = tmp_path / "tokens.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_tokens(path)
    assert message in str(info.value) and "0123456789abcde" not in str(info.value)


def test_binding_other_interfaces_without_auth_or_tls_warns(caplog):
    parser = build_parser()
    with caplog.at_level(logging.WARNING, logger="serving"):
        warn_if_exposed(parser.parse_args(["--host=127.0.0.1"]))
        assert caplog.text == ""
        warn_if_exposed(parser.parse_args(["--host=0.0.0.0", "--auth_token_file=t.yaml"]))
    assert "Serving on 0.0.0.0, reachable from other machines, without TLS (--ssl_config_file)" in caplog.text
    assert "authentication" not in caplog.text


@pytest.fixture(scope="module")
def limited(tmp_path_factory, half_plus_two_base):
    """A server with small limits: 2 requests in flight, 6 connections, 1 s for a request header."""
    work = tmp_path_factory.mktemp("limited")
    copy_version(half_plus_two_base, 123, work / "hpt" / "123")
    process = ServerProcess("--model_name=hpt", f"--model_base_path={work / 'hpt'}", "--port=0",
                            "--max_requests_in_flight=2", "--rest_api_max_connections=6",
                            "--rest_api_idle_timeout_s=1", "--rest_api_timeout_in_ms=20000", log_dir=work)
    process.wait_available("hpt")
    yield process
    assert process.stop() == 0, process.log_tail()


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)


def test_requests_past_the_in_flight_limit_get_429(limited):
    held = [connect(limited) for _ in range(2)]  # two requests whose bodies never finish: both in flight
    try:
        for s in held:
            s.sendall(b"POST /v1/models/hpt:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.3)
        refused = requests.post(f"{limited.url}/v1/models/hpt:predict", data=BODY, timeout=10)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        assert "Too many requests in flight (limit 2, --max_requests_in_flight)" in refused.json()["error"]
    finally:
        for s in held:
            s.close()
    _eventually(lambda: requests.post(f"{limited.url}/v1/models/hpt:predict", data=BODY, timeout=10).ok)


def test_connections_past_the_cap_get_503_and_silent_ones_are_closed(limited):
    idle = [connect(limited) for _ in range(6)]
    try:
        time.sleep(0.2)
        extra = connect(limited)
        answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and b"--rest_api_max_connections" in answer
        trickle = idle[0]
        started = time.monotonic()
        trickle.sendall(b"GET /v1/models/hpt HTTP/1.1\r\n")  # a header that never ends
        assert trickle.recv(4096) == b"" and time.monotonic() - started < 3  # closed by the idle timeout (1 s)
    finally:
        for s in idle:
            s.close()
    _eventually(lambda: requests.get(f"{limited.url}/v1/models/hpt", timeout=10).ok)


def test_long_names_are_refused_without_being_echoed(limited):
    name = "m" * 5000
    response = requests.post(f"{limited.url}/v1/models/{name}:predict", data=BODY, timeout=10)
    assert response.status_code == 400 and len(response.text) < 300
    assert "model name of 5000 characters: at most 1000" in response.json()["error"]


@pytest.mark.slow  # seconds of memory measurement: CI runs it, make test-quick does not
def test_large_failing_bodies_do_not_pile_up_in_memory(limited):
    body = '{"instances": [' + "1.5," * 1_000_000 + '"x"]}'  # 5 MB, parsed off the event loop, refused at the end
    def send():
        response = requests.post(f"{limited.url}/v1/models/hpt:predict", data=body, timeout=60)
        assert response.status_code == 400 and "element: 1000000" in response.json()["error"]

    send()
    before = limited.rss_mib()
    for _ in range(4):
        send()
    after = hostile.settled_rss_mib(limited, before + 40)
    assert after - before < 40, (before, after)  # each request's ~50 MB of objects was kept before (a cycle)


def test_versions_linked_from_outside_the_root_are_ignored(tmp_path, half_plus_two_base, caplog):
    from serving.manager import ModelManager
    from serving.metrics import Metrics
    from serving.model_config import single_model_config

    root = tmp_path / "models"
    copy_version(half_plus_two_base, 123, root / "hpt" / "1")
    (root / "hpt" / "2").symlink_to(copy_version(half_plus_two_base, 123, tmp_path / "elsewhere" / "2"))
    manager = ModelManager(single_model_config("hpt", str(root / "hpt")), Metrics(), enable_warmup=False,
                           path_root=str(root))
    with caplog.at_level(logging.WARNING, logger="serving"):
        manager.start(0)
    assert [version for version, _ in manager.status("hpt")] == [1]
    assert "Ignoring hpt version 2: its directory resolves outside --model_base_path_root" in caplog.text


def test_requests_that_are_not_http_log_one_line_not_a_traceback(limited):
    before = len(limited.log.read_text())
    for payload in (b"GARBAGE\r\n\r\n", b"POST /v1/models/hpt:predict HTTP/1.1\r\nContent-Length: 1\r\n\r\n{"):
        with connect(limited) as s:
            s.sendall(payload)
            assert s.recv(4096).startswith(b"HTTP/1.0 400")
    _eventually(lambda: limited.log.read_text()[before:].count("\n") == 2)
    lines = limited.log.read_text()[before:].splitlines()
    assert [line.split(" serving: ")[1] for line in lines] == ["REST answered 400 to 127.0.0.1: BadHttpMethod",
                                                               "REST answered 400 to 127.0.0.1: BadHttpMessage"]
    assert "Traceback" not in limited.log.read_text()


def test_versions_are_ascii_digits_only(limited):
    response = requests.post(f"{limited.url}/v1/models/hpt/versions/١٢٣:predict", data=BODY, timeout=10)
    assert response.status_code == 400 and response.json()["error"].startswith("Malformed request: POST")
