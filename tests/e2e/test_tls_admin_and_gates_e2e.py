"""End-to-end tests of admin.tls (SPEC §12) with the real CLI, and of the gates and analysis
probing cutover's own TLS listeners: a stack (proxy + controller + admin API) with certificates
made at test time.

The CLI talks https when the admin URL says so and verifies the certificate against --ca FILE
or CUTOVER_CA (as curl --cacert), else the system's store; a certificate it does not trust is
a one-line error that says how to give the CA.
"""

from __future__ import annotations

from tests.support.cli import cutover
from tests.support.stack import QUIET_HEALTH


def admin_tls(tls_files) -> dict:
    return {"listen": "127.0.0.1:0", "auth": "none", "tls": tls_files.localhost.config()}


async def test_the_cli_talks_https_to_a_tls_admin_listener(make_stack, tls_files):
    running = await make_stack(admin=admin_tls(tls_files), health_check=QUIET_HEALTH)
    url = f"https://localhost:{running.admin_port}"
    ca = str(tls_files.authority.cert)
    status = await cutover("status", "--json", "--admin", url, "--ca", ca)
    assert status.rc == 0, status.err
    assert status.json()["live"] == "blue"
    from_env = await cutover("status", "--admin", url, env={"CUTOVER_CA": ca})
    assert from_env.rc == 0, from_env.err
    untrusted = await cutover("status", "--admin", url)
    assert untrusted.rc == 1
    assert "not trust" in untrusted.err and "--ca FILE or CUTOVER_CA" in untrusted.err
    assert untrusted.err.count("\n") == 1
    plain = await cutover("status", "--admin", f"http://localhost:{running.admin_port}")
    assert plain.rc == 1


async def test_a_ca_file_that_is_not_there_is_a_clear_error(make_stack, tls_files, tmp_path):
    running = await make_stack(admin=admin_tls(tls_files), health_check=QUIET_HEALTH)
    result = await cutover("status", "--admin", f"https://localhost:{running.admin_port}",
                           "--ca", str(tmp_path / "nowhere.pem"))
    assert result.rc == 1
    assert "--ca" in result.err and "nowhere.pem" in result.err and "(bad_ca)" in result.err


async def test_a_flip_gated_by_smoke_probes_and_analysed_through_tls_listeners(make_stack, tls_files):
    running = await make_stack(admin=admin_tls(tls_files), tls=tls_files.shop.config(),
                               preview_listen="127.0.0.1:0", health_check=QUIET_HEALTH,
                               gates={"smoke": [{"path": "/", "expect_body_contains": "green"}]},
                               analysis={"window": "300ms", "interval": "100ms"})
    flipped = await cutover("flip", "green", "--wait", "--json", "--admin", f"https://localhost:{running.admin_port}",
                            "--ca", str(tls_files.authority.cert))
    assert flipped.rc == 0, flipped.err
    doc = flipped.json()
    assert doc["change"]["to"] == "green"
    assert doc["analysis"]["state"] == "passed", doc["analysis"]
