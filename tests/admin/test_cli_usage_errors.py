"""Usage errors exit 1 with one line on stderr (SPEC §2 keeps 2 for refusals), and the commands parse as before.

That the console script does the same, and that --help and --version exit 0, is tests/e2e/test_cli.py.
"""

from __future__ import annotations

import pytest

from admin.cli import build_parser, main


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


# ------------------------------------------- the same, with the message's --help pointer

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
