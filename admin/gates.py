"""Gates: checks a switch must pass before traffic moves to a target environment (SPEC §6).

run_gates is called by the Controller (unless the call is forced) and returns
one GateResult per gate; any failure refuses the switch with 409 gate_failed,
naming the gate and why, and the results go into the history entry.
The health gate needs every server of the target healthy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .controller import Controller


@dataclass(frozen=True)
class GateResult:
    """GateResult: one gate's verdict on one target."""

    name: str
    passed: bool
    reason: str

    def to_dict(self) -> dict:
        return {"gate": self.name, "passed": self.passed, "reason": self.reason}


def health_gate(controller: "Controller", target: str) -> GateResult:
    """health_gate: every server of the target environment is healthy."""
    env = controller.router.environments[target]
    down = [s.address for s in env.servers if not s.healthy]
    if down:
        return GateResult("health", False, f"unhealthy servers in {target}: {', '.join(down)}")
    return GateResult("health", True, f"all {len(env.servers)} servers of {target} healthy")


async def run_gates(controller: "Controller", target: str, health_only: bool = False) -> list[GateResult]:
    """run_gates: every configured gate against ``target``, in order; health first."""
    return [health_gate(controller, target)]
