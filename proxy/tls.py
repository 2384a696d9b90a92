"""tls: the data plane's TLS contexts (SPEC §12), built in every process that serves or connects.

Settings carry only file paths (proxy/settings.py: ListenerTLS, UpstreamTLS); each process (the
one router, or each worker) reads the files and builds its own ssl.SSLContext objects here,
since a context cannot cross into a worker.

- ServerTLS: a TLS listener's contexts. The listener is created once with ``ServerTLS.context``;
  its SNI callback hands each new connection the context of the certificate its server_name
  names (RFC 6066 §3), so ``set_certificates`` swaps certificates for new connections while
  open ones go on with theirs. It also counts refused handshakes.
- upstream_context: the client context for one environment's servers.
- load_certificate / upstream_context raise CertificateError naming which file is wrong;
  admin/config.py calls them at load time so that a bad file is a config error.

ALPN (RFC 7301): only http/1.1 is offered, on both sides. A client that offers only h2 gets
no protocol acknowledged (OpenSSL's "no ack", RFC 7301 §3.2 leaves that to the server) and its
connection speaks HTTP/1.1, the protocol this port serves without ALPN.
"""

from __future__ import annotations

import base64
import re
import ssl
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from .settings import CertificateFiles, EnvironmentConfig, ListenerTLS, UpstreamTLS

__all__ = ["ALPN", "MIN_VERSIONS", "CertificateError", "ServerTLS", "SocketOwner", "certificate_names",
           "load_certificate", "upstream_context", "upstream_contexts"]

