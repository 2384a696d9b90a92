"""CLI commands of the blue-green story: flip --wait, drill and schema-check, as subprocesses."""

from __future__ import annotations

import json

from tests.support.backend import set_failing
from tests.support.cli import TOKEN, assert_failed, cutover, url_of
from tests.support.paths import MIGRATIONS as FIXTURES
from tests.support.ports import free_port


async def test_flip_wait_passes_when_analysis_passes(make_stack):
    running = await make_stack(admin={"listen": "127.0.0.1:0", "token": TOKEN},
                               analysis={"window": "500ms", "interval": "50ms"})
    result = await cutover("flip", "--wait", "--admin", url_of(running), "--token", TOKEN)
    assert result.rc == 0, result
    assert result.out.startswith("flipped blue -> green")
    assert running.controller.analysis.state == "passed"


async def test_flip_wait_exits_1_when_analysis_rolls_back(make_stack, backends):
    running = await make_stack(admin={"listen": "127.0.0.1:0", "token": TOKEN},
                               analysis={"window": "3s", "interval": "50ms"})
    await running.proxy.health.stop()
    await set_failing(backends["green"], True)
    result = await cutover("flip", "--wait", "--json", "--admin", url_of(running), "--token", TOKEN)
    line = assert_failed(result, 1, "auto_rollback")
    assert "rolled back by post-flip analysis" in line
    assert json.loads(result.out)["analysis"]["state"] == "rolled_back"
    assert running.controller.state.live == "blue"


async def test_drill_command_reports_and_exits_0(make_stack):
    running = await make_stack(admin={"listen": "127.0.0.1:0", "token": TOKEN})
    result = await cutover("drill", "--settle", "0.3", "--objective-ms", "5000", "--json",
                           "--admin", url_of(running), "--token", TOKEN, timeout=30)
    assert result.rc == 0, result
    report = json.loads(result.out)
    assert report["failed_probes"] == 0 and [s["to"] for s in report["switches"]] == ["green", "blue"]
    text = await cutover("--admin", url_of(running), "drill", "--settle", "0.2", "--objective-ms", "5000",
                         env={"CUTOVER_TOKEN": TOKEN}, timeout=30)
    assert text.rc == 0 and "PASS" in text.out and "rollback" in text.out


async def test_drill_command_exits_1_on_failed_probes(make_stack, backends):
    running = await make_stack()
    await running.proxy.health.stop()
    await set_failing(backends["green"], True)
    result = await cutover("drill", "--settle", "0.2", "--admin", url_of(running), timeout=30)
    assert result.rc == 1 and "FAIL" in result.out and "failed probe: 500" in result.out


async def test_drill_command_exits_2_when_the_flip_is_refused(make_stack):
    running = await make_stack()
    await running.controller.lock_switch("freeze")
    result = await cutover("drill", "--settle", "0.1", "--admin", url_of(running), timeout=30)
    assert result.rc == 2 and "locked" in result.err and "Traceback" not in result.err


async def test_drill_command_names_an_unreachable_admin_api_in_one_line():
    admin = f"http://127.0.0.1:{free_port()}"
    result = await cutover("drill", "--settle", "0.1", "--admin", admin, timeout=30)
    line = assert_failed(result, 1, "connection_failed")
    assert admin in line and "drill" in line


async def test_schema_check_command_exit_codes():
    good = await cutover("schema-check", str(FIXTURES / "001_expand_add_column.sql"))
    assert good.rc == 0 and "no backward-incompatible change" in good.out
    bad = await cutover("schema-check", "--json", str(FIXTURES / "002_contract_drop_column.sql"))
    assert bad.rc == 1
    assert [f["rule"] for f in json.loads(bad.out)] == ["drop-column"]
    missing = await cutover("schema-check", str(FIXTURES / "nope.sql"))
    assert missing.rc == 2 and "nope.sql" in missing.err
