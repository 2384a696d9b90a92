"""Usage errors exit 1 with one line on stderr (SPEC §2 keeps 2 for refusals); --help and --version exit 0."""

from __future__ import annotations

import pytest

from admin.cli import main
from test_cli import cutover


@pytest.mark.parametrize("args, message", [
    (["bogus"], "cutover: argument COMMAND: invalid choice: 'bogus'"),
    ([], "cutover: the following arguments are required: COMMAND"),
    (["flip", "--bogus"], "cutover: flip: unrecognized arguments: --bogus"),
    (["status", "extra"], "cutover: status: unrecognized arguments: extra"),
    (["canary"], "cutover: canary: the following arguments are required: N"),
    (["canary", "ten"], "cutover: canary: argument N: not an integer: 'ten'"),
    (["canary", "150"], "cutover: canary: argument N: must be from 0 to 100, got 150"),
    (["--timeout", "0", "status"], "cutover: argument --timeout: must be above 0, got '0'"),
    (["status", "--timeout", "0"],
     "cutover: status: argument --timeout: must be above 0, got '0'"),
    (["status", "--request-timeout", "soon"],
     'cutover: status: argument --request-timeout: expected a duration like "250ms", "2s", "1m", got "soon"'),
    (["history", "--limit", "0"], "cutover: history: argument --limit: must be at least 1, got 0"),
    (["check-config"], "cutover: check-config: the following arguments are required: file"),
    (["schema-check"], "cutover: schema-check: the following arguments are required: FILE"),
    (["flip", "--if-generation", "x"], "cutover: flip: argument --if-generation: invalid int value: 'x'"),
    (["--json", "demo"], "cutover: --json applies to the admin commands, not to demo"),
])
def test_usage_error_exits_1_with_one_line(args, message, capsys):
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(message), err
    assert "usage:" not in err and "Traceback" not in err


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