ALPN = ["http/1.1"]
MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s+([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----")
_PEM_KEY = re.compile(rb"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----")


class CertificateError(Exception):
    """CertificateError: a TLS file that cannot serve; ``part`` names the key it came from.

    part is "cert", "key" or "ca", or None when the pair is at fault (a key that is not the
    certificate's); admin/config.py turns it into a config error naming that key path.
    """

    def __init__(self, part: str | None, message: str) -> None:
        super().__init__(message)
        self.part = part


# --------------------------------------------------------------------------- certificate names
# A certificate's names are read from its DER (RFC 5280 §4.1): the subjectAltName dNSNames, or
# without any the subject's commonName (RFC 6125 §6.4.4). A reader of the few structures needed.

_SAN_OID = bytes.fromhex("0603551d11")   # 2.5.29.17 subjectAltName
_CN_OID = bytes.fromhex("0603550403")    # 2.5.4.3 commonName


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """_tlv: the DER element at ``at``: (tag, start of its content, end of its content)."""
    if at + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[at]
    length = data[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or at + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[at:at + count], "big")
        at += count
    if at + length > len(data):
        raise ValueError("truncated DER")
    return tag, at, at + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """_children: the elements inside [start, end): (tag, element start, content start, content end)."""
    out = []
    at = start
    while at < end:
        tag, body, stop = _tlv(data, at)
        out.append((tag, at, body, stop))
        at = stop
    return out


def certificate_names(der: bytes) -> tuple[str, ...]:
    """certificate_names: the lowercase DNS names a DER certificate is for; ValueError if it is not one.

    Called by load_certificate; ServerTLS matches a client's server_name against them.
    """
    tag, body, end = _tlv(der, 0)
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, tbs, tbs_end = _tlv(der, body)
    if tag != 0x30:
        raise ValueError("not a certificate")
    fields = _children(der, tbs, tbs_end)
    if fields and fields[0][0] == 0xA0:   # [0] version
        fields = fields[1:]
    if len(fields) < 6:
        raise ValueError("not a certificate")
    names: list[str] = []
    for tag, _, body, stop in fields[6:]:
        if tag != 0xA3:   # [3] extensions
            continue
        for _, _, ext, ext_end in _children(der, *_tlv(der, body)[1:]):
            parts = _children(der, ext, ext_end)
            if not parts or der[parts[0][1]:parts[0][3]] != _SAN_OID:
                continue
            value = parts[-1][2]   # the OCTET STRING's content
            for name_tag, _, name, name_end in _children(der, *_tlv(der, value)[1:]):
                if name_tag == 0x82:   # [2] dNSName
                    names.append(der[name:name_end].decode("ascii").lower())
    if names:
        return tuple(names)
    subject = fields[4]
    for _, _, rdn, rdn_end in _children(der, subject[2], subject[3]):
        for _, _, atv, atv_end in _children(der, rdn, rdn_end):
            parts = _children(der, atv, atv_end)
            if len(parts) == 2 and der[parts[0][1]:parts[0][3]] == _CN_OID:
                return (der[parts[1][2]:parts[1][3]].decode("utf-8", "replace").lower(),)
    return ()


def _matches(pattern: str, name: str) -> bool:
    """_matches: a certificate name (perhaps "*.example.com", one label) against a server_name."""
    if pattern.startswith("*."):
        head, dot, rest = name.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:]
    return pattern == name


# --------------------------------------------------------------------------- loading


def _read(path: str, part: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CertificateError(part, f"{path}: cannot read it: {exc.strerror or exc}") from None


def _no_password() -> bytes:
    raise CertificateError("key", "the key is encrypted; cutover needs it unencrypted (readable by cutover only)")


def _server_context(min_version: str) -> ssl.SSLContext:
    """_server_context: a server context with cutover's settings and no certificate yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[min_version]
    ctx.set_alpn_protocols(ALPN)
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    return ctx


def load_certificate(files: "CertificateFiles", min_version: str = "1.2") -> tuple[ssl.SSLContext, tuple[str, ...]]:
    """load_certificate: a server context holding one certificate, and the names it is for.

    Called by ServerTLS, and by admin/config.py to check a `tls` entry at load time. Raises
    CertificateError: an unreadable file or one without a PEM certificate or key names its part;
    a key that is not the certificate's names the pair (part None).
    """
    data = _read(files.cert, "cert")
    found = _PEM_CERT.search(data)
    if found is None:
        raise CertificateError("cert", f"{files.cert}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)")
    try:
        names = certificate_names(base64.b64decode(b"".join(found.group(1).split()), validate=True))
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=data.decode("ascii", "replace"))
    except (ValueError, ssl.SSLError, UnicodeDecodeError) as exc:
        raise CertificateError("cert", f"{files.cert}: not a valid PEM certificate ({_reason(exc)})") from None
    key = _read(files.key, "key")
    kind = _PEM_KEY.search(key)
    if kind is None:
        raise CertificateError("key", f"{files.key}: no PEM private key in it (-----BEGIN PRIVATE KEY-----)")
    if kind.group(1) == b"ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in key:
        raise CertificateError("key", f"{files.key}: the key is encrypted; cutover needs it unencrypted "
                                      "(readable by cutover's user only)")
    ctx = _server_context(min_version)
    try:
        ctx.load_cert_chain(files.cert, files.key, password=_no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise CertificateError(None, f"the key {files.key} is not the key of the certificate {files.cert}") from None
        raise CertificateError("key", f"{files.key}: not a valid private key ({_reason(exc)})") from None
    except OSError as exc:
        raise CertificateError("cert", f"{files.cert}: cannot read it: {exc.strerror or exc}") from None
    return ctx, names


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- serving


class ServerTLS:
    """ServerTLS: the TLS of listen and preview_listen (or the admin listener); made by Proxy.

    ``context`` is what the listener is created with; it never changes, and every connection
    it accepts asks ``_select`` (its SNI callback) for the context of the certificate to
    present. handshake_failures counts handshakes the TLS layer refused (not TLS at all, no
    common version or cipher, a broken hello): Snapshot.tls_handshake_failures.
    """

    def __init__(self, config: "ListenerTLS") -> None:
        self.handshake_failures = 0
        self.over_limit = 0   # connections the TLS listeners closed at their handshakes' bound (tlsstream.py)
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcards: list[tuple[str, ssl.SSLContext]] = []
        self.context = _server_context(config.min_version)
        self._default = self.context
        self.context.sslobject_class = _counting(self)
        self.context.sni_callback = self._select
        self.set_certificates(config)
        # Serves the first certificate itself too, should a hello reach it without the callback.
        first = config.certificates[0]
        self.context.load_cert_chain(first.cert, first.key, password=_no_password)

    def set_certificates(self, config: "ListenerTLS") -> None:
        """set_certificates: serve ``config``'s certificates to every connection from now on.

        Reads and checks every file first (CertificateError, nothing changed, if one is bad);
        open connections keep the certificate they were given. Called by __init__ and by
        Proxy.set_tls (a reload).
        """
        exact: dict[str, ssl.SSLContext] = {}
        wildcards: list[tuple[str, ssl.SSLContext]] = []
        default: ssl.SSLContext | None = None
        for files in config.certificates:
            ctx, names = load_certificate(files, config.min_version)
            default = default or ctx
            for name in names:
                if name.startswith("*."):
                    wildcards.append((name, ctx))
                else:
                    exact.setdefault(name, ctx)
        if default is None:
            raise CertificateError("cert", "no certificate")
        self.context.minimum_version = MIN_VERSIONS[config.min_version]
        self._exact, self._wildcards, self._default = exact, wildcards, default

    def choose(self, server_name: str | None) -> ssl.SSLContext:
        """choose: the context for a client hello naming ``server_name``: an exact name first,
        then a wildcard, then the first certificate."""
        if server_name:
            name = server_name.lower().rstrip(".")
            ctx = self._exact.get(name)
            if ctx is not None:
                return ctx
            for pattern, ctx in self._wildcards:
                if _matches(pattern, name):
                    return ctx
        return self._default

    def _select(self, sslobj: ssl.SSLObject, server_name: str | None, listening: ssl.SSLContext) -> None:
        sslobj.context = self.choose(server_name)


class SocketOwner:
    """SocketOwner: the owner of a TLS object proxy/tlsstream.py made on a socket.

    OpenSSL's SNI callback (ServerTLS._select) is handed a TLS object's owner, and without one
    the bare socket, which has no context to set. The TLS object holds it by a weak reference,
    so its transport keeps it.
    """

    __slots__ = ("tls", "__weakref__")

    def __init__(self) -> None:
        self.tls: Any = None

    @property
    def context(self) -> ssl.SSLContext:
        return self.tls.context

    @context.setter
    def context(self, ctx: ssl.SSLContext) -> None:
        self.tls.context = ctx


def _counting(owner: ServerTLS) -> type[ssl.SSLObject]:
    """_counting: an SSLObject class that counts the handshakes it refuses in ``owner``.

    Its read, write and pending are the TLS object's own (C) methods: ssl.SSLObject's are
    Python functions that only call them, and the event loop's TLS layer calls them for every
    record (it takes the bound methods once per connection), a Python frame each. They take
    their arguments by position only (read(size[, buffer]), write(data)), as both event loops'
    TLS layers pass them.
    """

    class CountingSSLObject(ssl.SSLObject):
        @classmethod
        def _create(cls, *args: Any, **kwargs: Any) -> "CountingSSLObject":
            made = super()._create(*args, **kwargs)  # type: ignore[misc]   # private: not in typeshed
            inner = getattr(made, "_sslobj", None)
            if inner is not None:
                made.read, made.write, made.pending = inner.read, inner.write, inner.pending
            return made

        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError:
                owner.handshake_failures += 1
                raise

    return CountingSSLObject


# --------------------------------------------------------------------------- upstream


def upstream_context(config: "UpstreamTLS") -> ssl.SSLContext:
    """upstream_context: the client context for an environment's servers (`environments.X.tls`).

    Verifies against config.ca (or the system's store) unless verify is false. Raises
    CertificateError("ca", ...) for a ca file that cannot be read or holds no certificate.
    Called by upstream_contexts and by admin/config.py at load time.
    """
    ctx = ssl.create_default_context()
    if config.ca is not None:
        data = _read(config.ca, "ca")
        try:
            ctx.load_verify_locations(cadata=data.decode("ascii"))
        except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
            raise CertificateError("ca", f"{config.ca}: no valid PEM certificate in it ({_reason(exc)})") from None
    if not config.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(ALPN)
    return ctx


def upstream_contexts(environments: "Iterable[EnvironmentConfig]") -> dict[str, tuple[ssl.SSLContext, str | None]]:
    """upstream_contexts: {environment name: (context, server_name)} for the environments with `tls`.

    Proxy builds it at start and in set_tls; Proxy._connect and the health checks read it.
    """
    return {env.name: (upstream_context(env.tls), env.tls.server_name)
            for env in environments if env.tls is not None}
