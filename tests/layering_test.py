"""The layer map, enforced: every #include of optd's C++ sources is read and checked against the
arrows the architecture allows (../shared/DESIGN.md, README "Layout"):

    base < wire < optim < session < persist < auth < metrics < service < main

* a library includes only its own layer and the layers its row below names;
* optim includes nothing but abseil, base, the standard library and Eigen (Muon's matrix
  products); its test-support files may read JSON (the golden vectors of lr_free_testing.cc);
* nothing below the service includes generated code (optd/v1/*.pb.h, grpc/health/...) or
  protobuf; gRPC's own headers (grpcpp/) appear from metrics up (its server interceptor);
* the C++ client and the examples see only the contract (generated code), wire/ and the client;
* gtest and gmock only in tests and test-support headers (names ending _test.cc or containing
  "testing", and base/status_matchers.h).

Every include must be classified: an unknown one fails the test, so a new dependency is a
decision made here, in the map, not by accident. The self-check plants forbidden includes in a
temporary tree and requires that each is reported.

Run by ctest (layering_test); also `/usr/bin/python3 -m pytest tests/layering_test.py`.
"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Source folders and the layer each belongs to (longest prefix wins).
FOLDERS = {
    "base": "base",
    "wire": "wire",
    "server/optim": "optim",
    "server/session": "session",
    "server/persist": "persist",
    "server/auth": "auth",
    "server/metrics": "metrics",
    "server/service": "service",
    "server": "main",
    "client/cpp": "client",
    "client/python": "python_ext",
    "examples/cpp": "example",
    "bench": "bench",
    "fuzz": "fuzz",
}

SERVER = ["base", "wire", "optim", "session", "persist", "auth", "metrics", "service", "main"]


def _below(layer):
    return set(SERVER[: SERVER.index(layer) + 1])


# Project layers each layer may include (its own included).
PROJECT = {
    "base": {"base"},
    "wire": {"base", "wire"},
    "optim": {"base", "optim"},
    "session": {"base", "wire", "optim", "session"},
    "persist": {"base", "wire", "optim", "session", "persist"},
    "auth": {"base", "auth"},
    "metrics": _below("metrics"),
    "service": _below("service"),
    "main": _below("main"),
    "client": {"wire", "client"},
    "python_ext": {"wire", "client", "python_ext"},
    "example": {"wire", "client"},
    "bench": set(SERVER) | {"client", "bench"},
    "fuzz": set(SERVER) | {"fuzz"},
}

# Outside families each layer may include, besides abseil and the standard library.
ABOVE_SERVICE = {"service", "main", "client", "python_ext", "example", "bench", "fuzz"}
EXTERNAL = {
    "generated": ABOVE_SERVICE,
    "protobuf": ABOVE_SERVICE,
    "grpcpp": {"metrics"} | ABOVE_SERVICE,
    "prometheus": {"metrics", "service", "main", "bench"},
    "pybind11": {"python_ext"},
    "benchmark": {"bench"},
    "eigen": {"optim", "bench"},
    "json": {"persist", "auth", "fuzz"},
    # client: the C++ client reads its own certificate (expiry, issuer) to explain a refused
    # TLS handshake (client/cpp/credentials.cc).
    "openssl": {"auth", "service", "client"},
}

# Outside families a layer's tests and test-support files may include besides: optim's read the
# golden vectors of tests/golden/lr_free.json.
TEST_EXTERNAL = {"json": {"optim"}}

# Tests may also include these, by the layer they test: a client test starts a real server
# in-process, a fuzzer drives the service.
TEST_PROJECT = {"client": _below("main"), "example": _below("main")}

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]', re.M)
PROJECT_PREFIXES = ("base/", "wire/", "server/", "client/cpp/", "client/python/", "examples/",
                    "bench/", "fuzz/")


def layer_of(relative):
    """The layer of a source file (a path relative to the root), or None if it is no layer's."""
    best = None
    for folder, layer in FOLDERS.items():
        if relative.startswith(folder + "/") and (best is None or len(folder) > len(best[0])):
            best = (folder, layer)
    return best[1] if best else None


def is_test(relative):
    name = relative.rsplit("/", 1)[-1]
    return (name.endswith("_test.cc") or "testing" in name
            or relative in ("base/status_matchers.h",))


