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


async def test_gates_reach_the_servers_of_a_tls_environment_over_https(make_stack, backends, tls_files, session):
    import ssl

    from aiohttp import web

    async def fingerprint(request):
        return web.json_response({"version": "v1"})

    async def index(request):
        return web.Response(text="green over tls\n")

    app = web.Application()
    app.router.add_get("/__fingerprint", fingerprint)
    app.router.add_get("/healthz", index)
    app.router.add_get("/", index)
    blue_app = web.Application()
    blue_app.router.add_get("/__fingerprint", fingerprint)
    blue_app.router.add_get("/healthz", index)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_files.localhost.cert, tls_files.localhost.key)
    runners = []
    try:
        for application, tls in ((app, ctx), (blue_app, None)):
            runner = web.AppRunner(application, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
            runners.append(runner)
        green, blue = (f"127.0.0.1:{r.addresses[0][1]}" for r in runners)
        # No preview listener and auth off: the smoke probe goes to green's server directly.
        running = await make_stack(environments={"blue": {"servers": [blue]},
                                                 "green": {"servers": [green],
                                                           "tls": {"ca": str(tls_files.authority.cert)}}},
                                   gates={"drift": {}, "smoke": [{"path": "/", "expect_body_contains": "over tls"}]},
                                   health_check=QUIET_HEALTH)
        async with session.post(f"http://127.0.0.1:{running.admin_port}/v1/flip", json={"to": "green"}) as resp:
            body = await resp.json()
        assert resp.status == 200, body
        assert body["live"] == "green"
        async with session.get(f"http://127.0.0.1:{running.admin_port}/v1/history") as resp:
            flip = [e for e in (await resp.json())["events"] if e["action"] == "flip"][-1]
        assert [(g["gate"], g["passed"]) for g in flip["gates"]] == [("health", True), ("drift", True), ("smoke", True)]
    finally:
        for runner in runners:
            await runner.cleanup()
