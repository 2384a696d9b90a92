"""logfile: an access log file as the tests read it while cutover writes it.

A reader can see part of a write under way (ext4 does not hold readers back while a write
copies): the bytes after the last newline are not a line yet. A line cut for good, or two
writes interleaved, would not parse as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path


def logged_lines(path: Path) -> list[dict]:
    """logged_lines: each whole line of the file, parsed as JSON ([] while there is no file)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1]]


def ends_whole(path: Path) -> bool:
    """ends_whole: the file is empty or ends with a newline (check once the writers stopped)."""
    data = path.read_bytes()
    return not data or data.endswith(b"\n")