def family(header):
    """What an included header is: ('project', layer) or (family, None)."""
    if header.startswith(("optd/v1/", "grpc/health/", "grpc/reflection/")) or header.endswith(
            (".pb.h", ".grpc.pb.h")):
        return "generated", None
    if header.startswith(PROJECT_PREFIXES):
        return "project", layer_of(header)
    for prefix, name in (("absl/", "absl"), ("google/protobuf/", "protobuf"),
                         ("grpcpp/", "grpcpp"), ("grpc/", "grpcpp"), ("prometheus/", "prometheus"),
                         ("gtest/", "gtest"), ("gmock/", "gtest"), ("pybind11/", "pybind11"),
                         ("benchmark/", "benchmark"), ("Eigen/", "eigen"), ("Python.h", "python"),
                         ("nlohmann/", "json"), ("openssl/", "openssl"),
                         ("cblas", "eigen")):
        if header.startswith(prefix):
            return name, None
    return "unknown", None


def check_file(relative, text):
    """The forbidden includes of one file, as messages."""
    layer = layer_of(relative)
    if layer is None:
        return []
    test = is_test(relative)
    errors = []
    for match in INCLUDE.finditer(text):
        quote, header = match.groups()
        kind, target = family(header)
        arrow = f"{relative}: #include {quote}{header}{'>' if quote == '<' else quote}"
        if kind == "project":
            allowed = PROJECT[layer] | (TEST_PROJECT.get(layer, set()) if test else set())
            if target is None or target not in allowed:
                errors.append(f"{arrow}: {layer} may not include {target or 'that path'} "
                              f"(allowed: {', '.join(sorted(allowed))})")
        elif kind == "absl":
            continue
        elif kind == "gtest":
            if not test:
                errors.append(f"{arrow}: gtest/gmock only in tests and test-support headers")
        elif kind == "unknown":
            if quote == '"':
                errors.append(f"{arrow}: unknown header; classify it in tests/layering_test.py")
            # <...> without a known prefix: the standard library or the OS.
        elif kind == "python":
            if layer != "python_ext":
                errors.append(f"{arrow}: the CPython API only in the Python extension")
        else:
            if layer not in EXTERNAL[kind] and not (test and layer == "service") and not (
                    test and layer in TEST_EXTERNAL.get(kind, set())):
                errors.append(f"{arrow}: {layer} may not include {kind} headers")
    return errors


def check_tree(root):
    errors = []
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".h", ".cc") or not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        if relative.startswith(("build", "client/go/vendor")):
            continue
        errors += check_file(relative, path.read_text(errors="replace"))
    return errors


def test_every_include_follows_the_layer_map():
    errors = check_tree(ROOT)
    assert not errors, "forbidden includes:\n" + "\n".join(errors)


def test_the_map_covers_every_source_folder():
    folders = {p.parent.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.cc")
               if not p.relative_to(ROOT).as_posix().startswith(("build", "client/go"))}
    unmapped = sorted(f for f in folders if layer_of(f + "/x.cc") is None)
    assert not unmapped, f"C++ folders with no layer: {unmapped}"


PLANTED = {
    "server/optim/planted.cc": '#include "server/session/session.h"\n',  # up a layer
    "server/session/planted.cc": '#include "optd/v1/optd.pb.h"\n',  # generated below service
    "server/metrics/planted.cc": '#include "google/protobuf/message.h"\n',  # protobuf
    "server/optim/planted2.cc": '#include "prometheus/counter.h"\n',  # metrics in the math
    "wire/planted.cc": '#include "grpcpp/grpcpp.h"\n',  # gRPC in wire
    "client/cpp/planted.cc": '#include "server/session/session.h"\n',  # client sees server
    "base/planted.h": '#include "gtest/gtest.h"\n',  # gtest outside tests
    "server/session/planted2.cc": '#include "somewhere/new.h"\n',  # unclassified
}


def test_self_check_reports_each_planted_forbidden_include(tmp_path):
    for relative, text in PLANTED.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    # A harmless one, to show the check does not flag everything.
    (tmp_path / "server/session/fine.cc").write_text(
        '#include "server/optim/optimizer.h"\n#include <vector>\n#include "absl/status/status.h"\n')
    reported = {e.split(":", 1)[0] for e in check_tree(tmp_path)}
    assert reported == set(PLANTED), reported
