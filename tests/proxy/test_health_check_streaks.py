"""The health checker's streak rules without sockets: a server changes state only after
healthy_after (or unhealthy_after) consecutive results the other way; one result in between
starts the streak again."""

from __future__ import annotations

from proxy.backends import Environment, Server
from proxy.health import HealthChecker


def test_streak_rules_need_consecutive_results():
    env = Environment("blue")
    server = Server("127.0.0.1", 1, env)
    changes = []
    checker = HealthChecker([server], "/healthz", 1, 1, healthy_after=2, unhealthy_after=3,
                            set_status=lambda s, up, why: (changes.append(up), s.set_healthy(up)))
    for ok in (False, False, True, False, False):
        checker.report(server, ok, "")
    assert server.healthy and changes == []          # a success in between resets the streak
    checker.report(server, False, "")
    assert not server.healthy and changes == [False]
    checker.report(server, True, "")
    assert not server.healthy
    checker.report(server, True, "")
    assert server.healthy and changes == [False, True]
