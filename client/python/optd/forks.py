"""optd.Client's calls that make a session from a file: a server-side checkpoint (a fork of a
session: create_session_from_checkpoint) or a Session.to_npz file (create_session_from_npz).
Client inherits them from _SessionsFromFiles; they use its _call, create_session and pb2, and
raise the same typed OptdErrors (see optd.client)."""

import json
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from google.protobuf import json_format

from optd import config as _config
from optd.errors import InvalidArgumentError, OptdError
from optd.state import OptimizerState

if TYPE_CHECKING:
    from optd.session import Session  # noqa: F401

#: The "format" of the config.json inside a Session.to_npz file.
NPZ_FORMAT = "optd-session-npz-1"


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


#: "Use the client's (or session's) setting", for ``timeout`` and ``version`` arguments (optd.client
#: exports it).
DEFAULT: Any = _Default()


class _SessionsFromFiles:
    """The file-based session constructors of optd.Client (a mixin; not used on its own)."""

    def create_session_from_checkpoint(self, session_id: str, path: Optional[str] = None, *,
                                       from_session: Optional[str] = None, optimizer: Any = None,
                                       worker_id: Optional[str] = None, timeout: Any = DEFAULT,
                                       **hyperparameters: Any) -> "Session":
        """Creates session ``session_id`` from a checkpoint (a fork): its parameters, optimizer
        state, schedule state and version, with a new exactly-once table.

        Args:
            session_id: the new session's id.
            path: a checkpoint file on the server (CheckpointResult.path), or
            from_session: a session id whose newest checkpoint to use (exactly one of the two).
            optimizer, hyperparameters: new hyperparameters replacing the checkpoint's (same
                optimizer kind), e.g. ``lr=0.01``. With only keywords the kind is read from
                ``from_session`` (GetSession) or, for ``path``, from the file when this machine
                can read it; otherwise give ``optimizer=``.
            worker_id: the returned Session's worker id.

        Needs a server with --checkpoint_dir (FailedPreconditionError without); NotFoundError for
        no such checkpoint.
        """
        if (path is None) == (from_session is None):
            raise InvalidArgumentError("create_session_from_checkpoint: give exactly one of path= "
                                       "and from_session=")
        pb2 = self.pb2
        request = pb2.CreateSessionRequest(session_id=session_id, from_checkpoint=path or "",
                                           from_session_checkpoint=from_session or "")
        if optimizer is not None or hyperparameters:
            if optimizer is None:
                optimizer = self._checkpoint_kind(path, from_session, timeout)
            request.config.optimizer.CopyFrom(_config.optimizer_config(optimizer,
                                                                       **hyperparameters))
        info, _ = self._call("CreateSession", request, timeout)
        from optd.session import Session  # pylint: disable=import-outside-toplevel,cyclic-import
        return Session(self, info.session_id, worker_id=worker_id, version=info.version,
                       info=info)

    def _checkpoint_kind(self, path: Optional[str], from_session: Optional[str],
                         timeout: Any) -> str:
        """The optimizer kind of a checkpoint, to build a config from bare hyperparameters."""
        if from_session is not None:
            return _config.optimizer_kind(self.get_session(from_session,
                                                           timeout=timeout).config.optimizer)
        try:
            from optd import checkpoint as _checkpoint  # pylint: disable=import-outside-toplevel
            manifest = _checkpoint.read_manifest(path)
        except (OSError, OptdError) as e:
            raise InvalidArgumentError(f"create_session_from_checkpoint: cannot tell the optimizer "
                                       f"kind of {path} from here ({e}); give optimizer=") from None
        kinds = list(manifest.get("config", {}).get("optimizer", {}))
        if len(kinds) != 1:
            raise InvalidArgumentError(f"checkpoint {path} names optimizer {kinds}; give "
                                       f"optimizer=")
        return _config._canonical_kind(kinds[0])

    def create_session_from_npz(self, path: str, *, session_id: str = "",
                                worker_id: Optional[str] = None, timeout: Any = DEFAULT,
                                **hyperparameters: Any) -> "Session":
        """Creates a session from a file written by Session.to_npz: CreateSession with its
        parameters and configuration (``hyperparameters`` replace the saved ones, same kind),
        then UpdateSession with its optimizer state. The new session starts at version 0 (its
        step counters and state are the saved ones). If the state is refused the new session is
        deleted and the error raised."""
        data = np.load(path, allow_pickle=False)
        try:
            meta = json.loads(bytes(data["config.json"]).decode("utf-8"))
            if meta.get("format") != NPZ_FORMAT:
                raise InvalidArgumentError(f"{path} is not an optd session npz (format "
                                           f"{meta.get('format')!r})")
            config = json_format.Parse(json.dumps(meta["config"]), self.pb2.SessionConfig())
            if hyperparameters:
                kind = _config.optimizer_kind(config.optimizer)
                sub = getattr(config.optimizer, kind)
                _config._fill(sub, hyperparameters, f"optimizer.{kind}")
            names = list(meta["tensors"])
            tensors = [(name, np.asarray(data["parameters/" + name], dtype=np.float32))
                       for name in names]
            state = OptimizerState.from_flat(data, names, meta["optimizer_arrays"])
        except KeyError as e:
            raise InvalidArgumentError(f"{path} lacks {e} (not written by Session.to_npz?)") \
                from None
        finally:
            data.close()
        session = self.create_session(tensors, config, session_id=session_id,
                                      worker_id=worker_id, timeout=timeout)
        try:
            session.import_optimizer_state(state, timeout=timeout)
        except OptdError:
            try:
                session.delete(timeout=timeout)
            except OptdError:
                pass
            raise
        return session

