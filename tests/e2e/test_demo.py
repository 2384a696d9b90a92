"""`cutover demo`: the whole story on loopback, exit 0 and a truthful report."""

from __future__ import annotations

import asyncio
import json
import sys

from tests.support.paths import ROOT


async def test_demo_json_report_and_exit_code():
    proc = await asyncio.create_subprocess_exec(
        # The recovery-time objective is bench/'s to check; a test only checks the logic.
        sys.executable, "-m", "admin.cli", "demo", "--json", "--duration", "4", "--objective-ms", "5000", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    report = json.loads(out)
    assert proc.returncode == 0, (report, err.decode()[-2000:])
    assert report["passed"] is True
    assert report["failed"] == 0 and report["dropped"] == 0 and report["forced_closed"] == 0
    assert report["requests"] > 100
    assert report["requests"] == sum(report["by_version"].values())
    assert report["by_version"]["v1"] > 0 and report["by_version"]["v2"] > 0
    assert report["schema_check"]["findings"] == 0
    assert report["preview_smoke"] == {"status": 200, "version": "v2"}
    gates = {g["gate"]: g["passed"] for g in report["flip"]["gates"]}
    assert gates == {"health": True, "drift": True, "schema": True, "smoke": True, "warmup": True}
    assert report["flip"]["drain"]["environment"] == "blue"
    assert report["flip"]["drain"]["drained"] >= 1          # the slow requests were drained
    assert report["flip"]["analysis"]["state"] == "passed"
    assert report["flip"]["probes"] > 10 and report["flip"]["failed_probes"] == 0
    drill = report["drill"]
    assert [s["action"] for s in drill["switches"]] == ["flip", "rollback"]
    assert drill["failed_probes"] == 0 and drill["passed"] is True
    assert all(ms is not None and ms > 0 for ms in report["recovery_ms"])
