"""readiness: whether an outer load balancer should send this router traffic (GET /readyz).

/healthz is liveness (the process is up: restart it if not); /readyz is readiness (route
traffic here or not). The admin API answers /readyz from ``Readiness.report``: 200 while
every check passes, 503 with the reasons otherwise. The checks:

- the live environment has at least one healthy server (else every request gets 503);
- the router is not shutting down (``begin_shutdown``, called by serve's Running.stop
  before the listeners stop accepting, so the balancer moves away first);
- any check added with ``add_check``: a callable answering None when ready, or the
  reason it is not. This is the fleet's seam: a replica adds one that names its route as
  stale while it may lag the fleet's state (SPEC §7, §9.2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy import Snapshot

Check = Callable[[], "str | None"]


class Readiness:
    """Readiness: the checks behind /readyz; one per admin application (make_app builds it).

    ``snapshot`` is the data plane's read model (DataPlane.snapshot).
    """

    def __init__(self, snapshot: Callable[[], "Snapshot"]) -> None:
        self._snapshot = snapshot
        self.shutting_down = False
        self._checks: list[Check] = []

    def add_check(self, check: Check) -> None:
        """add_check: one more condition for readiness; ``check()`` is None or why not ready."""
        self._checks.append(check)

    def begin_shutdown(self) -> None:
        """begin_shutdown: from now on /readyz is 503 (serve's Running.stop calls it first)."""
        self.shutting_down = True

    def report(self) -> dict:
        """report: the /readyz answer: {"ready", "reasons", "live", "live_healthy", "shutting_down"}."""
        router = self._snapshot().router
        live = router.env(router.route.live)
        reasons = []
        if self.shutting_down:
            reasons.append("shutting down: draining in-flight requests, then exiting")
        if not live.healthy:
            reasons.append(f'the live environment "{live.name}" has no healthy server')
        for check in self._checks:
            reason = check()
            if reason:
                reasons.append(reason)
        return {"ready": not reasons, "reasons": reasons, "live": live.name, "live_healthy": live.healthy,
                "shutting_down": self.shutting_down}
