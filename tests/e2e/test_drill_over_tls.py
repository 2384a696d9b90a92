"""`cutover drill` against a router whose listener and admin API speak TLS (SPEC §12), with
certificates made at test time and the real CLI.

The admin calls are verified against --ca (CUTOVER_CA) as every admin command's are; the
probes go over https when the status says ``listen_tls``, verified against the same CA, for
the address the status names or the name --server-name gives. A certificate the probes do not
trust stops the drill before any switch, in one line, exit 1 like any connection failure.
"""

from __future__ import annotations

import json

import aiohttp

from tests.support.certs import client_context
from tests.support.cli import TOKEN, assert_failed, cutover, url_of
from tests.support.ports import free_port
from tests.support.processes import start_serve, stop_serve
from tests.support.stack import QUIET_HEALTH
from tests.support.wait import eventually

DRILL = ("drill", "--settle", "0.3", "--objective-ms", "5000")


async def test_drill_passes_against_cutover_serve_with_tls_on_listen_and_the_admin_api(tmp_path, backends,
                                                                                        tls_files):
    port, admin = free_port(), free_port()
    config = tmp_path / "cutover.yaml"
    config.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'admin: {{listen: "127.0.0.1:{admin}", token: "{TOKEN}", '
        f'tls: {{cert: "{tls_files.localhost.cert}", key: "{tls_files.localhost.key}"}}}}\n'
        "environments:\n"
        f'  blue: {{servers: ["{backends["blue"].address}"]}}\n'
        f'  green: {{servers: ["{backends["green"].address}"]}}\n'
        f'tls: {{cert: "{tls_files.shop.cert}", key: "{tls_files.shop.key}"}}\n'
        "state_file: state.json\ndrain_timeout: 2s\n")
    proc, log = await start_serve(tmp_path, config)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_context(tls_files.authority)),
                                         headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            async def serving():
                try:
                    async with session.get(f"https://127.0.0.1:{admin}/v1/status") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False
            await eventually(serving, timeout=20, interval=0.05, what="cutover serve answering over TLS")
            url = f"https://localhost:{admin}"
            result = await cutover(*DRILL, "--json", "--admin", url, "--ca", str(tls_files.authority.cert),
                                   env={"CUTOVER_TOKEN": TOKEN}, timeout=60)
            assert result.rc == 0, result
            report = json.loads(result.out)
            assert report["router"] == f"https://127.0.0.1:{port}/" and report["admin"] == url
            assert report["failed_probes"] == 0 and report["probes"] > 0 and report["passed"] is True
            assert [s["to"] for s in report["switches"]] == ["green", "blue"]
            assert all(s["recovery_ms"] is not None for s in report["switches"]), report["switches"]
            async with session.get(f"https://127.0.0.1:{admin}/metrics") as resp:
                metrics = await resp.text()
            # Every probe spoke TLS: the listener refused no handshake.
            assert "\ncutover_tls_handshake_failures_total 0.0\n" in metrics
            text = await cutover(*DRILL, "--admin", url, env={"CUTOVER_TOKEN": TOKEN,
                                                             "CUTOVER_CA": str(tls_files.authority.cert)}, timeout=60)
            assert text.rc == 0, text
            assert f"drill against https://127.0.0.1:{port}/" in text.out and "PASS" in text.out
    finally:
        await stop_serve(proc)
    assert "Traceback" not in log.read_text()


async def test_drill_without_the_ca_of_a_tls_admin_api_fails_in_one_line(make_stack, tls_files):
    running = await make_stack(admin={"listen": "127.0.0.1:0", "auth": "none", "tls": tls_files.localhost.config()},
                               tls=tls_files.shop.config(), health_check=QUIET_HEALTH)
    result = await cutover(*DRILL, "--admin", f"https://localhost:{running.admin_port}", timeout=30)
    line = assert_failed(result, 1, "connection_failed")
    assert "not trust" in line and "--ca FILE or CUTOVER_CA" in line
    wrong = await cutover(*DRILL, "--admin", f"https://localhost:{running.admin_port}",
                          "--ca", str(tls_files.other.cert), timeout=30)
    assert_failed(wrong, 1, "connection_failed")
    assert running.controller.state.generation == 1


async def test_drill_names_a_listener_certificate_it_does_not_trust_and_switches_nothing(make_stack, tls_files):
    # The admin API is plain; the listener's certificate is signed by an authority --ca does not name.
    running = await make_stack(tls=tls_files.shop.config(), health_check=QUIET_HEALTH)
    result = await cutover(*DRILL, "--admin", url_of(running), "--ca", str(tls_files.other.cert), timeout=30)
    line = assert_failed(result, 1, "connection_failed")
    assert f"the listener at https://127.0.0.1:{running.proxy.port}/" in line
    assert "do not trust" in line and "--ca FILE or CUTOVER_CA" in line and "nothing was switched" in line
    assert running.controller.state.generation == 1


async def test_drill_with_a_ca_file_that_is_not_there_is_a_clear_error(make_stack, tmp_path):
    running = await make_stack(health_check=QUIET_HEALTH)
    result = await cutover(*DRILL, "--admin", url_of(running), "--ca", str(tmp_path / "nowhere.pem"), timeout=30)
    line = assert_failed(result, 1, "bad_ca")
    assert "--ca" in line and "nowhere.pem" in line
    assert running.controller.state.generation == 1


async def test_drill_checks_the_listener_certificate_for_the_name_server_name_gives(make_stack, tls_files):
    # The certificate names shop.test only, not the 127.0.0.1 the status names.
    running = await make_stack(tls=tls_files.public.config(), health_check=QUIET_HEALTH)
    ca = {"CUTOVER_CA": str(tls_files.authority.cert)}
    unnamed = await cutover(*DRILL, "--admin", url_of(running), env=ca, timeout=30)
    line = assert_failed(unnamed, 1, "connection_failed")
    assert "127.0.0.1" in line and "--server-name NAME" in line
    other = await cutover(*DRILL, "--server-name", "api.test", "--admin", url_of(running), env=ca, timeout=30)
    assert "api.test" in assert_failed(other, 1, "connection_failed")
    assert running.controller.state.generation == 1
    named = await cutover(*DRILL, "--server-name", "shop.test", "--json", "--admin", url_of(running), env=ca,
                          timeout=30)
    assert named.rc == 0, named
    report = json.loads(named.out)
    assert report["server_name"] == "shop.test" and report["failed_probes"] == 0 and report["passed"] is True
    assert running.controller.state.generation == 3


async def test_drill_of_a_plain_listener_ignores_the_ca_and_reports_no_server_name(make_stack, tls_files):
    running = await make_stack(health_check=QUIET_HEALTH)
    result = await cutover(*DRILL, "--json", "--server-name", "shop.test", "--admin", url_of(running),
                           "--ca", str(tls_files.authority.cert), timeout=30)
    assert result.rc == 0, result
    report = json.loads(result.out)
    assert report["router"] == f"http://127.0.0.1:{running.proxy.port}/" and report["server_name"] is None
    assert report["failed_probes"] == 0
