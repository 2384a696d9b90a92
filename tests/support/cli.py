"""cli: the real CLI as a subprocess (``python -m admin.cli``), for the tests of the admin commands.

``cutover`` runs it with asyncio.create_subprocess_exec, so the event loop keeps serving the
admin API of a stack started in the same test while the CLI waits for it; ``assert_failed``
checks the one-line failure SPEC §2 asks for.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass

from tests.support.paths import ROOT

TOKEN = "t0ken"


@dataclass
class Result:
    """Result: how a CLI run ended: exit status, stdout and stderr."""

    rc: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


async def cutover(*args: str, env: dict | None = None, timeout: float = 20.0) -> Result:
    """cutover: run ``python -m admin.cli *args`` with no CUTOVER_* variables but those in ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CUTOVER_")}
    environ.update(env or {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "admin.cli", *args, cwd=ROOT, env=environ,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return Result(proc.returncode, out.decode(), err.decode())


def assert_failed(result: Result, rc: int, code: str) -> str:
    """assert_failed: exit ``rc``, exactly one stderr line ending in ``(code)``, no traceback."""
    assert result.rc == rc, result
    assert "Traceback" not in result.err
    assert result.err.count("\n") == 1 and result.err.endswith("\n"), result.err
    line = result.err.rstrip("\n")
    assert line.startswith("cutover: ") and line.endswith(f"({code})"), line
    return line


def url_of(running) -> str:
    """url_of: the admin API's base URL of a stack started by make_stack."""
    return f"http://127.0.0.1:{running.admin_port}"
