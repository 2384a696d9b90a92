"""logs: how every cutover process writes its log (SPEC §12 `log: {format, level}`).

serve (admin/cli.py) and each worker (proxy/agent.py) call ``configure`` once, before anything
logs. ``text`` is one human line per record; ``json`` one JSON object per line with ``time``
(ISO-8601 UTC, milliseconds), ``level``, ``logger``, ``message`` (the formatted text line, so
nothing is lost for a reader of either format), ``pid``, the record's structured fields
(``extra={"generation": 7, "env": "green", ...}`` at the call; see FIELDS) and ``error``
(the traceback) when there is one. A log aggregator can then select a change by its generation
without parsing the message.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO

__all__ = ["FIELDS", "FORMATS", "JsonFormatter", "configure", "text_format"]

FORMATS = ("text", "json")
# The structured fields a log call may add with extra=...; only these reach a json line.
FIELDS = ("generation", "action", "env", "server", "from_env", "to_env", "replica", "worker",
          "drained", "forced_closed", "dropped", "released", "changed", "code", "actor", "client")


def text_format(worker: int | None = None) -> str:
    """text_format: the text line: time, level, (worker pid,) logger, message."""
    who = f" worker {worker}" if worker is not None else ""
    return f"%(asctime)s %(levelname)s{who} %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """JsonFormatter: one JSON object per record, on one line (see the module docstring)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        millis = int((record.created - seconds) * 1000)
        doc: dict = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process if record.process is not None else os.getpid(),
        }
        if self.worker is not None:
            doc["worker"] = self.worker
        for key in FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                doc[key] = value
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["error"] = record.exc_text
        return json.dumps(doc, default=str, ensure_ascii=False, separators=(",", ":"))


def configure(fmt: str = "text", level: str | int = "INFO", worker: int | None = None,
              stream: IO[str] | None = None) -> logging.Handler:
    """configure: the root logger writes ``fmt`` lines at ``level`` and above to ``stream`` (stderr).

    Replaces whatever handlers the root logger had (a second call, e.g. a reload, swaps the
    format without doubling lines). Returns the handler. ValueError names a format or level
    that does not exist.
    """
    if fmt not in FORMATS:
        raise ValueError(f'log format must be one of {", ".join(FORMATS)}, not "{fmt}"')
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else logging.Formatter(text_format(worker)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
