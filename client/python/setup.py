"""Build hook of the optd Python package: generates the optd.v1 protobuf and gRPC modules.

Metadata lives in pyproject.toml. At build time (``pip install``, ``pip wheel``, ``setup.py
build``) this runs the system ``protoc`` with Debian's ``grpc_python_plugin`` on
``<proto root>/optd/v1/optd.proto`` and writes ``optd/v1/{__init__,optd_pb2,optd_pb2_grpc}.py``
(and ``optd_pb2.pyi``) into the build directory, so the generated code always matches the .proto
it is built from and nothing generated is kept in the source tree (an editable install writes them
into ``optd/v1/``, which is git-ignored).

Tools, each overridable by an environment variable:
  OPTD_PROTO_ROOT     folder holding optd/v1/optd.proto (default: ../../proto from this file)
  PROTOC              protoc (default: protoc on PATH); needs >= 3.15 for proto3 ``optional``
  GRPC_PYTHON_PLUGIN  the gRPC Python plugin (default: grpc_python_plugin on PATH, then
                      /usr/bin/grpc_python_plugin). grpc_tools' bundled protoc is not used.
"""

import os
import shutil
import subprocess
import sys

from setuptools import setup
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


class BuildPyWithStubs(build_py):
    """build_py that also generates the optd.v1 modules (into the build tree, or in place for an
    editable install)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            generate_stubs(HERE)
        else:
            generate_stubs(os.path.abspath(self.build_lib))

    def get_outputs(self, include_bytecode=1):
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            package_dir = os.path.join(self.build_lib, "optd", "v1")
            outputs += [os.path.join(package_dir, name) for name in
                        ("__init__.py", "optd_pb2.py", "optd_pb2.pyi", "optd_pb2_grpc.py")]
        return outputs


setup(cmdclass={"build_py": BuildPyWithStubs})
