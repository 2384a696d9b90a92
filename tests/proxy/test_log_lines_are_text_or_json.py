"""proxy/logs.py without sockets: `log: {format: text | json, level}` (SPEC §12). A json line is
one object with time, level, logger, message, pid and the structured fields a call gave (the
generation of a change, its environments, ...); a text line is the human form of the same
record; configure replaces the handler (no doubled lines) and refuses an unknown format."""

from __future__ import annotations

import io
import json
import logging

import pytest

from proxy.logs import configure


@pytest.fixture
def restore_root():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_a_json_line_carries_the_record_and_its_structured_fields(restore_root):
    out = io.StringIO()
    configure("json", "INFO", stream=out)
    logging.getLogger("cutover.controller").info("flip blue -> green generation %d", 7,
                                                  extra={"generation": 7, "from_env": "blue", "to_env": "green",
                                                         "action": "flip", "unlisted": "kept out"})
    doc = json.loads(out.getvalue())
    assert doc["level"] == "info" and doc["logger"] == "cutover.controller"
    assert doc["message"] == "flip blue -> green generation 7"
    assert (doc["generation"], doc["from_env"], doc["to_env"], doc["action"]) == (7, "blue", "green", "flip")
    assert "unlisted" not in doc and isinstance(doc["pid"], int)
    assert doc["time"].endswith("Z") and len(doc["time"]) == len("2026-12-01T15:00:00.000Z")


def test_a_json_line_stays_one_line_with_a_traceback_and_newlines(restore_root):
    out = io.StringIO()
    configure("json", "INFO", worker=3, stream=out)
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logging.getLogger("cutover.x").exception("failed:\nwhy")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["level"] == "error" and doc["worker"] == 3
    assert "RuntimeError: boom" in doc["error"] and doc["message"] == "failed:\nwhy"


def test_text_lines_name_level_worker_and_logger_and_the_level_filters(restore_root):
    out = io.StringIO()
    configure("text", "warning", worker=42, stream=out)
    log = logging.getLogger("cutover.router")
    log.info("not shown")
    log.warning("server %s is now unhealthy", "127.0.0.1:9001", extra={"generation": 3})
    text = out.getvalue()
    assert "not shown" not in text
    assert " WARNING worker 42 cutover.router: server 127.0.0.1:9001 is now unhealthy" in text


def test_configure_again_replaces_the_handler_and_refuses_an_unknown_format(restore_root):
    out = io.StringIO()
    configure("text", "INFO", stream=io.StringIO())
    configure("json", "INFO", stream=out)
    logging.getLogger("cutover").info("once")
    assert len(out.getvalue().splitlines()) == 1 and len(logging.getLogger().handlers) == 1
    with pytest.raises(ValueError, match='log format must be one of text, json, not "xml"'):
        configure("xml")
