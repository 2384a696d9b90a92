"""GET /v1/status says which listeners speak TLS (SPEC §7, §12): ``listen_tls``,
``preview_listen_tls`` (null without a preview listener) and ``admin_tls``; `cutover status`
shows each listener with TLS or plain HTTP. A stack with certificates made at test time, and
the real CLI."""

from __future__ import annotations

from tests.support.cli import cutover, url_of
from tests.support.stack import QUIET_HEALTH


async def test_status_says_listen_preview_and_admin_speak_tls(make_stack, tls_files):
    running = await make_stack(admin={"listen": "127.0.0.1:0", "auth": "none", "tls": tls_files.localhost.config()},
                               tls=tls_files.shop.config(), preview_listen="127.0.0.1:0", health_check=QUIET_HEALTH)
    target = ("--admin", f"https://localhost:{running.admin_port}", "--ca", str(tls_files.authority.cert))
    status = await cutover("status", "--json", *target)
    assert status.rc == 0, status.err
    doc = status.json()
    assert (doc["listen_tls"], doc["preview_listen_tls"], doc["admin_tls"]) == (True, True, True)
    text = await cutover("status", *target)
    assert text.rc == 0, text.err
    lines = text.out.splitlines()
    assert f"listen:      {doc['listen']}, TLS" in lines
    assert f"preview:     {doc['preview_listen']}, TLS" in lines
    assert "admin API:   TLS" in lines


async def test_status_says_plain_listeners_are_plain_and_no_preview_listener_is_null(make_stack):
    running = await make_stack(health_check=QUIET_HEALTH)
    status = await cutover("status", "--json", "--admin", url_of(running))
    assert status.rc == 0, status.err
    doc = status.json()
    assert (doc["listen_tls"], doc["preview_listen_tls"], doc["admin_tls"]) == (False, None, False)
    text = await cutover("status", "--admin", url_of(running))
    lines = text.out.splitlines()
    assert f"listen:      {doc['listen']}, plain HTTP" in lines
    assert "admin API:   plain HTTP" in lines
    assert not [line for line in lines if line.startswith("preview:")]
