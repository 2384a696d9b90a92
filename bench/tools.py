"""tools — find wrk, nginx, HAProxy and taskset; install the missing ones with apt-get when
running as root. Called once by run.py before anything starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess

# command -> Debian package that provides it
PACKAGES = {"wrk": "wrk", "nginx": "nginx-light", "haproxy": "haproxy", "taskset": "util-linux"}
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


class ToolError(Exception):
    """ToolError: a required tool is missing and could not be installed."""


def find(command: str) -> str | None:
    """find looks on PATH, then in the sbin folders (nginx and haproxy live in /usr/sbin)."""
    return shutil.which(command) or shutil.which(command, path=_SBIN)


def _missing() -> list[str]:
    return [command for command in PACKAGES if not find(command)]


def _apt_get(*args: str, timeout: float) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(["apt-get", *args], env=env, stdin=subprocess.DEVNULL,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def ensure(log) -> dict[str, str]:
    """ensure returns {command: path} for every tool, installing missing ones as root."""
    missing = _missing()
    if missing:
        packages = sorted({PACKAGES[c] for c in missing})
        hint = f"apt-get install -y {' '.join(packages)}"
        if os.geteuid() != 0:
            raise ToolError(f"missing: {', '.join(missing)}. Run as root, or install them "
                            f"first: sudo {hint}")
        if not find("apt-get"):
            raise ToolError(f"missing: {', '.join(missing)}, and apt-get is not available")
        log(f"installing {' '.join(packages)} with apt-get ...")
        options = ("install", "-y", "-q", "--no-install-recommends", *packages)
        if not _apt_get(*options, timeout=900):
            _apt_get("update", "-q", timeout=600)
            _apt_get(*options, timeout=900)
        missing = _missing()
        if missing:
            raise ToolError(f"still missing after `{hint}`: {', '.join(missing)}")
    return {command: find(command) for command in PACKAGES}


def versions(paths: dict[str, str]) -> dict[str, str]:
    """versions returns one version line per tool (for the report header)."""
    out = {}
    for command, flag in (("nginx", "-v"), ("haproxy", "-v"), ("wrk", "-v"), ("cutover", "version")):
        if not paths.get(command):
            continue
        try:
            done = subprocess.run([paths[command], flag], capture_output=True, text=True,
                                  timeout=10)
            line = (done.stdout + done.stderr).strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            line = "unknown"
        out[command] = line.split(" Copyright")[0].split(" - https")[0].strip()
    return out
