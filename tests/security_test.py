"""Issue #13, server side, against the real optd binary: TLS and mTLS (certificates made by
openssl at test time, tests/security_testing.py), bearer tokens, roles, tenants, quotas, reloads of
certificates and of the access file, /metrics basic auth, the audit log, and the rule that plaintext
needs --insecure off loopback.

Run: /usr/bin/python3 -m pytest -q tests/security_test.py (ctest: security_test).
"""

import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from optd_testing import OptdProcess, binary_path, from_tensor, load_stubs, to_tensor
from security_testing import make_pki, sha256_hex, token_line

pb2, pb2_grpc = load_stubs()
TIMEOUT = 20.0

ALICE, BOB, READER, ADMIN = "alice-token-1", "bob-token-2", "reader-token-3", "admin-token-4"


@pytest.fixture(scope="module")
def pki():
    with tempfile.TemporaryDirectory(prefix="optd-pki-") as d:
        yield make_pki(d)


@pytest.fixture
def workdir():
    with tempfile.TemporaryDirectory(prefix="optd-security-") as d:
        yield Path(d)


def access_file(path, extra=""):
    path.write_text("# tenants of the test\n" + token_line(ALICE, "acme", "writer", "alice") +
                    token_line(BOB, "globex", "writer", "bob") +
                    token_line(READER, "acme", "reader") + token_line(ADMIN, "ops", "admin") +
                    "cert:alice acme writer\n" + extra)
    return path


def md(token):
    return (("authorization", f"Bearer {token}"),)


def creds(pki, client="alice"):
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=pki.read("ca.pem"))
    return grpc.ssl_channel_credentials(root_certificates=pki.read("ca.pem"),
                                        private_key=pki.read(f"{client}.key"),
                                        certificate_chain=pki.read(f"{client}.pem"))


def tls_args(pki, mutual=True, interval="1s"):
    args = [f"--tls_cert={pki.path('server.pem')}", f"--tls_key={pki.path('server.key')}",
            f"--tls_reload_interval={interval}"]
    if mutual:
        args.append(f"--tls_client_ca={pki.path('ca.pem')}")
    return args


def adam(lr=0.01):
    return pb2.SessionConfig(optimizer=pb2.OptimizerConfig(adam=pb2.Adam(lr=lr)))


def create(stub, token, sid, n=8, config=None):
    return stub.CreateSession(pb2.CreateSessionRequest(
        session_id=sid, config=config or adam(),
        tensors=[to_tensor("w", np.linspace(-1, 1, n, dtype=np.float32))]),
        metadata=md(token), timeout=TIMEOUT)


def step(stub, token, sid, n=8):
    return stub.Step(pb2.StepRequest(session_id=sid, gradients=[
        to_tensor("w", np.ones(n, np.float32))]), metadata=md(token), timeout=TIMEOUT)


def code_of(call):
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def channel(optd, credentials):
    ch = grpc.secure_channel(optd.address, credentials)
    return ch, pb2_grpc.OptimizerStub(ch)


# -- TLS and mTLS ---------------------------------------------------------------------------------


