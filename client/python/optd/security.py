"""TLS, mTLS and bearer tokens for optd.Client (README "Security"), and the errors that say why
the server or the TLS handshake refused a call.

    client = optd.Client("optd.example:50051", tls_ca="ca.pem",          # TLS: the server's CA
                         tls_cert="alice.pem", tls_key="alice.key",     # mTLS: the client's own
                         token=None)                                    # None: $OPTD_TOKEN

* ``tls_ca`` (a PEM file, or its bytes) turns TLS on and is the only CA the server's certificate
  is checked against; ``tls=True`` turns TLS on with the system's roots instead.
* ``tls_cert`` + ``tls_key``: the client certificate and its key, for a server run with
  ``--tls_client_ca`` (mTLS); they turn TLS on too.
* ``tls_server_name``: the name the server's certificate must hold when it is not the address's
  host (e.g. connecting by IP to a certificate for a DNS name).
* ``token``: sent as ``authorization: Bearer <token>`` metadata with every call, streams
  included. ``None`` (the default) reads the ``OPTD_TOKEN`` environment variable; ``""`` sends
  none. A token also travels over a plaintext channel, which is only acceptable on loopback (the
  token is visible to anyone on the path otherwise): use TLS for anything else.

The files are read when the Client is made; make a new Client to use renewed ones.

Errors (same classes as always, clearer messages; a token is never printed):

* UNAUTHENTICATED (``UnauthenticatedError``): the message says that the server refused the
  token, whether one was sent at all and where it came from (``token=`` or ``OPTD_TOKEN``).
* PERMISSION_DENIED (``PermissionDeniedError``): names the refused call and the server.
* A failed TLS handshake (``UnavailableError`` with ``tls_failure = True``; not retried): names
  the address, says "TLS handshake failed", keeps gRPC's detail and hints at the option to check
  (``tls_ca`` for a server certificate the CA does not sign, ``tls_cert``/``tls_key`` for a client
  certificate the server closed the connection on, with the certificate's subject, issuer and
  expiry as read here; no ``tls_ca`` at all against a TLS server).
"""

import datetime
import os
import ssl
from typing import Any, Optional, Tuple, Union

import grpc

from optd.errors import InvalidArgumentError, OptdError, error_from_status

__all__ = ["TOKEN_ENV", "Security", "Pem"]

#: The environment variable a Client reads its token from when ``token`` is not given.
TOKEN_ENV = "OPTD_TOKEN"

#: A PEM file's path, or its contents.
Pem = Union[str, bytes, os.PathLike]


def _read_pem(option: str, value: Optional[Pem]) -> Tuple[Optional[bytes], str]:
    """(contents, how to name it in messages) of a PEM option; (None, "") when not given."""
    if value is None:
        return None, ""
    if isinstance(value, bytes):
        if b"-----BEGIN" not in value:
            raise InvalidArgumentError(f"{option}: the bytes given are not PEM (no -----BEGIN "
                                       f"line); give a file path or PEM bytes")
        return value, f"{option}=<PEM bytes>"
    path = os.fspath(value)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InvalidArgumentError(f"{option} = {path!r}: cannot read it ({e.strerror})") \
            from None
    if b"-----BEGIN" not in data:
        raise InvalidArgumentError(f"{option} = {path!r} is not a PEM file (no -----BEGIN line)")
    return data, f"{option}={path}"


def _token_value(token: Optional[str]) -> Tuple[str, str]:
    """(token, where it came from: "token=", "$OPTD_TOKEN" or "" for none)."""
    source = "token="
    if token is None:
        token, source = os.environ.get(TOKEN_ENV, ""), f"${TOKEN_ENV}"
    token = token.strip()
    if not token:
        return "", ""
    if any(not 0x21 <= ord(c) <= 0x7E for c in token):
        # Never echo the token itself.
        raise InvalidArgumentError(f"the token from {source} holds a character that cannot be "
                                   f"sent as gRPC metadata (only printable ASCII without spaces)")
    return token, source


