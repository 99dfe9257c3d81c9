"""Certificates and tokens for the security tests, made at test time with Debian's ``openssl``.

``make_pki(directory)`` writes, under ``directory``, and returns their paths as a ``Pki``:

* ``ca.pem`` / ``ca.key``: the CA that signs everything below but ``other_client``;
* ``server.pem`` / ``server.key``: the server's certificate, for IP 127.0.0.1, ::1 and localhost;
* ``server2.pem`` / ``server2.key``: a second server certificate from the same CA (another serial
  and subject ``optd-2``), to replace the first on disk while the server runs;
* ``alice.pem`` / ``bob.pem`` (+ ``.key``): client certificates (subject CN alice / bob, with the
  same name as a DNS subjectAltName);
* ``expired.pem``: a client certificate of the CA valid only in January 2020;
* ``other_ca.pem`` and ``other_client.pem``: a second CA and a client certificate it signed.

``token_line(token, tenant, role)`` is one line of an ``--auth_tokens_file``; ``sha256_hex`` the
hash it holds.
"""

import dataclasses
import hashlib
import subprocess
from pathlib import Path


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


@dataclasses.dataclass
class Pki:
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    def read(self, name: str) -> bytes:
        return (self.directory / name).read_bytes()


def _key(name, cwd):
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
             f"{name}.key", cwd=cwd)


def _ca(name, cwd):
    _key(name, cwd)
    _openssl("req", "-x509", "-new", "-key", f"{name}.key", "-sha256", "-days", "3650",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", f"{name}.pem", cwd=cwd)


def _leaf(name, ca, cwd, san, usage, dates=None):
    _key(name, cwd)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={name}", "-out", f"{name}.csr",
             cwd=cwd)
    ext = Path(cwd) / f"{name}.ext"
    ext.write_text(f"basicConstraints=CA:FALSE\nsubjectAltName={san}\nextendedKeyUsage={usage}\n")
    if dates is None:
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-days", "365", "-sha256", "-extfile", ext.name,
                 "-out", f"{name}.pem", cwd=cwd)
        return
    # `openssl ca` is the one command that takes explicit validity dates (an expired certificate).
    db = Path(cwd) / f"{name}-db"
    db.mkdir()
    (db / "index.txt").write_text("")
    (db / "serial").write_text("1000\n")
    config = Path(cwd) / f"{name}-ca.cnf"
    config.write_text(
        "[ca]\ndefault_ca = signing\n"
        f"[signing]\ndir = {db}\ndatabase = $dir/index.txt\nserial = $dir/serial\n"
        f"new_certs_dir = $dir\ncertificate = {Path(cwd) / (ca + '.pem')}\n"
        f"private_key = {Path(cwd) / (ca + '.key')}\ndefault_md = sha256\npolicy = anything\n"
        "copy_extensions = none\n"
        "[anything]\ncommonName = supplied\n")
    _openssl("ca", "-batch", "-config", config.name, "-in", f"{name}.csr", "-out", f"{name}.pem",
             "-startdate", dates[0], "-enddate", dates[1], "-extfile", ext.name, "-notext",
             cwd=cwd)


def make_pki(directory) -> Pki:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _ca("ca", d)
    _ca("other_ca", d)
    server_san = "IP:127.0.0.1,IP:::1,DNS:localhost"
    _leaf("server", "ca", d, server_san, "serverAuth")
    _leaf("server2", "ca", d, server_san, "serverAuth")
    for name in ("alice", "bob"):
        _leaf(name, "ca", d, f"DNS:{name}", "clientAuth")
    _leaf("expired", "ca", d, "DNS:expired", "clientAuth",
          dates=("20200101000000Z", "20200131000000Z"))
    _leaf("other_client", "other_ca", d, "DNS:other_client", "clientAuth")
    return Pki(d)


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_line(token: str, tenant: str, role: str, name: str = "") -> str:
    return f"{sha256_hex(token)} {tenant} {role}{' ' + name if name else ''}\n"
