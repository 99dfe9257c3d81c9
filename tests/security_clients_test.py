"""The clients' side of security (issue #13, item 6), against the real optd binary.

One optd per module, on 127.0.0.1:0, with TLS (``--tls_cert``/``--tls_key``, a certificate for
127.0.0.1 from tests/security_testing.py's CA), mTLS (``--tls_client_ca``: clients must present a
certificate of that CA) and bearer tokens (``--auth_tokens_file``: a writer and a reader token of
tenant ``acme``). Then:

* each client runs one session end to end with TLS, a client certificate and the writer token:
  the Python client (create, unary and stream steps, pull, delete; the token from ``token=`` and
  from ``OPTD_TOKEN``) and ``optd.torch.RemoteOptimizer(address=..., tls_ca=..., token=...)``,
  optctl (create, step, pull into .npy files, delete; ``--token`` and ``OPTD_TOKEN``), the C++
  example worker (quadratic_worker, unary and stream) and the Go client (client/go/
  security_test.go, run here with ``go test``) and its example worker;
* the refusals, at each client, with the content of their messages: a wrong CA, an expired client
  certificate, a client certificate of another CA, no client certificate, no token, a wrong token,
  a reader writing. The messages name the address, say "TLS handshake failed" (with gRPC's detail
  and the option to check) or that the server refused the token (and whether one was sent), or
  name the refused call; they never show a token. Nothing the refused calls tried exists after.
* README's "Security" / "Clients" snippets (Python, optctl, Go) run word for word.

Every process is bounded in time and stopped by its PID. Run with Debian's interpreter:
    /usr/bin/python3 -m pytest -q tests/security_clients_test.py   (OPTD_BUILD_DIR picks the build)
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from optd_testing import REPO_ROOT, OptdProcess, build_dir, load_stubs  # noqa: E402
from security_testing import make_pki, token_line  # noqa: E402

# optd from the source tree, its generated optd.v1 from <build>/python (one package over both
# folders). Drop a namespace-only 'optd' another test module may have imported with the stubs.
sys.path.insert(0, str(REPO_ROOT / "client" / "python"))
if "optd" in sys.modules and getattr(sys.modules["optd"], "__file__", None) is None:
    del sys.modules["optd"]
load_stubs()
import optd  # noqa: E402  pylint: disable=wrong-import-position

WRITER = "acme-writer-7f3c1e"
READER = "acme-reader-2b9d4a"
ADMIN = "ops-admin-5e81c0"
TENANT = "acme"
RUN_TIMEOUT_S = 60
GO_TIMEOUT_S = 600  # a cold Go build of grpc takes ~20 s on 2 cores; allow for a loaded CI


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(pki, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text("# tokens of the security client tests\n" +
                      token_line(WRITER, TENANT, "writer") + token_line(READER, TENANT, "reader") +
                      token_line(ADMIN, "ops", "admin"))
    credentials = grpc.ssl_channel_credentials(pki.read("ca.pem"), pki.read("alice.key"),
                                               pki.read("alice.pem"))
    proc = OptdProcess([f"--tls_cert={pki.path('server.pem')}",
                        f"--tls_key={pki.path('server.key')}",
                        f"--tls_client_ca={pki.path('ca.pem')}",
                        f"--auth_tokens_file={tokens}"], credentials=credentials).start()
    yield proc
    proc.stop()


def tls_args(pki, cert="alice", ca="ca"):
    """The Python client's tls_* arguments (cert None: no client certificate)."""
    args = {"tls_ca": str(pki.path(f"{ca}.pem"))}
    if cert is not None:
        args.update(tls_cert=str(pki.path(f"{cert}.pem")), tls_key=str(pki.path(f"{cert}.key")))
    return args


def assert_no_token(text):
    assert WRITER not in text and READER not in text and ADMIN not in text, text


# ---------------------------------------------------------------------------------------------------
# Python.

