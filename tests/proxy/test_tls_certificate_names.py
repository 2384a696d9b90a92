"""Table tests for proxy/tls.py without sockets: the names read off a certificate's DER (the
subjectAltName DNS names, else the subject's CN), how a client's server_name picks one of
several certificates (exact, then one-label wildcard, then the first), and ALPN/version
settings of the contexts."""

from __future__ import annotations

import ssl
import subprocess

import pytest

from proxy import CertificateFiles, ListenerTLS
from proxy.tls import ALPN, ServerTLS, _matches, certificate_names
from tests.support.certs import require_openssl


def der(path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_names_are_the_san_dns_names(tls_files):
    assert certificate_names(der(tls_files.shop.cert)) == ("shop.test",)
    assert certificate_names(der(tls_files.api.cert)) == ("api.test", "*.api.test")


def test_without_a_san_the_common_name_is_the_name(tmp_path):
    cert, key = tmp_path / "legacy.pem", tmp_path / "legacy.key"
    subprocess.run([require_openssl(), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/O=x/CN=Legacy.Test"],
                   check=True, capture_output=True, timeout=30)
    assert certificate_names(der(cert)) == ("legacy.test",)


@pytest.mark.parametrize("data", [b"", b"\x30", b"\x30\x03\x02\x01\x01", b"\x04\x00", b"\x30\x84\xff\xff\xff\xff"])
def test_what_is_not_a_certificate_raises_value_error(data):
    with pytest.raises(ValueError):
        certificate_names(data)


@pytest.mark.parametrize("pattern, name, matches", [
    ("shop.test", "shop.test", True),
    ("shop.test", "www.shop.test", False),
    ("*.api.test", "v2.api.test", True),
    ("*.api.test", "api.test", False),             # a wildcard covers one label, not none
    ("*.api.test", "a.b.api.test", False),         # nor two (RFC 6125 §6.4.3)
    ("*.api.test", ".api.test", False),
])
def test_wildcards_match_one_label(pattern, name, matches):
    assert _matches(pattern, name) is matches


def test_choose_prefers_an_exact_name_then_a_wildcard_then_the_first(tls_files):
    both = ListenerTLS(certificates=(CertificateFiles(str(tls_files.shop.cert), str(tls_files.shop.key)),
                                     CertificateFiles(str(tls_files.api.cert), str(tls_files.api.key))))
    tls = ServerTLS(both)
    shop, api = tls.choose("shop.test"), tls.choose("api.test")
    assert shop is not api
    assert tls.choose("x.api.test") is api and tls.choose("API.TEST.") is api
    assert tls.choose(None) is shop and tls.choose("unknown.test") is shop and tls.choose("a.b.api.test") is shop


def test_every_context_offers_http11_only_and_the_configured_version(tls_files):
    tls = ServerTLS(ListenerTLS(certificates=(CertificateFiles(str(tls_files.shop.cert), str(tls_files.shop.key)),),
                                min_version="1.3"))
    assert ALPN == ["http/1.1"]
    assert tls.context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert tls.choose(None).minimum_version == ssl.TLSVersion.TLSv1_3


def test_a_served_connections_tls_object_reads_and_writes_through_the_c_methods_and_counts_refusals(tls_files):
    """The event loop's TLS layer takes read, write and pending once per connection and calls
    them for every record: they are the TLS object's own methods, not ssl.py's wrappers."""
    from tests.support.certs import client_context

    tls = ServerTLS(ListenerTLS(certificates=(CertificateFiles(str(tls_files.shop.cert), str(tls_files.shop.key)),)))
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = tls.context.wrap_bio(to_server, to_client, server_side=True)
    inner = server._sslobj
    assert (server.read.__self__, server.write.__self__, server.pending.__self__) == (inner, inner, inner)
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context(tls_files.authority).wrap_bio(client_in, client_out, server_hostname="shop.test")
    for _ in range(10):                        # the handshake, a flight at a time
        for side in (client, server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        to_server.write(client_out.read())
        client_in.write(to_client.read())
    assert client.write(b"GET / HTTP/1.1\r\n\r\n") == 18
    to_server.write(client_out.read())
    buffer = bytearray(64)
    assert server.read(64, buffer) == 18 and bytes(buffer[:18]) == b"GET / HTTP/1.1\r\n\r\n"
    assert server.pending() == 0 and server.write(b"HTTP/1.1 200 OK\r\n\r\n") == 19
    client_in.write(to_client.read())
    assert client.read(64) == b"HTTP/1.1 200 OK\r\n\r\n" and tls.handshake_failures == 0
    plain = ssl.MemoryBIO()
    plain.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")            # not TLS at all
    with pytest.raises(ssl.SSLError):
        tls.context.wrap_bio(plain, ssl.MemoryBIO(), server_side=True).do_handshake()
    assert tls.handshake_failures == 1
