"""End-to-end tests of the admin commands: the real CLI as a subprocess against a real stack.

Each test starts the proxy, controller and admin API in-process (make_stack)
and runs ``python -m admin.cli`` with asyncio.create_subprocess_exec, so the
event loop keeps serving the admin API while the CLI waits for it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import proxy
import pytest

from admin.client import AdminClient, AdminError
from tests.support.cli import TOKEN, Result, assert_failed, cutover, url_of
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.wait import eventually


@pytest.fixture
async def stack(make_stack):
    return await make_stack(admin={"listen": "127.0.0.1:0", "token": TOKEN})


@pytest.fixture
def cli(stack):
    """cli(*args): cutover against ``stack`` with --admin and --token after the subcommand."""
    async def run(*args: str, **kwargs) -> Result:
        return await cutover(*args, "--admin", url_of(stack), "--token", TOKEN, **kwargs)
    return run


# ------------------------------------------------------------------ reading

async def test_status_prints_route_and_a_line_per_environment_and_server(stack, cli):
    result = await cli("status")
    assert result.rc == 0 and result.err == ""
    lines = result.out.splitlines()
    assert "live:        blue" in lines
    assert "previous:    -" in lines
    assert "generation:  1" in lines
    assert "held:        no" in lines and "locked:      no" in lines
    assert "weights:     blue 100%, green 0%" in lines
    for name, env in stack.proxy.router.environments.items():
        role = "live" if name == "blue" else "idle"
        assert any(line.split()[:3] == [name, role, "healthy"] for line in lines), result.out
        for server in env.servers:
            assert any(line.split()[:2] == [server.address, "healthy"] for line in lines), result.out


async def test_status_json_is_the_api_document(stack, cli):
    result = await cli("status", "--json")
    assert result.rc == 0
    assert result.json() == stack.controller.status()
    assert result.out.startswith("{\n  ")   # pretty, one document


async def test_history_lines_and_limit_and_json(stack, cli):
    await stack.controller.flip(reason="release 42")
    await stack.controller.lock_switch("freeze")
    # blue's (empty) drain lands in the flip's history entry
    await eventually(lambda: "drained" in stack.controller.history()["events"][0], timeout=5)
    result = await cli("history")
    assert result.rc == 0
    lines = result.out.splitlines()
    assert len(lines) == 2
    assert "  flip  " in lines[0] and "blue -> green" in lines[0] and "generation 2" in lines[0]
    assert "reason: release 42" in lines[0] and "drained 0, forced_closed 0, dropped 0" in lines[0]
    assert "lock" in lines[1] and "reason: freeze" in lines[1]

    limited = await cli("history", "--limit", "1")
    assert limited.out.splitlines() == [lines[1]]

    as_json = await cli("history", "--json")
    assert as_json.json() == stack.controller.history()


async def test_history_when_empty(cli):
    result = await cli("history")
    assert (result.rc, result.out) == (0, "no events\n")


# ---------------------------------------------------------------- switching

async def test_flip_switches_live_and_status_shows_it(stack, cli):
    result = await cli("flip", "--reason", "release 42")
    assert (result.rc, result.out, result.err) == (0, "flipped blue -> green (generation 2)\n", "")
    assert stack.proxy.router.route.live == "green"
    assert stack.controller.history()["events"][-1]["reason"] == "release 42"

    status = await cli("status")
    assert "live:        green" in status.out and "previous:    blue" in status.out

    again = await cli("flip", "green")
    assert (again.rc, again.out) == (0, "already live: green (generation 2, nothing changed)\n")


async def test_flip_json_answers_the_new_status(stack, cli):
    result = await cli("flip", "green", "--json")
    doc = result.json()
    assert result.rc == 0 and doc["changed"] is True
    assert (doc["live"], doc["previous"], doc["generation"]) == ("green", "blue", 2)
    assert set(stack.controller.status()) <= set(doc)


async def test_flip_if_generation_matching_switches(stack, cli):
    result = await cli("flip", "--if-generation", "1")
    assert result.rc == 0 and stack.proxy.router.route.live == "green"


async def test_rollback_returns_to_previous(stack, cli):
    await stack.controller.flip()
    result = await cli("rollback", "--reason", "errors up")
    assert (result.rc, result.out) == (0, "rolled back green -> blue (generation 3)\n")
    assert stack.proxy.router.route.live == "blue"
    assert stack.controller.history()["events"][-1]["action"] == "rollback"


async def test_hold_then_resume(stack, cli):
    result = await cli("hold", "--timeout", "30", "--reason", "db migration")
    assert result.rc == 0 and result.out.startswith("holding new requests until resume or ")
    assert stack.proxy.router.held
    assert stack.controller.history()["events"][-1]["timeout"] == 30

    status = await cli("status")
    assert "held:        yes, 0 requests waiting, until " in status.out

    result = await cli("resume")
    assert (result.rc, result.out) == (0, "resumed: released 0 held requests\n")
    assert not stack.proxy.router.held


async def test_lock_refuses_flip_with_exit_2_until_unlock(stack, cli):
    result = await cli("lock", "--reason", "freeze")
    assert result.rc == 0 and result.out.startswith("switching locked (freeze)")
    assert "locked:      yes (freeze)" in (await cli("status")).out

    refused = await cli("flip")
    line = assert_failed(refused, 2, "locked")
    assert line == "cutover: switching is locked (freeze); flip refused until unlock (locked)"
    assert refused.out == ""
    assert stack.proxy.router.route.live == "blue"

    result = await cli("unlock")
    assert (result.rc, result.out) == (0, "switching unlocked\n")
    assert (await cli("flip")).rc == 0
    assert stack.proxy.router.route.live == "green"


async def test_canary_then_promote(stack, cli):
    result = await cli("canary", "10", "--reason", "try v2")
    assert (result.rc, result.out) == (0, "canary green at 10%, live blue at 90% (generation 2)\n")
    assert stack.proxy.router.route.weights == {"blue": 90, "green": 10}

    same = await cli("canary", "10")
    assert same.out == "canary already at 10% (generation 2, nothing changed)\n"

    result = await cli("promote")
    assert (result.rc, result.out) == (0, "promoted blue -> green (generation 3)\n")
    assert stack.proxy.router.route.live == "green"
    assert stack.proxy.router.route.weights == {"blue": 0, "green": 100}


async def test_canary_then_abort(stack, cli):
    assert (await cli("canary", "25")).rc == 0
    result = await cli("abort")
    assert (result.rc, result.out) == (0, "canary aborted: all traffic to blue (generation 3)\n")
    assert stack.proxy.router.route.weights == {"blue": 100, "green": 0}


async def test_promote_without_canary_exits_2_and_abort_is_a_no_op(cli):
    assert_failed(await cli("promote"), 2, "no_canary")
    assert (await cli("abort")).rc == 0      # a cleanup step: nothing to abort is not a failure


# ---------------------------------------------------------- where options go

@pytest.mark.parametrize("position", ["before", "after", "mixed"])
async def test_options_before_or_after_the_subcommand(stack, position):
    url_and_json = ["--admin", url_of(stack), "--json"]
    token_and_timeout = ["--token", TOKEN, "--timeout", "5"]
    before, after = {"before": (url_and_json + token_and_timeout, []),
                     "after": ([], url_and_json + token_and_timeout),
                     "mixed": (url_and_json, token_and_timeout)}[position]
    result = await cutover(*before, "flip", "green", "--reason", "r", *after)
    assert result.rc == 0, result
    assert result.json()["live"] == "green"


async def test_option_after_the_subcommand_wins(stack):
    result = await cutover("--token", "wrong", "--admin", f"http://127.0.0.1:{free_port()}",
                           "status", "--token", TOKEN, "--admin", url_of(stack))
    assert result.rc == 0, result


async def test_request_timeout_goes_before_hold(stack, cli):
    result = await cli("--timeout", "5", "hold", "--timeout", "2")
    assert result.rc == 0, result
    assert stack.controller.history()["events"][-1]["timeout"] == 2


async def test_env_vars_give_url_and_token(stack):
    env = {"CUTOVER_ADMIN_URL": url_of(stack), "CUTOVER_TOKEN": TOKEN}
    result = await cutover("flip", env=env)
    assert result.rc == 0, result
    assert stack.proxy.router.route.live == "green"

    wrong_env_token = await cutover("status", "--token", TOKEN, env={**env, "CUTOVER_TOKEN": "nope"})
    assert wrong_env_token.rc == 0   # the option beats the variable


async def test_default_url_without_auth(make_stack):
    """Without --admin or CUTOVER_ADMIN_URL the CLI calls 127.0.0.1:9901."""
    try:
        running = await make_stack(admin={"listen": "127.0.0.1:9901", "auth": "none"})
    except OSError:
        pytest.skip("port 9901 is taken on this machine")
    result = await cutover("status", "--json")
    assert result.rc == 0 and result.json()["live"] == "blue"
    assert running.admin_port == 9901


# ------------------------------------------------------------ refusals: 2

async def test_failed_gate_exits_2_naming_the_gate(stack, cli):
    await stack.proxy.health.stop()
    green = stack.proxy.router.environments["green"].servers[0]
    green.set_healthy(False)
    result = await cli("flip")
    line = assert_failed(result, 2, "gate_failed")
    assert "health" in line and green.address in line
    assert stack.proxy.router.route.live == "blue"

    forced = await cli("flip", "--force")
    assert (forced.rc, forced.out) == (0, "flipped blue -> green (generation 2, forced)\n")


async def test_failed_gate_json_prints_the_error_document(stack, cli):
    await stack.proxy.health.stop()
    stack.proxy.router.environments["green"].servers[0].set_healthy(False)
    result = await cli("flip", "--json")
    assert_failed(result, 2, "gate_failed")
    doc = result.json()
    assert doc["code"] == "gate_failed"
    assert [g["gate"] for g in doc["gates"] if not g["passed"]] == ["health"]


async def test_generation_mismatch_exits_2(stack, cli):
    line = assert_failed(await cli("flip", "--if-generation", "7"), 2, "generation_mismatch")
    assert "generation is 1, not 7" in line
    assert_failed(await cli("rollback", "--if-generation", "7"), 2, "generation_mismatch")
    assert stack.proxy.router.route.generation == 1


async def test_rollback_without_previous_exits_2(cli):
    assert_failed(await cli("rollback"), 2, "no_previous")


# --------------------------------------------------------------- failures: 1

async def test_wrong_or_missing_token_exits_1(stack):
    url = url_of(stack)
    wrong, missing = await asyncio.gather(cutover("status", "--admin", url, "--token", "nope"),
                                          cutover("status", "--admin", url))
    assert assert_failed(wrong, 1, "unauthorized") == "cutover: missing or wrong bearer token (unauthorized)"
    assert "CUTOVER_TOKEN" in assert_failed(missing, 1, "unauthorized")


async def test_connection_refused_exits_1_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    line = assert_failed(await cutover("flip", "--admin", url), 1, "connection_failed")
    assert f"{url}/v1/flip" in line and "refused" in line


async def test_unknown_environment_exits_1(stack, cli):
    line = assert_failed(await cli("flip", "purple"), 1, "unknown_environment")
    assert "purple" in line
    assert stack.proxy.router.route.live == "blue"


async def test_silent_server_times_out_with_exit_1():
    async def silent(reader, writer):
        await reader.read()   # never answers; returns when the client hangs up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await cutover("status", "--admin", f"127.0.0.1:{port}", "--timeout", "0.5")
    line = assert_failed(result, 1, "timeout")
    assert f"http://127.0.0.1:{port}/v1/status" in line and "0.5s" in line


async def test_non_json_answer_exits_1():
    async def html(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: 5\r\n"
                     b"connection: close\r\n\r\n<b/>\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(html, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await cutover("status", "--admin", f"http://127.0.0.1:{port}")
    assert "answered HTTP 502" in assert_failed(result, 1, "http_502")


# ------------------------------------------------------------------ client

async def test_client_raises_admin_error_with_status_and_code(stack):
    url = url_of(stack)
    async with AdminClient(url, TOKEN, timeout=5) as client:
        assert (await client.status())["live"] == "blue"
        await client.lock("freeze")
        with pytest.raises(AdminError) as refused:
            await client.flip()
        assert (refused.value.status, refused.value.code, refused.value.refused) == (409, "locked", True)
        assert refused.value.body["code"] == "locked"
        assert (await client.healthz())["ok"] is True
    async with AdminClient(url, "nope") as client:
        with pytest.raises(AdminError) as unauthorized:
            await client.history()
        assert (unauthorized.value.status, unauthorized.value.refused) == (401, False)


# ------------------------------------------------------------ the console script

async def test_usage_error_from_the_console_exits_1_with_one_line():
    result = await cutover("canary", "150")
    assert (result.rc, result.out) == (1, "")
    assert result.err == "cutover: canary: argument N: must be from 0 to 100, got 150 " \
                         "(see cutover canary --help)\n"


async def test_help_still_exits_0():
    top, sub = await cutover("--help"), await cutover("flip", "--help")
    assert (top.rc, top.err) == (0, "") and top.out.startswith("usage: cutover")
    assert (sub.rc, sub.err) == (0, "") and sub.out.startswith("usage: cutover flip")


async def test_dash_dash_version_works_like_the_version_command():
    option, command = await cutover("--version"), await cutover("version")
    assert (option.rc, option.err) == (0, "")
    assert option.out == command.out and option.out.startswith("cutover ")
    assert "data plane:" in option.out


def test_cutover_version_names_the_build():
    out = subprocess.run([sys.executable, "-m", "admin.cli", "version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("cutover ")
    assert f"(data plane: {proxy.build()})" in out.stdout


# ------------------------------------------------------------ hold --for

async def test_hold_for_a_duration_end_to_end(make_stack):
    running = await make_stack(admin={"listen": "127.0.0.1:0", "token": TOKEN})
    result = await cutover("hold", "--for", "90s", "--reason", "db migration",
                           "--admin", url_of(running), "--token", TOKEN)
    assert result.rc == 0, result
    assert result.out.startswith("holding new requests until resume or ")
    event = running.controller.history()["events"][-1]
    assert (event["action"], event["timeout"]) == ("hold", 90)
    assert running.proxy.router.held