def test_python_session_end_to_end(server, pki):
    with optd.Client(server.address, token=WRITER, timeout=20, **tls_args(pki)) as client:
        assert client.health()
        session = client.create_session({"w": np.array([1, 2, 3, 4], np.float32)}, "sgd", lr=0.5,
                                        session_id="py-security")
        session.step({"w": np.ones(4, np.float32)})
        results = list(session.stream_steps([{"w": np.ones(4, np.float32)}] * 2))
        assert [r.version for r in results] == [2, 3]
        pulled = client.pull("py-security")
        np.testing.assert_array_equal(pulled.tensors["w"], [-0.5, 0.5, 1.5, 2.5])
        assert [s.session_id for s in client.list_sessions()] == ["py-security"]
        client.delete_session("py-security")
        with pytest.raises(optd.NotFoundError):
            client.get_session("py-security")


def test_python_token_from_environment(server, pki, monkeypatch):
    monkeypatch.setenv("OPTD_TOKEN", WRITER)
    with optd.Client(server.address, timeout=20, **tls_args(pki, cert="bob")) as client:
        session = client.create_session({"b": np.zeros(2, np.float32)}, "adam", lr=0.1,
                                        session_id="py-env")
        assert session.step({"b": np.ones(2, np.float32)}).version == 1
        client.delete_session("py-env")
    # An empty token= overrides the environment: no token is sent.
    with optd.Client(server.address, token="", timeout=20, **tls_args(pki)) as client:
        with pytest.raises(optd.UnauthenticatedError, match="no token was sent"):
            client.list_sessions()


# (name, tls arguments given pki, token, expected class, tls_failure, phrases of the message)
PY_REFUSALS = [
    ("wrong CA", lambda p: tls_args(p, ca="other_ca"), WRITER, optd.UnavailableError, True,
     ["TLS handshake failed with optd at {addr}", "certificate verify failed", "check tls_ca",
      "other_ca.pem"]),
    ("expired client certificate", lambda p: tls_args(p, cert="expired"), WRITER,
     optd.UnavailableError, True,
     ["TLS handshake failed with optd at {addr}", "refused the client certificate",
      "check tls_cert/tls_key", "expired.pem", "EXPIRED"]),
    ("client certificate of another CA", lambda p: tls_args(p, cert="other_client"), WRITER,
     optd.UnavailableError, True,
     ["TLS handshake failed with optd at {addr}", "refused the client certificate",
      "other_client.pem", "issued by commonName=other_ca"]),
    ("no client certificate", lambda p: tls_args(p, cert=None), WRITER, optd.UnavailableError,
     True, ["TLS handshake failed with optd at {addr}", "requires a client certificate",
            "give tls_cert and tls_key"]),
    ("no token", tls_args, "", optd.UnauthenticatedError, False,
     ["optd at {addr} refused CreateSession", "refused the call without a token",
      "(UNAUTHENTICATED)", "no token was sent"]),
    ("wrong token", tls_args, "not-a-valid-token", optd.UnauthenticatedError, False,
     ["optd at {addr} refused CreateSession", "the server refused the token (UNAUTHENTICATED)",
      "a token was sent (from token=)"]),
    ("reader writing", tls_args, READER, optd.PermissionDeniedError, False,
     ["optd at {addr} refused CreateSession (PERMISSION_DENIED)"]),
]


@pytest.mark.parametrize("name,tls,token,cls,tls_failure,phrases", PY_REFUSALS,
                         ids=[c[0] for c in PY_REFUSALS])
def test_python_refusals_say_why(server, pki, name, tls, token, cls, tls_failure, phrases):
    with optd.Client(server.address, token=token, timeout=10, **tls(pki)) as client:
        with pytest.raises(optd.OptdError) as e:
            client.create_session({"w": np.zeros(2, np.float32)}, "sgd", lr=0.1,
                                  session_id="py-refused")
    assert type(e.value) is cls, (name, repr(e.value))
    assert e.value.tls_failure is tls_failure, (name, str(e.value))
    assert e.value.attempts == 1, (name, e.value.attempts)
    text = str(e.value)
    for phrase in phrases:
        assert phrase.format(addr=server.address) in text, (name, phrase, text)
    assert "failed to connect to all addresses" not in text or "TLS handshake failed" in text
    assert_no_token(text)
    with optd.Client(server.address, token=WRITER, timeout=10, **tls_args(pki)) as client:
        with pytest.raises(optd.NotFoundError):
            client.get_session("py-refused")