def _cert_summary(path: str) -> Tuple[str, Optional[str]]:
    """("subject CN=..., issued by CN=..., valid until ...", a problem or None) of a certificate
    file, as far as the ssl module can tell; ("", None) if it cannot read it."""
    try:
        info = ssl._ssl._test_decode_cert(path)  # pylint: disable=protected-access
    except Exception:  # pylint: disable=broad-except
        return "", None

    def name(rdns) -> str:
        return ",".join(f"{k}={v}" for rdn in rdns for k, v in rdn) or "?"

    not_after = info.get("notAfter", "")
    not_before = info.get("notBefore", "")
    summary = (f"subject {name(info.get('subject', ()))}, issued by "
               f"{name(info.get('issuer', ()))}, valid {not_before} to {not_after}")
    now = datetime.datetime.now(datetime.timezone.utc).timestamp()
    problem = None
    try:
        if not_after and ssl.cert_time_to_seconds(not_after) < now:
            problem = f"it EXPIRED on {not_after}"
        elif not_before and ssl.cert_time_to_seconds(not_before) > now:
            problem = f"it is NOT VALID YET (from {not_before})"
    except ValueError:
        pass
    return summary, problem


class Security:
    """A Client's transport security: its channel credentials, the metadata carrying its token,
    and the explanations added to refusals. Made by optd.Client from its tls_*/token arguments."""

    def __init__(self, address: str, *, tls: bool = False, tls_ca: Optional[Pem] = None,
                 tls_cert: Optional[Pem] = None, tls_key: Optional[Pem] = None,
                 tls_server_name: Optional[str] = None, token: Optional[str] = None,
                 credentials: Optional[grpc.ChannelCredentials] = None) -> None:
        self.address = address
        ca, self.ca_name = _read_pem("tls_ca", tls_ca)
        cert, self.cert_name = _read_pem("tls_cert", tls_cert)
        key, key_name = _read_pem("tls_key", tls_key)
        if (cert is None) != (key is None):
            raise InvalidArgumentError("tls_cert and tls_key go together: give both (the client "
                                       "certificate and its private key) or neither")
        self.cert_path = None if cert is None or isinstance(tls_cert, bytes) else \
            os.fspath(tls_cert)
        if cert is not None and self.cert_path is not None and \
                not isinstance(tls_key, bytes):
            try:  # a key that does not match its certificate fails here, not in a handshake
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(self.cert_path,
                                                                       os.fspath(tls_key))
            except ssl.SSLError as e:
                raise InvalidArgumentError(f"{self.cert_name} and {key_name}: the key does not "
                                           f"go with the certificate ({e.reason or e})") from None
        self.tls = bool(tls) or ca is not None or cert is not None
        #: The PEM bytes read (None where not given): the native path makes its channel of them.
        self.pems: Tuple[Optional[bytes], Optional[bytes], Optional[bytes]] = (ca, cert, key)
        if credentials is not None and self.tls:
            raise InvalidArgumentError("give either credentials= or tls/tls_ca/tls_cert/tls_key, "
                                       "not both")
        if tls_server_name is not None and not self.tls and credentials is None:
            raise InvalidArgumentError("tls_server_name needs TLS (tls_ca, tls_cert or tls=True)")
        self.custom_credentials = credentials is not None
        self.credentials = credentials
        if self.tls:
            self.credentials = grpc.ssl_channel_credentials(root_certificates=ca,
                                                            private_key=key,
                                                            certificate_chain=cert)
        self.server_name = tls_server_name
        self.token, self.token_source = _token_value(token)

    def channel_options(self) -> list:
        return ([("grpc.ssl_target_name_override", self.server_name)]
                if self.server_name else [])

    def metadata(self) -> Tuple[Tuple[str, str], ...]:
        """The authorization metadata (empty without a token)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def __repr__(self) -> str:  # never shows the token
        return (f"Security(address={self.address!r}, tls={self.tls}, ca={self.ca_name!r}, "
                f"cert={self.cert_name!r}, "
                f"token={'from ' + self.token_source if self.token else None})")

    # -- explaining refusals -----------------------------------------------------------------------

    def explain(self, error: OptdError, method: str) -> OptdError:
        """``error`` of ``method`` with a message that says what was refused and why (see the
        module's doc); other errors come back unchanged."""
        code = error.code
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return self._replace(error, self._unauthenticated(error.message, method))
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return self._replace(error, f"optd at {self.address} refused {method} "
                                        f"(PERMISSION_DENIED): {error.message}")
        if code == grpc.StatusCode.UNAVAILABLE:
            message = self._transport(error.message)
            if message is not None:
                out = self._replace(error, message)
                out.tls_failure = self.tls or self.custom_credentials
                return out
        return error

    def _replace(self, error: OptdError, message: str) -> OptdError:
        out = error_from_status(error.code, message, server_incarnation=error.server_incarnation)
        out.attempts = getattr(error, "attempts", 1)
        return out

    def _unauthenticated(self, detail: str, method: str) -> str:
        if self.token:
            sent = (f"a token was sent (from {self.token_source}) and the server did not accept "
                    f"it: check that it is current and listed in the server's --auth_tokens_file")
        elif self.cert_name:
            sent = (f"no token was sent (give token= or set {TOKEN_ENV}), and the client "
                    f"certificate ({self.cert_name}) maps to no tenant on the server")
        else:
            sent = f"no token was sent: give token= or set {TOKEN_ENV}"
        what = "the token" if self.token else "the call without a token"
        return (f"optd at {self.address} refused {method}: the server refused {what} "
                f"(UNAUTHENTICATED): {detail}; {sent}")

    def _transport(self, detail: str) -> Optional[str]:
        """The message of an UNAVAILABLE that a TLS setting explains, or None."""
        low = detail.lower()
        handshake = "handshake" in low or "ssl_error" in low or "certificate verify" in low or \
            "not in peer certificate" in low
        # The server closing the connection while it was being set up (not a call cut later).
        closed = ("socket closed" in low or "connection reset" in low or "end of file" in low) \
            and "failed to connect" in low
        if not (handshake or closed):
            return None
        head = f"TLS handshake failed with optd at {self.address}: {detail}"
        if not self.tls and not self.custom_credentials:
            if not closed:
                return None
            return (f"optd at {self.address} closed the connection before any call "
                    f"(plaintext channel): {detail}. If the server uses TLS (--tls_cert), give "
                    f"tls_ca (and tls_cert/tls_key if it asks for client certificates)")
        if "wrong version number" in low or "packet length too long" in low:
            return (f"{head}. The server does not speak TLS on this port (a plaintext optd?): "
                    f"drop the tls_* options, or start optd with --tls_cert/--tls_key")
        if "not in peer certificate" in low:
            return (f"{head}. The server's certificate does not name the host asked for: connect "
                    f"by a name or address the certificate holds, or set tls_server_name to one "
                    f"(now {self.server_name or 'unset'})")
        if "certificate verify failed" in low or "certificate_verify_failed" in low:
            ca = self.ca_name or "the system's root certificates (tls=True)"
            return (f"{head}. The server's certificate was not accepted: check tls_ca (now "
                    f"{ca}): it must be the CA that signed the server's certificate, and the "
                    f"certificate must name this host (or set tls_server_name)")
        if closed:
            if self.cert_name:
                summary, problem = _cert_summary(self.cert_path) if self.cert_path else ("", None)
                why = f"; {problem}" if problem else ""
                return (f"{head}. The server closed the connection during the handshake: it "
                        f"refused the client certificate: check tls_cert/tls_key ({self.cert_name}"
                        f"{': ' + summary if summary else ''}{why}): it must be signed by the CA "
                        f"of the server's --tls_client_ca and be valid now")
            return (f"{head}. The server closed the connection during the handshake: it "
                    f"probably requires a client certificate (mTLS, --tls_client_ca): give "
                    f"tls_cert and tls_key")
        return (f"{head}. Check tls_ca ({self.ca_name or 'system roots'}) and tls_cert/tls_key "
                f"({self.cert_name or 'none given'})")


def retriable(error: OptdError, codes: Any) -> bool:
    """Whether a retry policy with ``retry_codes`` = ``codes`` retries ``error`` (never a failed
    TLS handshake: it fails the same way again)."""
    return error.code in codes and not getattr(error, "tls_failure", False)
