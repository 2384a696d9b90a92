"""The live route: one immutable snapshot, replaced by a single assignment.

Router.route holds the current Route. Each exchange reads it exactly once (when
its request head is complete and any hold has released it) and keeps it, so on
one event loop a swap needs no lock: every request that reads the route after
the assignment goes to the new environment.
"""

from __future__ import annotations

import copyreg
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Route:
    """Route: generation, live and previous environment, canary weight.

    generation goes up by one on every change of the route (SPEC §5).
    canary is the idle environment that receives ``canary_weight`` percent of
    new requests; None (or weight 0) means all traffic goes to ``live``.
    """

    generation: int
    live: str
    previous: str | None = None
    canary: str | None = None
    canary_weight: int = 0
    environments: tuple[str, ...] = field(default=())

    @property
    def weights(self) -> dict[str, int]:
        """weights: {env: percent} as the admin status shows it (live 100-N, idle N)."""
        out = {name: 0 for name in self.environments}
        out[self.live] = 100 - self.canary_weight
        if self.canary is not None:
            out[self.canary] = self.canary_weight
        return out

    def other(self, name: str) -> str:
        """other: the environment of the pair that is not ``name``."""
        for env in self.environments:
            if env != name:
                return env
        raise ValueError(f"no environment other than {name!r}")


def _reduce_route(route: Route) -> tuple:
    return Route, (route.generation, route.live, route.previous, route.canary, route.canary_weight,
                   route.environments)


# A Route crosses to worker processes inside Changes and snapshots (proxy/agent.py). Compiled,
# a frozen class cannot be rebuilt by pickle's default (it sets attributes one by one), so
# pickle builds it with the constructor; this works the same on the pure Python build.
copyreg.pickle(Route, _reduce_route)