def test_python_reader_may_read_not_step(server, pki):
    with optd.Client(server.address, token=WRITER, timeout=10, **tls_args(pki)) as writer:
        writer.create_session({"w": np.zeros(2, np.float32)}, "sgd", lr=0.1, session_id="py-read")
        try:
            with optd.Client(server.address, token=READER, timeout=10, **tls_args(pki)) as reader:
                assert reader.pull("py-read").version == 0
                with pytest.raises(optd.PermissionDeniedError, match="refused Step") as e:
                    reader.step("py-read", {"w": np.ones(2, np.float32)})
                assert_no_token(str(e.value))
                # A worker's stream joins first: refused there (JoinSession) or at the stream.
                with pytest.raises(optd.PermissionDeniedError,
                                   match="refused (JoinSession|StreamSteps)"):
                    list(reader.session("py-read").stream_steps([{"w": np.ones(2, np.float32)}]))
            assert writer.pull("py-read").version == 0  # nothing applied
        finally:
            writer.delete_session("py-read")


# ---------------------------------------------------------------------------------------------------
# optctl and the C++ example worker.

def binary(*parts):
    path = build_dir().joinpath(*parts)
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: build it (OPTD_BUILD_DIR={build_dir()})", pytrace=False)
    return str(path)


def run(args, token=None, timeout=RUN_TIMEOUT_S):
    """Runs a client binary with OPTD_TOKEN = token (None: unset); returns the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k != "OPTD_TOKEN"}
    if token is not None:
        env["OPTD_TOKEN"] = token
    return subprocess.run(args, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, check=False)


def cpp_tls_flags(pki, cert="alice", ca="ca"):
    flags = [f"--tls_ca={pki.path(ca + '.pem')}"]
    if cert is not None:
        flags += [f"--tls_cert={pki.path(cert + '.pem')}", f"--tls_key={pki.path(cert + '.key')}"]
    return flags


def test_optctl_session_end_to_end(server, pki, tmp_path):
    optctl = [binary("client", "cpp", "optctl"), f"--server={server.address}", "--timeout=20s",
              *cpp_tls_flags(pki)]
    p = run([*optctl, "create", "--session=cli-security", "--optimizer=sgd", "--lr=0.5",
             "--tensor=w:4:ones"], token=WRITER)
    assert p.returncode == 0, p.stderr
    p = run([*optctl, f"--token={WRITER}", "step", "cli-security", "--grad=w:ones"])
    assert p.returncode == 0, p.stderr
    p = run([*optctl, "pull", "cli-security", f"--out={tmp_path}"], token=WRITER)
    assert p.returncode == 0, p.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), np.full(4, 0.5, np.float32))
    p = run([*optctl, "list"], token=READER)
    assert p.returncode == 0 and "cli-security" in p.stdout, p.stdout + p.stderr
    p = run([*optctl, "delete", "cli-security"], token=WRITER)
    assert p.returncode == 0, p.stderr
    p = run([*optctl, "describe", "cli-security"], token=WRITER)
    assert p.returncode == 1 and "NOT_FOUND" in p.stderr, p.stderr


# (name, tls flags given pki, OPTD_TOKEN, phrases of optctl's stderr)
CLI_REFUSALS = [
    ("wrong CA", lambda p: cpp_tls_flags(p, ca="other_ca"), WRITER,
     ["UNAVAILABLE: TLS handshake failed with optd at {addr}", "certificate verify failed",
      "check tls_ca (now tls_ca=", "other_ca.pem"]),
    ("expired client certificate", lambda p: cpp_tls_flags(p, cert="expired"), WRITER,
     ["UNAVAILABLE: TLS handshake failed with optd at {addr}", "refused the client certificate",
      "expired.pem", "EXPIRED"]),
    ("client certificate of another CA", lambda p: cpp_tls_flags(p, cert="other_client"), WRITER,
     ["UNAVAILABLE: TLS handshake failed with optd at {addr}", "refused the client certificate",
      "other_client.pem", "issued by CN = other_ca"]),
    ("no client certificate", lambda p: cpp_tls_flags(p, cert=None), WRITER,
     ["UNAVAILABLE: TLS handshake failed with optd at {addr}", "requires a client certificate"]),
    ("no token", cpp_tls_flags, None,
     ["UNAUTHENTICATED: optd at {addr} refused CreateSession",
      "refused the call without a token", "no token was sent"]),
    ("wrong token", cpp_tls_flags, "not-a-valid-token",
     ["UNAUTHENTICATED: optd at {addr} refused CreateSession", "refused the token",
      "a token was sent (from $OPTD_TOKEN)"]),
    ("reader writing", cpp_tls_flags, READER,
     ["PERMISSION_DENIED: optd at {addr} refused CreateSession (PERMISSION_DENIED)"]),
]


@pytest.mark.parametrize("name,flags,token,phrases", CLI_REFUSALS,
                         ids=[c[0] for c in CLI_REFUSALS])
def test_optctl_refusals_say_why(server, pki, name, flags, token, phrases):
    p = run([binary("client", "cpp", "optctl"), f"--server={server.address}", "--timeout=10s",
             *flags(pki), "create", "--session=cli-refused", "--optimizer=sgd", "--lr=0.1",
             "--tensor=w:2"], token=token)
    assert p.returncode == 1, (name, p.returncode, p.stderr)
    for phrase in phrases:
        assert phrase.format(addr=server.address) in p.stderr, (name, phrase, p.stderr)
    assert "failed to connect to all addresses" not in p.stderr or "TLS handshake failed" in \
        p.stderr
    assert_no_token(p.stdout + p.stderr)
    with optd.Client(server.address, token=WRITER, timeout=10, **tls_args(pki)) as client:
        with pytest.raises(optd.NotFoundError):
            client.get_session("cli-refused")


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_cpp_worker_end_to_end(server, pki, stream):
    session = f"cpp-security-{'stream' if stream else 'unary'}"
    args = [binary("examples", "cpp", "quadratic_worker"), f"--server={server.address}",
            f"--session={session}", "--steps=100", "--max_loss=1e9", *cpp_tls_flags(pki, "bob")]
    if stream:
        args.append("--stream")
    p = run(args, token=WRITER)
    assert p.returncode == 0, p.stdout + p.stderr
    with optd.Client(server.address, token=WRITER, timeout=10, **tls_args(pki)) as client:
        assert client.pull(session).version == 100
        client.delete_session(session)


def test_cpp_worker_refused_token(server, pki):
    p = run([binary("examples", "cpp", "quadratic_worker"), f"--server={server.address}",
             "--session=cpp-refused", "--steps=1", *cpp_tls_flags(pki), "--token=not-a-token"])
    assert p.returncode == 1, p.stdout + p.stderr
    assert "UNAUTHENTICATED" in p.stderr and "a token was sent" in p.stderr, p.stderr
    assert_no_token(p.stderr)


# ---------------------------------------------------------------------------------------------------
# Go.

def go_env():
    out = build_dir() / "go"
    p = subprocess.run(["bash", str(REPO_ROOT / "client" / "go" / "build.sh"), str(out)],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=GO_TIMEOUT_S, check=False)
    assert p.returncode == 0, f"client/go/build.sh failed:\n{p.stdout}\n{p.stderr}"
    env = {k: v for k, v in os.environ.items() if k != "OPTD_TOKEN"}
    env.update(GO111MODULE="off", GOPROXY="off", GOFLAGS="", GOSUMDB="off", GOENV="off",
               GOTOOLCHAIN="local", GOWORK="off", CGO_ENABLED="0", GOCACHE=str(out / "cache"),
               GOPATH=f"{out / 'gopath'}:/usr/share/gocode",
               OPTD_BINARY=str(build_dir() / "server" / "optd"))
    return out, env


def test_go_client_end_to_end_and_refusals(server, pki):
    out, env = go_env()
    env.update(OPTD_SECURITY_ADDR=server.address, OPTD_SECURITY_PKI=str(pki.directory),
               OPTD_SECURITY_WRITER=WRITER, OPTD_SECURITY_READER=READER)
    module = out / "gopath" / "src" / "github.com" / "optd" / "optd" / "client" / "go"
    p = subprocess.run(["go", "test", "-count=1", "-timeout", "120s", "-run",
                        "^TestSecurityEndToEnd$", "-v", "."], cwd=module,
                       env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=GO_TIMEOUT_S, check=False)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    assert "--- PASS: TestSecurityEndToEnd" in p.stdout, p.stdout[-6000:]
    assert "SKIP" not in p.stdout, p.stdout[-6000:]


def test_go_worker_end_to_end(server, pki):
    out, env = go_env()
    args = [str(out / "bin" / "optd-go-worker"), "-server", server.address, "-session",
            "go-worker-security", "-steps", "100", "-max_loss", "1e9", "-worker", "go-sec",
            "-tls_ca", str(pki.path("ca.pem")), "-tls_cert", str(pki.path("bob.pem")),
            "-tls_key", str(pki.path("bob.key"))]
    env["OPTD_TOKEN"] = WRITER
    p = subprocess.run(args, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    with optd.Client(server.address, token=WRITER, timeout=10, **tls_args(pki)) as client:
        assert client.pull("go-worker-security").version == 100
        client.delete_session("go-worker-security")


# ---------------------------------------------------------------------------------------------------
# README "Security" / "Clients": the Python, optctl and Go snippets, word for word.

def readme_snippets():
    """{language: code} of the fenced blocks in README.md's "### Clients" of "## Security"."""
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("\n## Security\n")
    start = text.index("\n### Clients\n", start)
    end = text.index("\n## ", start + 1)
    section = text[start:end]
    blocks = re.findall(r"^```(\w+)\n(.*?)^```$", section, re.S | re.M)
    return {language: code for language, code in blocks}


