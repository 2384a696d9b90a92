"""End-to-end tests of TLS on listen and preview_listen (SPEC §12, proxy/tls.py): a real proxy
with certificates made at test time, real test backends, and real TLS clients (the ssl module,
and curl when it is installed).

What is pinned: requests are served over TLS; SNI picks the certificate whose names match
(the first when none does or none is sent); ALPN offers http/1.1 only, and a client that
offers only h2 gets no protocol acknowledged and is served HTTP/1.1; X-Forwarded-Proto says
https; a plain-HTTP client on the TLS port is cut alone, counted, and logs no traceback;
Proxy.set_tls swaps certificates for new connections while an open one goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil

import pytest

from proxy import CertificateFiles, ListenerTLS
from proxy.tls import certificate_names
from tests.support.certs import client_context
from tests.support.rawhttp import read_response
from tests.support.stack import QUIET_HEALTH


async def tls_connect(port: int, ctx, server_name: str | None):
    """tls_connect: a TLS connection to 127.0.0.1:``port`` sending ``server_name`` as SNI (None: none)."""
    return await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=server_name or ""), 5)


async def get(reader, writer, path: str = "/", host: str = "shop.test"):
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return await asyncio.wait_for(read_response(reader), 5)


def served(writer) -> tuple[str, ...]:
    """served: the names of the certificate the server presented on this connection."""
    return certificate_names(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))


def listener_tls(*issued) -> dict:
    return {"certificates": [i.config() for i in issued]}


async def test_requests_are_served_over_tls_with_forwarded_proto_https(make_proxy, tls_files):
    proxy = await make_proxy(tls=tls_files.shop.config(), health_check=QUIET_HEALTH)
    reader, writer = await tls_connect(proxy.port, client_context(tls_files.authority), "shop.test")
    first = await get(reader, writer)
    assert (first.status, first.body) == (200, b"blue\n")
    seen = await get(reader, writer, "/headers")   # the same keep-alive connection
    headers = dict((k.lower(), v) for k, v in json.loads(seen.body)["headers"])
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-host"] == "shop.test"
    writer.close()


async def test_plain_listener_still_says_http(make_proxy):
    proxy = await make_proxy(health_check=QUIET_HEALTH)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    seen = await get(reader, writer, "/headers")
    assert dict((k.lower(), v) for k, v in json.loads(seen.body)["headers"])["x-forwarded-proto"] == "http"
    assert proxy.snapshot().tls_handshake_failures == 0
    writer.close()


async def test_sni_picks_the_certificate_that_names_the_server(make_proxy, tls_files):
    proxy = await make_proxy(tls=listener_tls(tls_files.shop, tls_files.api), health_check=QUIET_HEALTH)
    ctx = client_context(tls_files.authority)
    for server_name, names in (("shop.test", ("shop.test",)), ("api.test", ("api.test", "*.api.test")),
                               ("v2.api.test", ("api.test", "*.api.test")), ("SHOP.TEST", ("shop.test",))):
        reader, writer = await tls_connect(proxy.port, ctx, server_name)   # verified: the right certificate
        assert served(writer) == names, server_name
        assert (await get(reader, writer, host=server_name)).status == 200
        writer.close()
    unverified = client_context(None)
    for server_name in (None, "elsewhere.test", "deep.v2.api.test"):
        reader, writer = await tls_connect(proxy.port, unverified, server_name)
        assert served(writer) == ("shop.test",), server_name   # the first certificate
        writer.close()


async def test_alpn_offers_http11_only(make_proxy, tls_files):
    proxy = await make_proxy(tls=tls_files.shop.config(), health_check=QUIET_HEALTH)
    reader, writer = await tls_connect(proxy.port, client_context(tls_files.authority, ["h2", "http/1.1"]),
                                       "shop.test")
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    writer.close()
    # Only h2 offered: the handshake succeeds with no protocol acknowledged (RFC 7301 §3.2
    # leaves that to the server), and the connection speaks HTTP/1.1.
    reader, writer = await tls_connect(proxy.port, client_context(tls_files.authority, ["h2"]), "shop.test")
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
    assert (await get(reader, writer)).body == b"blue\n"
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")   # an h2 client's preface gets an HTTP/1.1 refusal
    refused = await asyncio.wait_for(read_response(reader), 5)
    assert refused.status in (400, 505)
    writer.close()


async def test_preview_listen_serves_tls_too(make_proxy, tls_files):
    proxy = await make_proxy(tls=tls_files.shop.config(), preview_listen="127.0.0.1:0", health_check=QUIET_HEALTH)
    reader, writer = await tls_connect(proxy.preview_port, client_context(tls_files.authority), "shop.test")
    assert (await get(reader, writer)).body == b"green\n"
    writer.close()


async def test_plain_http_on_the_tls_port_is_cut_alone_and_counted(make_proxy, tls_files, caplog):
    proxy = await make_proxy(tls=tls_files.shop.config(), health_check=QUIET_HEALTH)
    ctx = client_context(tls_files.authority)
    reader, writer = await tls_connect(proxy.port, ctx, "shop.test")   # open before, and after, the bad ones
    caplog.set_level(logging.DEBUG)
    for hello in (b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n", b"\x16\x03\x01\x00\x05hello"):
        plain_reader, plain_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        plain_writer.write(hello)
        got = await asyncio.wait_for(plain_reader.read(), 5)    # closed by the proxy, no HTTP answer
        assert not got.startswith(b"HTTP/")
        plain_writer.close()
    assert proxy.snapshot().tls_handshake_failures == 2
    assert (await get(reader, writer)).status == 200
    assert [r for r in caplog.records if r.exc_info] == []
    writer.close()


async def test_a_client_that_does_not_trust_the_certificate_fails_its_handshake(make_proxy, tls_files):
    proxy = await make_proxy(tls=tls_files.shop.config(), health_check=QUIET_HEALTH)
    with pytest.raises(OSError):   # ssl.SSLCertVerificationError
        await tls_connect(proxy.port, client_context(tls_files.other), "shop.test")
    reader, writer = await tls_connect(proxy.port, client_context(tls_files.authority), "shop.test")
    assert (await get(reader, writer)).status == 200
    writer.close()


async def test_min_version_13_refuses_a_tls12_client(make_proxy, tls_files):
    import ssl
    proxy = await make_proxy(tls={**tls_files.shop.config(), "min_version": "1.3"}, health_check=QUIET_HEALTH)
    old = client_context(tls_files.authority)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(OSError):
        await tls_connect(proxy.port, old, "shop.test")
    reader, writer = await tls_connect(proxy.port, client_context(tls_files.authority), "shop.test")
    assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
    writer.close()
    assert proxy.snapshot().tls_handshake_failures == 1


async def test_set_tls_swaps_certificates_for_new_connections_while_open_ones_go_on(make_proxy, tls_files):
    proxy = await make_proxy(tls=tls_files.shop.config(), health_check=QUIET_HEALTH)
    unverified = client_context(None)
    old_reader, old_writer = await tls_connect(proxy.port, unverified, None)
    assert served(old_writer) == ("shop.test",)
    assert (await get(old_reader, old_writer)).status == 200
    swapped = ListenerTLS(certificates=(CertificateFiles(str(tls_files.api.cert), str(tls_files.api.key)),))
    proxy.set_tls(swapped, proxy.settings.environments)
    new_reader, new_writer = await tls_connect(proxy.port, client_context(tls_files.authority), "api.test")
    assert served(new_writer) == ("api.test", "*.api.test")
    assert (await get(new_reader, new_writer)).body == b"blue\n"
    again = await get(old_reader, old_writer)   # the keep-alive connection made before the swap
    assert (again.status, again.body) == (200, b"blue\n")
    assert served(old_writer) == ("shop.test",)
    for w in (old_writer, new_writer):
        w.close()


async def test_set_tls_with_a_bad_file_changes_nothing(make_proxy, tls_files, tmp_path):
    from proxy import CertificateError
    proxy = await make_proxy(tls=tls_files.shop.config(), health_check=QUIET_HEALTH)
    bad = ListenerTLS(certificates=(CertificateFiles(str(tls_files.api.cert), str(tls_files.shop.key)),))
    with pytest.raises(CertificateError):
        proxy.set_tls(bad, proxy.settings.environments)
    with pytest.raises(ValueError, match="restart"):
        proxy.set_tls(None, proxy.settings.environments)
    reader, writer = await tls_connect(proxy.port, client_context(tls_files.authority), "shop.test")
    assert served(writer) == ("shop.test",)
    writer.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (apt-get install curl)")
async def test_curl_gets_an_answer_over_tls(make_proxy, tls_files):
    proxy = await make_proxy(tls=listener_tls(tls_files.api, tls_files.shop), health_check=QUIET_HEALTH)
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "5", "--cacert", str(tls_files.authority.cert),
        "--resolve", f"shop.test:{proxy.port}:127.0.0.1", "-w", "\n%{http_version}", f"https://shop.test:{proxy.port}/",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err
    assert out.decode() == "blue\n\n1.1"
