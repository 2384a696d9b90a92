"""`cutover demo`: runs the whole story on loopback and exits 0 with a truthful report."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


async def test_demo_json_report_and_exit_code():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "admin.cli", "demo", "--json", "--duration", "3", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["passed"] is True
    assert report["failed"] == 0 and report["dropped"] == 0 and report["forced_closed"] == 0
    assert report["requests"] > 100
    assert report["by_version"]["v1"] > 0 and report["by_version"]["v2"] > 0
    assert report["requests"] == sum(report["by_version"].values())
    assert report["flip"]["drain"]["environment"] == "blue"
    assert report["rollback"]["drain"]["environment"] == "green"
    assert report["flip"]["drain"]["drained"] >= 1          # the slow requests were drained
    assert report["rollback"]["recorded_recovery_ms"] > 0
    assert report["rollback"]["recovery_ms"] > 0
