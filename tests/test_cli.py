"""End-to-end tests of the admin commands: the real CLI as a subprocess against a real stack.

Each test starts the proxy, controller and admin API in-process (make_stack)
and runs ``python -m admin.cli`` with asyncio.create_subprocess_exec, so the
event loop keeps serving the admin API while the CLI waits for it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from admin.cli import build_parser, main
from admin.client import AdminClient, AdminError

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "t0ken"


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


async def cutover(*args: str, env: dict | None = None, timeout: float = 20.0) -> Result:
    """cutover: run ``python -m admin.cli *args`` with no CUTOVER_* variables but those in ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CUTOVER_")}
    environ.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "admin.cli", *args, cwd=ROOT, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return Result(proc.returncode, out.decode(), err.decode())


def assert_failed(result: Result, rc: int, code: str) -> str:
    """assert_failed: exit ``rc``, exactly one stderr line ending in ``(code)``, no traceback."""
    assert result.rc == rc, result
    assert "Traceback" not in result.err
    assert result.err.count("\n") == 1 and result.err.endswith("\n"), result.err
    line = result.err.rstrip("\n")
    assert line.startswith("cutover: ") and line.endswith(f"({code})"), line
    return line


def url_of(running) -> str:
    return f"http://127.0.0.1:{running.admin_port}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    async with asyncio.timeout(5):   # blue's (empty) drain lands in the flip's history entry
        while "drained" not in stack.controller.history()["events"][0]:
            await asyncio.sleep(0.01)
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


@pytest.mark.parametrize("args, message", [
    (["canary"], "cutover: canary: the following arguments are required: N (see cutover canary --help)"),
    (["canary", "ten"], "cutover: canary: argument N: not an integer: 'ten' (see cutover canary --help)"),
    (["canary", "101"], "cutover: canary: argument N: must be from 0 to 100, got 101 (see cutover canary --help)"),
    (["history", "--limit", "0"],
     "cutover: history: argument --limit: must be at least 1, got 0 (see cutover history --help)"),
    (["flip", "--bogus"], "cutover: flip: unrecognized arguments: --bogus (see cutover flip --help)"),
])
def test_usage_errors_exit_1_with_one_error_line(args, message, capsys):
    # SPEC §2: exit 2 is for refusals (gate, lock, conflict); a usage error is any other failure.
    assert main(args) == 1
    assert capsys.readouterr().err.splitlines() == [message]


# ------------------------------------------------------ the other commands

def test_serve_check_config_and_demo_parse_as_before():
    parser = build_parser()
    args = parser.parse_args(["serve"])
    assert (args.command, args.config) == ("serve", "config/cutover.yaml")
    assert parser.parse_args(["check-config", "x.yaml"]).file == "x.yaml"
    args = parser.parse_args(["demo", "--json", "--duration", "2"])
    assert (args.json, args.keep_running, args.duration) == (True, False, 2.0)
    assert parser.parse_args(["demo"]).json is False


def test_admin_options_before_a_non_admin_command_are_a_usage_error(capsys):
    assert main(["--json", "demo"]) == 1
    assert "--json applies to the admin commands, not to demo" in capsys.readouterr().err


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
