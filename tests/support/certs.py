"""certs: certificates made at test time with the openssl command (Debian's openssl package).

``Authority(folder)`` is a throwaway certificate authority; ``issue(names)`` signs a server
certificate for those DNS names (and 127.0.0.1, unless told not to) with a fresh P-256 key and
returns its ``Issued`` files. ``tls_files`` (plugin.py, one per test session) holds the ones the TLS tests
share: the authority, a second unrelated one, and certificates for a few names. A client
context trusting an authority is ``client_context(authority)``; ``blocking_tls_client`` a
blocking TLS socket with one.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


def require_openssl() -> str:
    """require_openssl: the openssl command's path; skips the test without it."""
    found = shutil.which("openssl")
    if found is None:
        pytest.skip("needs the openssl command (apt-get install openssl)")
    return found


def _run(*args: str) -> None:
    subprocess.run([require_openssl(), *args], check=True, capture_output=True, timeout=30)


@dataclass(frozen=True)
class Issued:
    """Issued: a certificate (PEM, the leaf only) and its unencrypted key (PEM), as paths."""

    cert: Path
    key: Path
    names: tuple[str, ...]

    def config(self) -> dict:
        """config: this pair as a `tls` entry of a config ({cert, key})."""
        return {"cert": str(self.cert), "key": str(self.key)}


class Authority:
    """Authority: a self-signed CA in ``folder`` that signs server certificates."""

    def __init__(self, folder: Path, name: str = "cutover test CA") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.cert = folder / "ca.pem"
        self.key = folder / "ca.key"
        self._serial = 1
        _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(self.key), "-out", str(self.cert), "-days", "3", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def issue(self, names: tuple[str, ...], stem: str | None = None, loopback: bool = True) -> Issued:
        """issue: a server certificate for ``names`` (DNS names; 127.0.0.1 is added as an IP unless
        ``loopback`` is False: a certificate for the public names alone)."""
        self._serial += 1
        stem = stem or f"{names[0].replace('*', 'star')}-{self._serial}"
        key = self.folder / f"{stem}.key"
        csr = self.folder / f"{stem}.csr"
        cert = self.folder / f"{stem}.pem"
        ext = self.folder / f"{stem}.ext"
        alt = ",".join([f"DNS:{n}" for n in names] + (["IP:127.0.0.1"] if loopback else []))
        ext.write_text(f"subjectAltName={alt}\nbasicConstraints=critical,CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
                       "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
        _run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={names[0]}")
        _run("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
             "-set_serial", str(self._serial), "-days", "3", "-out", str(cert), "-extfile", str(ext))
        return Issued(cert=cert, key=key, names=names)


def client_context(authority: Authority | None, alpn: list[str] | None = None) -> ssl.SSLContext:
    """client_context: a client context trusting ``authority`` (None: verifying nothing)."""
    if authority is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(authority.cert))
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


def served_certificate_names(sslobj: ssl.SSLObject | ssl.SSLSocket) -> set[str]:
    """served_certificate_names: the DNS names of the certificate the server presented."""
    cert = sslobj.getpeercert()
    return {value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"}


@dataclass
class TlsFiles:
    """TlsFiles: what the ``tls_files`` fixture made once for the session."""

    authority: Authority
    other: Authority              # an authority that signed none of the certificates below
    shop: Issued                  # shop.test
    api: Issued                   # api.test, *.api.test
    localhost: Issued             # localhost (and 127.0.0.1)
    public: Issued                # shop.test alone: not valid for 127.0.0.1


def blocking_tls_client(port: int, ctx: ssl.SSLContext, receive_buffer: int | None = None) -> ssl.SSLSocket:
    """blocking_tls_client: a blocking TLS socket (5 s timeout) to 127.0.0.1:``port`` for
    shop.test, with a ``receive_buffer`` set before it connects, that reports a connection closed
    without close_notify as SSLEOFError (suppress_ragged_eofs off). Call it in a thread."""
    raw = socket.socket()
    raw.settimeout(5)
    if receive_buffer is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    raw.connect(("127.0.0.1", port))
    return ctx.wrap_socket(raw, server_hostname="shop.test", suppress_ragged_eofs=False)
