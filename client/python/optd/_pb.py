"""The generated ``optd.v1`` modules, imported on first use with a helpful error if absent.

An installed package carries them (``pip install`` runs protoc at build time). In a source checkout
they come from the CMake build (``<build>/python/optd/v1``): put ``<build>/python`` on ``sys.path``
next to ``client/python`` before importing ``optd``; ``optd.__path__`` spans both folders.
"""

_modules = None


def _load():
    global _modules
    if _modules is None:
        try:
            from optd.v1 import optd_pb2, optd_pb2_grpc  # pylint: disable=import-outside-toplevel
        except ImportError as e:
            raise ImportError(
                "the generated optd.v1 stubs (optd/v1/optd_pb2.py, optd_pb2_grpc.py) are not "
                "importable: install the package (pip install --no-build-isolation client/python) "
                "or put <build>/python (CMake target optd_python_proto) on sys.path before "
                f"importing optd ({e})") from e
        _modules = (optd_pb2, optd_pb2_grpc)
    return _modules


def pb2():
    """optd.v1.optd_pb2."""
    return _load()[0]


def pb2_grpc():
    """optd.v1.optd_pb2_grpc."""
    return _load()[1]