@pytest.fixture
def snippet_dir(pki, tmp_path):
    """A folder holding what README's "Turning it on" makes and the snippets use: ca.pem,
    worker.pem and worker.key (here alice's certificate) and alice.token (the writer token)."""
    (tmp_path / "ca.pem").write_bytes(pki.read("ca.pem"))
    (tmp_path / "worker.pem").write_bytes(pki.read("alice.pem"))
    (tmp_path / "worker.key").write_bytes(pki.read("alice.key"))
    (tmp_path / "alice.token").write_text(WRITER + "\n")
    return tmp_path


def test_readme_python_snippet(server, snippet_dir):
    code = readme_snippets()["python"].replace("127.0.0.1:50051", server.address)
    env = {k: v for k, v in os.environ.items() if k != "OPTD_TOKEN"}
    env.update(OPTD_TOKEN=WRITER, PYTHONPATH=os.pathsep.join(
        [str(REPO_ROOT / "client" / "python"), str(build_dir() / "python")]))
    p = subprocess.run(["/usr/bin/python3", "-c", code], cwd=snippet_dir, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S, check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[-0.5 -0.5 -0.5 -0.5]", p.stdout


def test_readme_optctl_snippet(server, snippet_dir):
    code = readme_snippets()["bash"].replace("127.0.0.1:50051", server.address)
    env = {k: v for k, v in os.environ.items() if k != "OPTD_TOKEN"}
    env["PATH"] = str(Path(binary("client", "cpp", "optctl")).parent) + os.pathsep + env["PATH"]
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=snippet_dir, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT_S, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    np.testing.assert_array_equal(np.load(snippet_dir / "w.npy"), np.full(4, -0.5, np.float32))


def test_readme_go_snippet(server, snippet_dir):
    out, env = go_env()
    code = readme_snippets()["go"].replace("127.0.0.1:50051", server.address)
    package = out / "gopath" / "src" / "optd_readme_security"
    package.mkdir(parents=True, exist_ok=True)
    (package / "main.go").write_text(code)
    env["OPTD_TOKEN"] = WRITER
    p = subprocess.run(["go", "run", str(package / "main.go")], cwd=snippet_dir, env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=GO_TIMEOUT_S, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip() == "1 [-0.5 -0.5 -0.5 -0.5]", p.stdout


def test_remote_optimizer_with_tls_and_token(server, pki):
    torch = pytest.importorskip("torch")
    import optd.torch  # noqa: F401  pylint: disable=import-outside-toplevel,redefined-outer-name
    model = torch.nn.Linear(3, 1)
    opt = optd.torch.RemoteOptimizer(model.named_parameters(), address=server.address,
                                     optimizer="sgd", lr=0.1, session_id="torch-security",
                                     token=WRITER, **tls_args(pki))
    try:
        model(torch.ones(2, 3)).sum().backward()
        before = model.weight.detach().clone()
        opt.step()
        assert opt.last_result.version == 1
        torch.testing.assert_close(model.weight.detach(), before - 0.1 * 2.0)
    finally:
        opt.client.delete_session("torch-security")
        opt.client.close()
    with pytest.raises(optd.UnauthenticatedError, match="a token was sent"):
        optd.torch.RemoteOptimizer(torch.nn.Linear(3, 1).parameters(), address=server.address,
                                   optimizer="sgd", lr=0.1, token="not-a-token", **tls_args(pki))


@pytest.mark.parametrize("token,cls,phrase", [
    ("not-a-valid-token", optd.UnauthenticatedError,
     "refused StreamSteps: the server refused the token (UNAUTHENTICATED)"),
    (READER, optd.PermissionDeniedError, "refused StreamSteps (PERMISSION_DENIED)"),
], ids=["wrong token", "reader"])
def test_python_stream_refusals_say_why(server, pki, token, cls, phrase):
    with optd.Client(server.address, token=WRITER, timeout=10, **tls_args(pki)) as writer:
        writer.create_session({"w": np.zeros(2, np.float32)}, "sgd", lr=0.1,
                              session_id="py-stream-refused")
        try:
            with optd.Client(server.address, token=token, timeout=10, **tls_args(pki)) as client:
                with pytest.raises(cls) as e:
                    with client.stream() as stream:
                        stream.step({"w": np.ones(2, np.float32)}, session_id="py-stream-refused")
            assert phrase in str(e.value), str(e.value)
            assert_no_token(str(e.value))
            assert writer.pull("py-stream-refused").version == 0
        finally:
            writer.delete_session("py-stream-refused")


def test_server_name_is_checked_and_explained(server, pki):
    # The server's certificate names 127.0.0.1, ::1 and localhost.
    with optd.Client(server.address, token=WRITER, timeout=10, tls_server_name="localhost",
                     **tls_args(pki)) as client:
        client.list_sessions()
    with optd.Client(server.address, token=WRITER, timeout=10, tls_server_name="wrong.example",
                     **tls_args(pki)) as client:
        with pytest.raises(optd.UnavailableError) as e:
            client.list_sessions()
    assert e.value.tls_failure and e.value.attempts == 1, repr(e.value)
    for phrase in (f"TLS handshake failed with optd at {server.address}", "wrong.example",
                   "does not name the host", "tls_server_name"):
        assert phrase in str(e.value), (phrase, str(e.value))
    p = run([binary("client", "cpp", "optctl"), f"--server={server.address}",
             "--tls_server_name=wrong.example", *cpp_tls_flags(pki), "list"], token=WRITER)
    assert p.returncode == 1, p.stderr
    for phrase in ("UNAVAILABLE: TLS handshake failed", "does not name the host",
                   "set tls_server_name to one (now wrong.example)"):
        assert phrase in p.stderr, (phrase, p.stderr)


def test_admin_sees_tenants(server, pki):
    with optd.Client(server.address, token=WRITER, timeout=10, **tls_args(pki)) as writer:
        writer.create_session({"w": np.zeros(2, np.float32)}, "sgd", lr=0.1,
                              session_id="cli-tenants")
        try:
            with optd.Client(server.address, token=ADMIN, timeout=10, **tls_args(pki)) as admin:
                listed = {(s.tenant, s.session_id) for s in admin.list_sessions()}
                assert ("acme", "acme:cli-tenants") in listed, listed
            optctl = [binary("client", "cpp", "optctl"), f"--server={server.address}",
                      *cpp_tls_flags(pki)]
            p = run([*optctl, "list"], token=ADMIN)
            assert p.returncode == 0, p.stderr
            header, *rows = p.stdout.splitlines()
            assert header.split()[:2] == ["TENANT", "ID"], p.stdout
            assert any(r.split()[:2] == ["acme", "acme:cli-tenants"] for r in rows), p.stdout
            p = run([*optctl, "describe", "acme:cli-tenants"], token=ADMIN)
            assert p.returncode == 0 and "tenant:       acme" in p.stdout, p.stdout + p.stderr
            p = run([*optctl, "list"], token=WRITER)  # a tenant's own: ids without the tenant
            assert p.returncode == 0, p.stderr
            header, *rows = p.stdout.splitlines()
            assert header.split()[:2] == ["TENANT", "ID"], p.stdout
            assert [r.split()[:2] for r in rows] == [["acme", "cli-tenants"]], p.stdout
        finally:
            writer.delete_session("cli-tenants")


# (name, tls arguments given pki, token) of steps the server or the handshake refuses.
STEP_REFUSALS = [
    ("wrong CA", lambda p: tls_args(p, ca="other_ca"), WRITER),
    ("no client certificate", lambda p: tls_args(p, cert=None), WRITER),
    ("wrong token", tls_args, "not-a-valid-token"),
    ("reader", tls_args, READER),
]


@pytest.mark.parametrize("name,tls,token", STEP_REFUSALS, ids=[c[0] for c in STEP_REFUSALS])
def test_steps_over_tls_are_the_same_on_the_native_and_pure_paths(server, pki, name, tls, token):
    # The native data path makes its channel of the PEM bytes optd.Client read and sends the same
    # token; a refused step says the same on both paths (same class, message, tls_failure,
    # attempts), keyed or not.
    import optd.native  # pylint: disable=import-outside-toplevel
    if not optd.native.available():
        pytest.skip(f"native path unavailable: {optd.native.reason()}")
    sid = "py-both-paths"
    with optd.Client(server.address, token=WRITER, timeout=10, **tls_args(pki)) as writer:
        writer.create_session({"w": np.zeros(2, np.float32)}, "sgd", lr=0.5, session_id=sid)
        try:
            for native in (True, False):  # both succeed with the right settings
                with optd.Client(server.address, token=WRITER, timeout=10, native=native,
                                 **tls_args(pki)) as client:
                    assert client.native is native
                    assert client.step(sid, {"w": np.ones(2, np.float32)}).version == \
                        (1 if native else 2)
            seen = {}
            for native in (True, False):
                with optd.Client(server.address, token=token, timeout=10, native=native,
                                 retry=optd.RetryPolicy(max_attempts=2, initial_backoff=0.05),
                                 **tls(pki)) as client:
                    for keyed in (False, True):
                        with pytest.raises(optd.OptdError) as e:
                            client.step(sid, {"w": np.ones(2, np.float32)},
                                        worker_id="w1" if keyed else "",
                                        sequence=1 if keyed else 0)
                        text = re.sub(r"in \d+\.\d\d s", "in T s", str(e.value))
                        seen[(native, keyed)] = (type(e.value), text, e.value.tls_failure,
                                                 e.value.attempts)
                        assert_no_token(text)
            for keyed in (False, True):
                assert seen[(True, keyed)] == seen[(False, keyed)], (name, keyed, seen)
            assert writer.pull(sid).version == 2  # nothing applied
        finally:
            writer.delete_session(sid)
