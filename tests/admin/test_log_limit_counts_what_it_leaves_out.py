"""admin/loglimit.py's LogLimit: a burst of log lines, then one line counting what was left out.

Malformed requests to the admin API log through it, so a flood of them leaves a bounded number
of lines (tests/e2e/test_admin_hostile_input.py).
"""

from __future__ import annotations

import logging

from admin.loglimit import LogLimit


def test_log_limit_writes_a_burst_then_counts_the_rest_in_one_line(caplog):
    caplog.set_level(logging.INFO)
    now = [100.0]
    limit = LogLimit(logging.getLogger("cutover.test"), "test lines", burst=3, window=60.0, clock=lambda: now[0])
    for i in range(10):
        limit.log(logging.WARNING, "line %d", i)
    assert [r.getMessage() for r in caplog.records] == ["line 0", "line 1", "line 2"]
    now[0] += 60.0
    limit.log(logging.WARNING, "line %d", 10)
    assert [r.getMessage() for r in caplog.records][3:] == [
        "7 more lines about test lines left out (at most 3 per 60s)", "line 10"]