def test_mtls_refuses_a_missing_foreign_or_expired_client_certificate(pki):
    optd = OptdProcess(extra_args=tls_args(pki), credentials=creds(pki)).start()
    try:
        assert optd.stub.ListSessions(pb2.ListSessionsRequest(), timeout=TIMEOUT) is not None
        for bad in [grpc.ssl_channel_credentials(root_certificates=pki.read("ca.pem")),
                    grpc.ssl_channel_credentials(root_certificates=pki.read("ca.pem"),
                                                 private_key=pki.read("other_client.key"),
                                                 certificate_chain=pki.read("other_client.pem")),
                    grpc.ssl_channel_credentials(root_certificates=pki.read("ca.pem"),
                                                 private_key=pki.read("expired.key"),
                                                 certificate_chain=pki.read("expired.pem"))]:
            ch, stub = channel(optd, bad)
            code, _ = code_of(lambda: stub.ListSessions(pb2.ListSessionsRequest(), timeout=5))
            assert code == grpc.StatusCode.UNAVAILABLE
            ch.close()
        # A plaintext client gets no service either.
        ch = grpc.insecure_channel(optd.address)
        code, _ = code_of(lambda: pb2_grpc.OptimizerStub(ch).ListSessions(
            pb2.ListSessionsRequest(), timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE
        ch.close()
        # A client that does not trust the server's CA refuses it.
        ch, stub = channel(optd, grpc.ssl_channel_credentials(
            root_certificates=pki.read("other_ca.pem"), private_key=pki.read("alice.key"),
            certificate_chain=pki.read("alice.pem")))
        code, _ = code_of(lambda: stub.ListSessions(pb2.ListSessionsRequest(), timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE
        ch.close()
    finally:
        optd.stop()


def peer_certificate_subject(optd, pki):
    context = ssl.create_default_context(cafile=str(pki.path("ca.pem")))
    context.load_cert_chain(str(pki.path("alice.pem")), str(pki.path("alice.key")))
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", optd.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]


def test_a_certificate_replaced_on_disk_serves_new_connections_and_open_streams_go_on(pki,
                                                                                     workdir):
    cert, key = workdir / "server.pem", workdir / "server.key"
    cert.write_bytes(pki.read("server.pem"))
    key.write_bytes(pki.read("server.key"))
    args = [f"--tls_cert={cert}", f"--tls_key={key}", f"--tls_client_ca={pki.path('ca.pem')}",
            "--tls_reload_interval=1s"]
    optd = OptdProcess(extra_args=args, credentials=creds(pki)).start()
    try:
        assert peer_certificate_subject(optd, pki) == "server"
        optd.stub.CreateSession(pb2.CreateSessionRequest(
            session_id="s", config=adam(), tensors=[to_tensor("w", np.zeros(4, np.float32))]),
            timeout=TIMEOUT)
        import queue
        q = queue.Queue()
        replies = optd.stub.StreamSteps(iter(q.get, None), timeout=60)

        def stream_step():
            q.put(pb2.StepRequest(session_id="s",
                                  gradients=[to_tensor("w", np.ones(4, np.float32))]))
            return next(replies)

        assert stream_step().WhichOneof("result") == "reply"
        # Key first, then the certificate: the provider takes the pair once both match.
        key.write_bytes(pki.read("server2.key"))
        cert.write_bytes(pki.read("server2.pem"))
        deadline = time.monotonic() + 15
        while peer_certificate_subject(optd, pki) != "server2":
            assert time.monotonic() < deadline, "the new certificate was never served"
            time.sleep(0.3)
        # The stream opened before the change still steps, on its first connection.
        assert stream_step().reply.version == 2
        q.put(None)
        # And a new channel works with the new certificate.
        ch, stub = channel(optd, creds(pki))
        assert stub.GetSession(pb2.GetSessionRequest(session_id="s"), timeout=TIMEOUT).version == 2
        ch.close()
    finally:
        optd.stop()


# -- tokens, roles, tenants -----------------------------------------------------------------------


@pytest.fixture
def secured(pki, workdir):
    audit = workdir / "audit.log"
    tokens = access_file(workdir / "tokens")
    optd = OptdProcess(extra_args=[*tls_args(pki), f"--auth_tokens_file={tokens}",
                                   f"--audit_log={audit}"], credentials=creds(pki)).start()
    optd.tokens_path = tokens
    optd.audit_path = audit
    yield optd
    optd.stop()


def test_no_token_or_an_unknown_one_is_unauthenticated_and_changes_nothing(secured):
    stub = secured.stub
    create(stub, ALICE, "run")
    # alice's certificate is listed (cert:alice): without a token, the call is hers.
    assert stub.Step(pb2.StepRequest(session_id="run", gradients=[
        to_tensor("w", np.ones(8, np.float32))]), timeout=TIMEOUT).version == 1
    code, details = code_of(lambda: step(stub, "not-a-token", "run"))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "not one this server accepts" in details and "not-a-token" not in details
    code, details = code_of(lambda: stub.GetSession(
        pb2.GetSessionRequest(session_id="run"), metadata=(("authorization", "Basic eDp5"),),
        timeout=TIMEOUT))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
    assert stub.GetSession(pb2.GetSessionRequest(session_id="run"), metadata=md(ALICE),
                           timeout=TIMEOUT).version == 1


def test_a_certificate_that_is_not_listed_needs_a_token(pki, workdir):
    tokens = access_file(workdir / "tokens")
    optd = OptdProcess(extra_args=[*tls_args(pki), f"--auth_tokens_file={tokens}"],
                       credentials=creds(pki, "bob")).start()
    try:
        code, details = code_of(lambda: optd.stub.ListSessions(pb2.ListSessionsRequest(),
                                                               timeout=TIMEOUT))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "no bearer token" in details and "(bob) is not listed" in details
        assert optd.stub.ListSessions(pb2.ListSessionsRequest(), metadata=md(BOB),
                                      timeout=TIMEOUT) is not None
    finally:
        optd.stop()


def test_a_reader_may_read_but_not_write(secured):
    stub = secured.stub
    create(stub, ALICE, "run")
    step(stub, ALICE, "run")
    assert stub.GetSession(pb2.GetSessionRequest(session_id="run"), metadata=md(READER),
                           timeout=TIMEOUT).version == 1
    pulled = stub.Pull(pb2.PullRequest(session_id="run"), metadata=md(READER), timeout=TIMEOUT)
    assert pulled.version == 1
    for call in [lambda: step(stub, READER, "run"),
                 lambda: create(stub, READER, "mine"),
                 lambda: stub.DeleteSession(pb2.DeleteSessionRequest(session_id="run"),
                                            metadata=md(READER), timeout=TIMEOUT),
                 lambda: stub.UpdateSession(pb2.UpdateSessionRequest(
                     session_id="run", optimizer=pb2.OptimizerConfig(adam=pb2.Adam(lr=1.0))),
                     metadata=md(READER), timeout=TIMEOUT),
                 lambda: stub.Checkpoint(pb2.CheckpointRequest(session_id="run"),
                                         metadata=md(READER), timeout=TIMEOUT)]:
        code, details = code_of(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED, details
        assert "role reader of tenant acme" in details
    info = stub.GetSession(pb2.GetSessionRequest(session_id="run"), metadata=md(ALICE),
                           timeout=TIMEOUT)
    assert info.version == 1 and info.config.optimizer.adam.lr == pytest.approx(0.01)


def test_a_tenant_never_reaches_another_tenants_session(secured):
    stub = secured.stub
    create(stub, BOB, "model")
    step(stub, BOB, "model")
    before = from_tensor(stub.Pull(pb2.PullRequest(session_id="model"), metadata=md(BOB),
                                   timeout=TIMEOUT).tensors[0])
    calls = {
        "get": lambda sid: stub.GetSession(pb2.GetSessionRequest(session_id=sid),
                                           metadata=md(ALICE), timeout=TIMEOUT),
        "pull": lambda sid: stub.Pull(pb2.PullRequest(session_id=sid), metadata=md(ALICE),
                                      timeout=TIMEOUT),
        "step": lambda sid: step(stub, ALICE, sid),
        "join": lambda sid: stub.JoinSession(pb2.JoinSessionRequest(session_id=sid, worker_id="w"),
                                             metadata=md(ALICE), timeout=TIMEOUT),
        "update": lambda sid: stub.UpdateSession(pb2.UpdateSessionRequest(
            session_id=sid, optimizer=pb2.OptimizerConfig(adam=pb2.Adam(lr=5.0))),
            metadata=md(ALICE), timeout=TIMEOUT),
        "checkpoint": lambda sid: stub.Checkpoint(pb2.CheckpointRequest(session_id=sid),
                                                  metadata=md(ALICE), timeout=TIMEOUT),
        "delete": lambda sid: stub.DeleteSession(pb2.DeleteSessionRequest(session_id=sid),
                                                 metadata=md(ALICE), timeout=TIMEOUT),
    }
    for name, call in calls.items():
        code, details = code_of(lambda: call("model"))
        assert code == grpc.StatusCode.NOT_FOUND, (name, code, details)
        assert "globex" not in details, (name, details)
        # Naming the tenant outright is refused too.
        code, details = code_of(lambda: call("globex:model"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, code, details)
    listed = stub.ListSessions(pb2.ListSessionsRequest(), metadata=md(ALICE), timeout=TIMEOUT)
    assert [s.session_id for s in listed.sessions] == []
    # Bob's session is as it was.
    info = stub.GetSession(pb2.GetSessionRequest(session_id="model"), metadata=md(BOB),
                           timeout=TIMEOUT)
    assert info.version == 1 and info.session_id == "model" and info.tenant == "globex"
    after = from_tensor(stub.Pull(pb2.PullRequest(session_id="model"), metadata=md(BOB),
                                  timeout=TIMEOUT).tensors[0])
    np.testing.assert_array_equal(before, after)
    # The same id in two tenants: two sessions.
    create(stub, ALICE, "model", n=4)
    assert stub.GetSession(pb2.GetSessionRequest(session_id="model"), metadata=md(ALICE),
                           timeout=TIMEOUT).num_parameters == 4
    assert stub.GetSession(pb2.GetSessionRequest(session_id="model"), metadata=md(BOB),
                           timeout=TIMEOUT).num_parameters == 8
    # A generated id belongs to its creator's tenant.
    generated = create(stub, ALICE, "").session_id
    assert generated.startswith("s-") and ":" not in generated
    mine = stub.ListSessions(pb2.ListSessionsRequest(), metadata=md(ALICE), timeout=TIMEOUT)
    assert sorted(s.session_id for s in mine.sessions) == sorted(["model", generated])
    # The admin sees every tenant's, with the tenant, and names them tenant:id.
    every = stub.ListSessions(pb2.ListSessionsRequest(), metadata=md(ADMIN), timeout=TIMEOUT)
    assert sorted((s.tenant, s.session_id) for s in every.sessions) == sorted(
        [("acme", "acme:model"), ("acme", f"acme:{generated}"), ("globex", "globex:model")])
    assert stub.GetSession(pb2.GetSessionRequest(session_id="globex:model"), metadata=md(ADMIN),
                           timeout=TIMEOUT).version == 1


def test_list_pages_stay_within_the_tenant(secured):
    stub = secured.stub
    for i in range(5):
        create(stub, ALICE, f"a{i}", n=2)
        create(stub, BOB, f"a{i}", n=2)
    seen, token = [], ""
    while True:
        page = stub.ListSessions(pb2.ListSessionsRequest(page_size=2, page_token=token),
                                 metadata=md(ALICE), timeout=TIMEOUT)
        seen += [s.session_id for s in page.sessions]
        assert all(s.tenant == "acme" for s in page.sessions)
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"a{i}" for i in range(5)]


def test_a_removed_token_is_refused_after_the_reload_and_sighup_rereads(secured):
    stub = secured.stub
    create(stub, ALICE, "run")
    import queue
    q = queue.Queue()
    replies = stub.StreamSteps(iter(q.get, None), metadata=md(ALICE), timeout=60)
    q.put(pb2.StepRequest(session_id="run", gradients=[to_tensor("w", np.ones(8, np.float32))]))
    assert next(replies).reply.version == 1
    text = secured.tokens_path.read_text()
    secured.tokens_path.write_text(
        "\n".join(l for l in text.splitlines() if sha256_hex(ALICE) not in l) + "\n")
    deadline = time.monotonic() + 10
    while True:
        try:
            stub.GetSession(pb2.GetSessionRequest(session_id="run"), metadata=md(ALICE),
                            timeout=TIMEOUT)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED
            break
        assert time.monotonic() < deadline, "the removed token was still accepted after 10 s"
        time.sleep(0.2)
    # The open stream's next step is refused too.
    q.put(pb2.StepRequest(session_id="run", gradients=[to_tensor("w", np.ones(8, np.float32))]))
    with pytest.raises(grpc.RpcError) as e:
        next(replies)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    q.put(None)
    # SIGHUP: the token is back at once.
    secured.tokens_path.write_text(text)
    os.kill(secured.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while True:
        try:
            assert stub.GetSession(pb2.GetSessionRequest(session_id="run"), metadata=md(ALICE),
                                   timeout=TIMEOUT).version == 1
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert secured.proc.poll() is None


def test_quotas_name_the_quota_the_use_and_the_limit(pki, workdir):
    tokens = access_file(workdir / "tokens", "quota acme sessions=2 parameter_bytes=1K\n"
                                             "quota globex steps_per_second=2\n")
    optd = OptdProcess(extra_args=[*tls_args(pki), f"--auth_tokens_file={tokens}"],
                       credentials=creds(pki)).start()
    try:
        stub = optd.stub
        create(stub, ALICE, "a", n=8)   # 8 * (4 + 8) = 96 bytes with Adam
        create(stub, ALICE, "b", n=8)
        code, details = code_of(lambda: create(stub, ALICE, "c", n=8))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "quota sessions of tenant acme reached: 2 sessions in use, limit 2" in details
        stub.DeleteSession(pb2.DeleteSessionRequest(session_id="b"), metadata=md(ALICE),
                           timeout=TIMEOUT)
        code, details = code_of(lambda: create(stub, ALICE, "big", n=100))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("quota parameter_bytes of tenant acme exceeded: 96 bytes in use + 1200 for this "
                "session") in details and "limit 1024" in details
        # The step rate: bursts of 2, then refused, nothing applied.
        create(stub, BOB, "g")
        step(stub, BOB, "g")
        step(stub, BOB, "g")
        code, details = code_of(lambda: step(stub, BOB, "g"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "quota steps_per_second of tenant globex reached" in details
        assert "limit 2 per second" in details
        assert stub.GetSession(pb2.GetSessionRequest(session_id="g"), metadata=md(BOB),
                               timeout=TIMEOUT).version == 2
        time.sleep(1.1)
        assert step(stub, BOB, "g").version == 3
        # Another tenant's quota is not acme's.
        create(stub, ADMIN, "x", n=1000)
    finally:
        optd.stop()


def test_the_audit_log_records_who_did_what_and_never_a_token(secured):
    stub = secured.stub
    create(stub, ALICE, "run")
    stub.Checkpoint  # (no --checkpoint_dir: the checkpoint is refused, and logged)
    code_of(lambda: stub.Checkpoint(pb2.CheckpointRequest(session_id="run"), metadata=md(ALICE),
                                    timeout=TIMEOUT))
    code_of(lambda: step(stub, "wrong-token-xyz", "run"))
    code_of(lambda: step(stub, READER, "run"))
    stub.DeleteSession(pb2.DeleteSessionRequest(session_id="run"), metadata=md(ALICE),
                       timeout=TIMEOUT)
    text = secured.audit_path.read_text()
    lines = [json.loads(l) for l in text.splitlines()]
    events = [(l["event"], l.get("principal"), l["outcome"]) for l in lines]
    assert ("session.create", "alice", "OK") in events
    assert ("session.checkpoint", "alice", "FAILED_PRECONDITION") in events
    assert ("auth.unauthenticated", None, "UNAUTHENTICATED") in events
    assert ("auth.denied", f"token:{sha256_hex(READER)[:8]}", "PERMISSION_DENIED") in events
    assert ("session.delete", "alice", "OK") in events
    for l in lines:
        assert l["time"].endswith("Z") and "peer" in l
    for secret in (ALICE, READER, "wrong-token-xyz", BOB, ADMIN):
        assert secret not in text


def test_health_answers_without_a_token_and_metrics_carry_the_tenant(pki, workdir):
    tokens = access_file(workdir / "tokens")
    users = workdir / "metrics-users"
    users.write_text(f"prometheus {sha256_hex('scrape-pass')}\n")
    optd = OptdProcess(extra_args=[*tls_args(pki, mutual=False), f"--auth_tokens_file={tokens}",
                                   f"--metrics_auth_file={users}"],
                       credentials=creds(pki, None), metrics=True).start()
    try:
        # grpc.health.v1.Health/Check without a token (Kubernetes probes): raw bytes, as Debian
        # ships no grpc_health module. Request: service = "optd.v1.Optimizer"; reply: SERVING (1).
        check = optd.channel.unary_unary("/grpc.health.v1.Health/Check")
        assert check(b"\n\x11optd.v1.Optimizer", timeout=TIMEOUT) == b"\x08\x01"
        code, _ = code_of(lambda: optd.stub.ListSessions(pb2.ListSessionsRequest(),
                                                         timeout=TIMEOUT))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        create(optd.stub, ALICE, "run")
        step(optd.stub, ALICE, "run")
        url = f"http://{optd.metrics_address}/metrics"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=10)
        assert e.value.code == 401
        bad = urllib.request.Request(url, headers={
            "Authorization": "Basic " + base64.b64encode(b"prometheus:nope").decode()})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=10)
        assert e.value.code == 401
        good = urllib.request.Request(url, headers={
            "Authorization": "Basic " + base64.b64encode(b"prometheus:scrape-pass").decode()})
        body = urllib.request.urlopen(good, timeout=10).read().decode()
        assert 'optd_steps_total{optimizer="adam",session="run",tenant="acme"} 1' in body
    finally:
        optd.stop()


def run_optd(*args, timeout=10):
    return subprocess.run([str(binary_path()), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_plaintext_off_loopback_needs_insecure_and_bad_tls_files_are_start_up_errors(pki,
                                                                                    workdir):
    refused = run_optd("--listen=0.0.0.0:0", "--metrics_listen=")
    assert refused.returncode != 0
    assert "without TLS" in refused.stderr and "--insecure" in refused.stderr
    optd = OptdProcess(extra_args=["--listen=0.0.0.0:0", "--insecure"]).start()
    try:
        assert "WARNING: serving plaintext (--insecure)" in optd.output()
    finally:
        optd.stop()
    cases = [
        ([f"--tls_cert={pki.path('server.pem')}"], "go together"),
        ([f"--tls_cert={pki.path('server.pem')}", f"--tls_key={pki.path('alice.key')}"],
         "is not the key of"),
        ([f"--tls_cert={workdir}/missing.pem", f"--tls_key={pki.path('server.key')}"],
         "cannot read"),
        ([f"--tls_cert={pki.path('server.key')}", f"--tls_key={pki.path('server.key')}"],
         "holds no PEM certificate"),
        ([f"--tls_client_ca={pki.path('ca.pem')}"], "needs --tls_cert"),
        ([f"--auth_tokens_file={workdir}/missing"], "--auth_tokens_file"),
    ]
    bad_tokens = workdir / "bad-tokens"
    bad_tokens.write_text("0123 acme writer\n")
    cases.append(([f"--auth_tokens_file={bad_tokens}"], "line 1"))
    for args, message in cases:
        result = run_optd("--listen=127.0.0.1:0", "--metrics_listen=", *args)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)


def test_prometheus_scrapes_metrics_with_basic_auth_credentials(workdir):
    """deploy/prometheus/prometheus.yml's optd job with the basic_auth block its comment shows."""
    import shutil
    import yaml
    users = workdir / "metrics-users"
    users.write_text(f"prometheus {sha256_hex('scrape-pass')}\n")
    password = workdir / "optd-metrics-password"
    password.write_text("scrape-pass")
    optd = OptdProcess(extra_args=[f"--metrics_auth_file={users}"], metrics=True).start()
    prometheus = None
    try:
        deploy = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
        config = yaml.safe_load((deploy / "prometheus.yml").read_text())
        assert "basic_auth:" in (deploy / "prometheus.yml").read_text()
        job = next(j for j in config["scrape_configs"] if j["job_name"] == "optd")
        job["static_configs"] = [{"targets": [optd.metrics_address]}]
        job["basic_auth"] = {"username": "prometheus", "password_file": str(password)}
        config["global"]["scrape_interval"] = "1s"
        config.pop("rule_files", None)
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = open(workdir / "prometheus.log", "w+b")
        prometheus = subprocess.Popen(
            [shutil.which("prometheus") or "/usr/bin/prometheus",
             f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = json.loads(urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/v1/query?query=up", timeout=5).read())
                result = reply["data"]["result"]
                if result and result[0]["value"][1] == "1":
                    break
            except (urllib.error.URLError, ConnectionError, KeyError):
                pass
            assert time.monotonic() < deadline, "Prometheus never scraped optd with credentials"
            time.sleep(0.3)
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(10)
        optd.stop()


def test_tenants_survive_a_restart_and_forks_stay_within_the_tenant(pki, workdir):
    tokens = access_file(workdir / "tokens")
    ckdir = workdir / "ck"
    ckdir.mkdir()
    args = [*tls_args(pki), f"--auth_tokens_file={tokens}", f"--checkpoint_dir={ckdir}",
            "--checkpoint_interval=0"]
    optd = OptdProcess(extra_args=args, credentials=creds(pki)).start()
    try:
        create(optd.stub, BOB, "model")
        step(optd.stub, BOB, "model")
        path = optd.stub.Checkpoint(pb2.CheckpointRequest(session_id="model"), metadata=md(BOB),
                                    timeout=TIMEOUT).path
        # Alice can fork neither bob's session nor his checkpoint file.
        for request in [pb2.CreateSessionRequest(session_id="f", from_checkpoint=path),
                        pb2.CreateSessionRequest(session_id="f",
                                                 from_session_checkpoint="model")]:
            code, details = code_of(lambda: optd.stub.CreateSession(request, metadata=md(ALICE),
                                                                    timeout=TIMEOUT))
            assert code == grpc.StatusCode.NOT_FOUND, details
        # Bob can, and the fork is his.
        fork = optd.stub.CreateSession(pb2.CreateSessionRequest(
            session_id="fork", from_session_checkpoint="model"), metadata=md(BOB),
            timeout=TIMEOUT)
        assert fork.session_id == "fork" and fork.tenant == "globex" and fork.version == 1
    finally:
        optd.stop()
    optd = OptdProcess(extra_args=args, credentials=creds(pki)).start()
    try:
        assert optd.stub.GetSession(pb2.GetSessionRequest(session_id="model"), metadata=md(BOB),
                                    timeout=TIMEOUT).version == 1
        code, _ = code_of(lambda: optd.stub.GetSession(pb2.GetSessionRequest(session_id="model"),
                                                       metadata=md(ALICE), timeout=TIMEOUT))
        assert code == grpc.StatusCode.NOT_FOUND
        listed = optd.stub.ListSessions(pb2.ListSessionsRequest(), metadata=md(BOB),
                                        timeout=TIMEOUT)
        assert sorted(s.session_id for s in listed.sessions) == ["fork", "model"]
    finally:
        optd.stop()


def readme_blocks():
    """The two bash blocks after README's <!-- optd-security-setup --> marker."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    import re
    m = re.search(r"<!-- optd-security-setup -->\s*```bash\n(.*?)```\s*```bash\n(.*?)```", text,
                  re.S)
    assert m, "no <!-- optd-security-setup --> bash blocks in README.md"
    return m.group(1), m.group(2)


def test_the_readme_setup_runs_as_written(workdir):
    setup, start = readme_blocks()
    pki = str(workdir / "optd-pki")
    subprocess.run(["bash", "-euo", "pipefail", "-c", setup.replace("/tmp/optd-pki", pki)],
                   check=True, timeout=60)
    command = start.replace("/tmp/optd-pki", pki).replace("\\\n", " ").split()
    assert command[0] == "optd" and "--listen=127.0.0.1:50051" in command
    args = [a for a in command[1:] if not a.startswith("--listen=")]
    root = (Path(pki) / "ca.pem").read_bytes()
    worker = grpc.ssl_channel_credentials(root_certificates=root,
                                          private_key=(Path(pki) / "worker.key").read_bytes(),
                                          certificate_chain=(Path(pki) / "worker.pem").read_bytes())
    optd = OptdProcess(extra_args=args, credentials=worker).start()
    try:
        token = (Path(pki) / "alice.token").read_text().strip()
        created = create(optd.stub, token, "run-1")
        assert created.tenant == "acme"
        # The worker's certificate acts as acme's writer without a token.
        assert optd.stub.Step(pb2.StepRequest(session_id="run-1", gradients=[
            to_tensor("w", np.ones(8, np.float32))]), timeout=TIMEOUT).version == 1
        assert step(optd.stub, token, "run-1").version == 2
        audit = (Path(pki) / "audit.log").read_text()
        assert '"principal":"alice"' in audit and token not in audit
    finally:
        optd.stop()


def test_sessions_from_before_the_access_file_belong_to_no_tenant_and_an_admin_names_them(
        pki, workdir):
    ckdir = workdir / "ck"
    ckdir.mkdir()
    common = [*tls_args(pki), f"--checkpoint_dir={ckdir}", "--checkpoint_interval=0"]
    optd = OptdProcess(extra_args=common, credentials=creds(pki)).start()
    try:
        optd.stub.CreateSession(pb2.CreateSessionRequest(
            session_id="old", config=adam(), tensors=[to_tensor("w", np.zeros(4, np.float32))]),
            timeout=TIMEOUT)
    finally:
        optd.stop()
    tokens = access_file(workdir / "tokens")
    optd = OptdProcess(extra_args=[*common, f"--auth_tokens_file={tokens}"],
                       credentials=creds(pki)).start()
    try:
        stub = optd.stub
        # No tenant sees it; the admin lists it as ":old" and reaches it by that name.
        for token in (ALICE, BOB, READER):
            code, _ = code_of(lambda: stub.GetSession(pb2.GetSessionRequest(session_id="old"),
                                                      metadata=md(token), timeout=TIMEOUT))
            assert code == grpc.StatusCode.NOT_FOUND
        listed = stub.ListSessions(pb2.ListSessionsRequest(), metadata=md(ADMIN), timeout=TIMEOUT)
        assert [(s.tenant, s.session_id) for s in listed.sessions] == [("", ":old")]
        info = stub.GetSession(pb2.GetSessionRequest(session_id=":old"), metadata=md(ADMIN),
                               timeout=TIMEOUT)
        assert info.session_id == ":old" and info.num_parameters == 4
        stub.DeleteSession(pb2.DeleteSessionRequest(session_id=":old"), metadata=md(ADMIN),
                           timeout=TIMEOUT)
    finally:
        optd.stop()
