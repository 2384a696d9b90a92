"""`hold --for DURATION` names the hold's length; every older spelling keeps its meaning.

`--timeout` after `hold` was, and stays, the hold's length; before `hold` it is the request
timeout, and `--request-timeout` names the request timeout anywhere.
"""

from __future__ import annotations

import pytest

from admin.cli import SWITCH_TIMEOUT, WAIT_TIMEOUT, main, parse, request_timeout
from admin.client import DEFAULT_TIMEOUT


@pytest.mark.parametrize("args, hold, timeout", [
    (["hold", "--for", "5s"], 5.0, DEFAULT_TIMEOUT),
    (["hold", "--for", "250ms"], 0.25, DEFAULT_TIMEOUT),
    (["hold", "--for", "1m"], 60.0, DEFAULT_TIMEOUT),
    (["hold", "--for", "1m30s"], 90.0, DEFAULT_TIMEOUT),
    (["hold", "--for", "7"], 7.0, DEFAULT_TIMEOUT),
    (["hold", "--timeout", "5"], 5.0, DEFAULT_TIMEOUT),          # the old spelling: the hold's length
    (["hold", "--timeout", "5s"], 5.0, DEFAULT_TIMEOUT),         # ... now taking durations too
    (["--timeout", "4", "hold", "--timeout", "2"], 2.0, 4.0),    # before hold: the request timeout
    (["--timeout", "4", "hold"], None, 4.0),
    (["hold"], None, DEFAULT_TIMEOUT),                           # the server's hold.max_wait
    (["hold", "--for", "2s", "--request-timeout", "9"], 2.0, 9.0),
    (["--request-timeout", "9", "hold", "--for", "2s"], 2.0, 9.0),
    (["--timeout", "3", "status", "--request-timeout", "4"], None, 4.0),   # one option, two spellings
    (["status", "--request-timeout", "4", "--timeout", "5"], None, 5.0),   # the last one wins
])
def test_hold_length_and_request_timeout_spellings(args, hold, timeout):
    parsed = parse(args)
    assert getattr(parsed, "hold_for", None) == hold
    assert request_timeout(parsed) == timeout


@pytest.mark.parametrize("args, message", [
    (["hold", "--for", "soon"], 'cutover: hold: argument --for: expected a duration like "250ms", "2s", "1m"'),
    (["hold", "--for", "0"], "cutover: hold: argument --for: must be above 0"),
    (["hold", "--for", "2d"], 'cutover: hold: argument --for: expected a duration like "250ms", "2s", "1m"'),
    (["hold", "--for", "5s", "--timeout", "5"],
     "cutover: hold: give the hold's length once: --for (or its old spelling --timeout after hold)"),
])
def test_bad_hold_lengths_are_usage_errors(args, message, capsys):
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_the_default_request_timeout_is_long_enough_for_the_call():
    assert request_timeout(parse(["flip", "--wait"])) == request_timeout(parse(["promote", "--wait"])) == WAIT_TIMEOUT
    assert WAIT_TIMEOUT >= 3600                   # the gates plus the post-flip analysis window
    for command in (["flip"], ["rollback"], ["canary", "5"], ["promote"]):
        assert request_timeout(parse(command)) == SWITCH_TIMEOUT       # the gates: a schema command may take 120 s
    assert SWITCH_TIMEOUT > 120
    for command in (["status"], ["hold", "--for", "10m"], ["abort"], ["history"]):
        assert request_timeout(parse(command)) == DEFAULT_TIMEOUT      # answered at once
    # an explicit request timeout is the caller's own choice
    assert request_timeout(parse(["flip", "--wait", "--timeout", "20"])) == 20
    assert request_timeout(parse(["hold", "--for", "10m", "--request-timeout", "2s"])) == 2
