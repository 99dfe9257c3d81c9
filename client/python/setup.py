"""Build hook of the optd Python package: generates the optd.v1 protobuf and gRPC modules.

Metadata lives in pyproject.toml. At build time (``pip install``, ``pip wheel``, ``setup.py
build``) this runs the system ``protoc`` with Debian's ``grpc_python_plugin`` on
``<proto root>/optd/v1/optd.proto`` and writes ``optd/v1/{__init__,optd_pb2,optd_pb2_grpc}.py``
(and ``optd_pb2.pyi``) into the build directory, so the generated code always matches the .proto
it is built from and nothing generated is kept in the source tree (an editable install writes them
into ``optd/v1/``, which is git-ignored).

It also builds the native data path, the extension ``optd._native`` (client/python/native, over
the C++ client), with CMake from the repository root (the target optd_native only; its build tree
is kept in ``build/native-cmake`` next to this file, so a reinstall recompiles only what changed)
and puts it in the package. It needs the C++ build dependencies (scripts/install_deps.sh) and
pybind11 (Debian: pybind11-dev, python3-pybind11) visible to the interpreter that runs the build;
without them the build fails, saying so. ``OPTD_NATIVE=0`` skips it: the package then steps through
grpcio only (optd.native.available() is False), with the same API and results.

Tools, each overridable by an environment variable:
  OPTD_PROTO_ROOT     folder holding optd/v1/optd.proto (default: ../../proto from this file)
  PROTOC              protoc (default: protoc on PATH); needs >= 3.15 for proto3 ``optional``
  GRPC_PYTHON_PLUGIN  the gRPC Python plugin (default: grpc_python_plugin on PATH, then
                      /usr/bin/grpc_python_plugin). grpc_tools' bundled protoc is not used.
  OPTD_NATIVE         "0": do not build the extension
  CMAKE               cmake (default: cmake on PATH); OPTD_NATIVE_JOBS: parallel jobs (default 2)
"""

import os
import shutil
import subprocess
import sys

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_REL = os.path.join("optd", "v1", "optd.proto")


def _tool(env: str, name: str, fallback: str = "") -> str:
    path = os.environ.get(env) or shutil.which(name) or (fallback if fallback and
                                                         os.access(fallback, os.X_OK) else "")
    if not path:
        sys.exit(f"optd build: {name} not found (set {env}); on Debian install "
                 f"protobuf-compiler and protobuf-compiler-grpc")
    return path


def generate_stubs(out_root: str) -> None:
    """Writes optd/v1/*.py under out_root from the .proto."""
    proto_root = os.path.abspath(os.environ.get("OPTD_PROTO_ROOT") or
                                 os.path.join(HERE, "..", "..", "proto"))
    proto = os.path.join(proto_root, PROTO_REL)
    if not os.path.isfile(proto):
        sys.exit(f"optd build: {proto} not found; build from the optd repository (client/python) "
                 f"or set OPTD_PROTO_ROOT to the folder holding optd/v1/optd.proto")
    protoc = _tool("PROTOC", "protoc")
    plugin = _tool("GRPC_PYTHON_PLUGIN", "grpc_python_plugin", "/usr/bin/grpc_python_plugin")
    package_dir = os.path.join(out_root, "optd", "v1")
    os.makedirs(package_dir, exist_ok=True)
    command = [protoc, f"-I{proto_root}", f"--python_out={out_root}", f"--pyi_out={out_root}",
               f"--grpc_python_out={out_root}", f"--plugin=protoc-gen-grpc_python={plugin}", proto]
    print("optd build: " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    with open(os.path.join(package_dir, "__init__.py"), "w", encoding="utf-8") as f:
        f.write('"""Generated from proto/optd/v1/optd.proto at build time."""\n')


def build_native(out_dir: str) -> str:
    """Builds optd._native into out_dir with CMake; returns the file's path."""
    source_root = os.path.abspath(os.path.join(HERE, "..", ".."))
    if not os.path.isfile(os.path.join(source_root, "client", "python", "native", "module.cc")):
        sys.exit(f"optd build: {source_root} is not the optd repository (client/python/native "
                 f"missing); set OPTD_NATIVE=0 to install without the native path")
    cmake = _tool("CMAKE", "cmake")
    build_dir = os.path.join(HERE, "build", "native-cmake")
    os.makedirs(out_dir, exist_ok=True)
    configure = [cmake, "-S", source_root, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                 "-DOPTD_BUILD_TESTS=OFF", "-DOPTD_BUILD_BENCH=OFF",
                 f"-DPython3_EXECUTABLE={sys.executable}",
                 f"-DOPTD_NATIVE_OUTPUT_DIR={os.path.abspath(out_dir)}"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"] if not os.path.isdir(build_dir) else []
    print("optd build: " + " ".join(configure), flush=True)
    subprocess.run(configure, check=True)
    build = [cmake, "--build", build_dir, "--target", "optd_native", "-j",
             os.environ.get("OPTD_NATIVE_JOBS", "2")]
    print("optd build: " + " ".join(build), flush=True)
    subprocess.run(build, check=True)
    built = [name for name in os.listdir(out_dir) if name.startswith("_native.")
             and name.endswith(".so")]
    if not built:
        sys.exit("optd build: CMake did not build optd._native (is pybind11 installed? "
                 "apt-get install pybind11-dev python3-pybind11; or OPTD_NATIVE=0)")
    return os.path.join(out_dir, built[0])


def _native_wanted() -> bool:
    return os.environ.get("OPTD_NATIVE", "1") != "0"


class BuildPyWithStubs(build_py):
    """build_py that also generates the optd.v1 modules (into the build tree, or in place for an
    editable install)."""

    def run(self) -> None:
        super().run()
        root = HERE if getattr(self, "editable_mode", False) else os.path.abspath(self.build_lib)
        generate_stubs(root)
        self._native = build_native(os.path.join(root, "optd")) if _native_wanted() else None

    def get_outputs(self, include_bytecode=1):
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            package_dir = os.path.join(self.build_lib, "optd", "v1")
            outputs += [os.path.join(package_dir, name) for name in
                        ("__init__.py", "optd_pb2.py", "optd_pb2.pyi", "optd_pb2_grpc.py")]
            if getattr(self, "_native", None):
                outputs.append(self._native)
        return outputs


class NativeDistribution(Distribution):
    """Marks the wheel as platform-specific when it carries the extension."""

    def has_ext_modules(self) -> bool:
        return _native_wanted()


setup(cmdclass={"build_py": BuildPyWithStubs}, distclass=NativeDistribution)
