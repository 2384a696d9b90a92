"""Access log lines without sockets (proxy/accesslog.py): the json fields and their types, the
combined format with the request id, and the outcome each way of ending gets (SPEC §12).

Exchanges are real ones driven through a Rig (fake transports); the formatters are pure
over what the exchange recorded.
"""

from __future__ import annotations

import json
import re

import pytest

from proxy.accesslog import Clock, Entry, combined_field, combined_line, header_value, json_line, json_string, millis
from proxy.route import Route
from tests.support.fakes import Rig

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
FIELDS = ["time", "client", "method", "target", "protocol", "status", "bytes_in", "bytes_out", "duration_ms",
          "upstream_connect_ms", "upstream_response_ms", "env", "server", "generation", "outcome", "request_id"]


def logged_rig(**overrides) -> Rig:
    """logged_rig: a Rig whose proxy has an access log (never started: its records are only gathered)."""
    return Rig(**{"access_log": {"path": "-"}, **overrides})


def line_of(record) -> dict:
    return json.loads(json_line(record, 1_700_000_000.0 - Entry(*record).started, Clock()))


def entries(rig: Rig) -> list[Entry]:
    """entries: the rig's gathered records, their fields named."""
    return [Entry(*record) for record in rig.proxy.access_records]


async def test_a_proxied_request_has_every_field_in_order_with_its_type():
    rig = logged_rig()
    rig.send(b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc-1\r\n\r\n")
    rig.answer(OK)
    [ex] = rig.proxy.access_records
    line = line_of(ex)
    assert list(line) == FIELDS
    assert line["time"] == "2023-11-14T22:13:20.000Z"
    assert (line["client"], line["method"], line["target"], line["protocol"]) == ("192.0.2.7", "GET", "/a?b=c",
                                                                                   "HTTP/1.1")
    assert line["status"] == 200 and line["outcome"] == "ok" and line["request_id"] == "abc-1"
    assert (line["env"], line["server"], line["generation"]) == ("blue", "127.0.0.1:1", 1)
    request = b"GET /a?b=c HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc-1\r\n\r\n"
    assert line["bytes_in"] == len(request)
    assert line["bytes_out"] == len(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: abc-1\r\n\r\nok")
    for name in ("duration_ms", "upstream_connect_ms", "upstream_response_ms"):
        assert isinstance(line[name], float) and line[name] >= 0, name
    assert line["upstream_connect_ms"] == 0.0     # a pooled connection


async def test_each_request_of_a_keep_alive_connection_counts_its_own_bytes():
    rig = logged_rig()
    first = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
    second = b"POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    rig.send(first)
    rig.answer(OK)
    rig.send(second)
    rig.answer(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    one, two = (line_of(ex) for ex in rig.proxy.access_records)
    assert (one["bytes_in"], two["bytes_in"]) == (len(first), len(second))
    assert (one["status"], two["status"], two["method"]) == (200, 201, "POST")
    assert one["request_id"] != two["request_id"]


async def test_a_request_refused_before_routing_has_no_environment_server_or_upstream_times():
    rig = logged_rig()
    rig.send(b"GET / HTTP/1.1\r\n\r\n")          # no Host: 400
    [ex] = rig.proxy.access_records
    line = line_of(ex)
    assert line["status"] == 400 and line["outcome"] == "refused"
    assert line["env"] is None and line["server"] is None and line["generation"] is None
    assert line["upstream_connect_ms"] is None and line["upstream_response_ms"] is None
    assert re.fullmatch(r"[0-9a-f]{16}-1", line["request_id"])


@pytest.mark.parametrize("target, written", [
    (b'/q?x="a"', '/q?x="a"'),
    (b"/back\\slash", "/back\\slash"),
    (b"/caf\xc3\xa9", "/caf\u00c3\u00a9"),      # each byte one code point: nothing is lost
])
def test_json_strings_escape_quotes_backslashes_and_bytes_outside_ascii(target, written):
    text = json_string(target)
    assert text.isascii() and json.loads(text) == written


def test_combined_fields_escape_as_nginx_does():
    assert combined_field(b'say "hi"\\') == b'say \\x22hi\\x22\\x5C'
    assert combined_field(b"caf\xc3\xa9") == b"caf\\xC3\\xA9"
    assert combined_field(b"") == b"-"


def test_header_values_are_found_in_any_case_and_position():
    block = b"Host: h\r\nuser-agent: curl/8\r\nREFERER: http://a/\r\n"
    assert header_value(block, b"user-agent") == b"curl/8"
    assert header_value(block, b"referer") == b"http://a/"
    assert header_value(b"User-Agent: x\r\n", b"user-agent") == b"x"
    assert header_value(block, b"cookie") == b""
    assert header_value(b"X-User-Agent: no\r\n", b"user-agent") == b""


async def test_combined_line_is_apache_combined_then_the_request_id():
    rig = logged_rig(access_log={"path": "-", "format": "combined"})
    rig.send(b"GET /x HTTP/1.1\r\nHost: h\r\nUser-Agent: curl/8.5\r\nReferer: http://r/\r\nX-Request-Id: r.1\r\n\r\n")
    rig.answer(OK)
    [ex] = rig.proxy.access_records
    wall = 1_700_000_000.5
    line = combined_line(ex, wall - Entry(*ex).started, Clock())
    size = len(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: r.1\r\n\r\nok")
    assert line == (f'192.0.2.7 - - [14/Nov/2023:22:13:20 +0000] "GET /x HTTP/1.1" 200 {size} '
                    f'"http://r/" "curl/8.5" r.1\n')


async def test_a_request_without_referer_or_agent_writes_dashes():
    rig = logged_rig(request_id={"generate": False})
    rig.send(b"GET / HTTP/1.0\r\n\r\n")
    rig.answer(OK)
    [ex] = rig.proxy.access_records
    line = combined_line(ex, 0.0, Clock())
    assert line.endswith('"GET / HTTP/1.0" 200 %d "-" "-" -\n' % Entry(*ex).bytes_out)


def test_the_clock_formats_iso_and_common_log_time_in_utc():
    clock = Clock()
    clock.at(0)
    assert (clock.second, clock.iso, clock.clf) == (0, b"1970-01-01T00:00:00", b"01/Jan/1970:00:00:00 +0000")
    clock.at(86400 * 31 + 3661)
    assert (clock.iso, clock.clf) == (b"1970-02-01T01:01:01", b"01/Feb/1970:01:01:01 +0000")


def test_milliseconds_have_three_decimals_rounded_to_the_microsecond():
    assert [millis(v) for v in (0.0, 0.0004, 0.0005, 1.5, 12.3456, 999.9996, -0.2)] == [
        b"0.000", b"0.000", b"0.001", b"1.500", b"12.346", b"1000.000", b"0.000"]


def test_a_json_line_times_its_request_to_the_millisecond_in_utc():
    record = (10.0, 10.25, b"192.0.2.7", b"GET", b"/", 1, 200, 10, 20, None, None, None, None, None, "refused",
              None, b"")
    line = json.loads(json_line(record, 86400 * 31 + 3661.9 - 10.0 + 0.0004, Clock()))
    assert line["time"] == "1970-02-01T01:01:01.900Z"
    assert (line["duration_ms"], line["upstream_connect_ms"], line["request_id"], line["env"]) == (250.0, None,
                                                                                                   None, None)


# ------------------------------------------------------------------ outcomes

def outcome(rig: Rig) -> str:
    [entry] = entries(rig)
    return entry.outcome


async def test_a_client_that_goes_away_is_client_gone():
    rig = logged_rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.client.connection_lost(None)
    assert outcome(rig) == "client_gone"


async def test_an_upstream_that_closes_before_answering_is_upstream_reset():
    rig = logged_rig()
    rig.up.reused = False
    rig.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx")
    rig.up.connection_lost(ConnectionResetError())
    assert outcome(rig) == "upstream_reset" and entries(rig)[0].status == 502


async def test_a_response_cut_mid_body_is_upstream_reset_with_the_upstream_status():
    rig = logged_rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    rig.up.connection_lost(None)
    [entry] = entries(rig)
    assert entry.outcome == "upstream_reset" and entry.status == 200


async def test_an_upstream_timeout_is_timeout():
    rig = logged_rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.client.queue[0].timed_out()
    assert outcome(rig) == "timeout" and entries(rig)[0].status == 504


async def test_a_client_body_timeout_is_timeout():
    rig = logged_rig()
    rig.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab")
    rig.client.queue[0].client_timed_out()
    assert outcome(rig) == "timeout" and entries(rig)[0].status == 408


async def test_a_request_cut_by_a_drain_is_drained():
    rig = logged_rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.client.queue[0].force_close()
    assert outcome(rig) == "drained"


async def test_a_held_request_whose_client_leaves_is_held():
    rig = logged_rig()
    rig.proxy.router.hold()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.client.connection_lost(None)
    assert outcome(rig) == "held"


async def test_a_request_the_full_hold_queue_turns_away_is_refused():
    rig = logged_rig(hold={"max_queued": 0})
    rig.proxy.router.hold()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert outcome(rig) == "refused" and entries(rig)[0].status == 503


async def test_no_healthy_server_is_refused_and_a_body_over_the_limit_too():
    rig = logged_rig(limits={"max_body_bytes": 4})
    rig.send(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n123456789\r\n0\r\n\r\n")
    assert outcome(rig) == "refused" and entries(rig)[0].status == 413
    rig = logged_rig()
    rig.proxy.router.environments["blue"].servers[0].set_healthy(False)
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert outcome(rig) == "refused" and entries(rig)[0].status == 503


async def test_the_generation_is_the_one_the_request_was_routed_by():
    rig = logged_rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(OK)
    rig.proxy.router.swap(Route(generation=2, live="green", previous="blue", environments=("blue", "green")))
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(OK, env="green")
    lines = [line_of(ex) for ex in rig.proxy.access_records]
    assert [(line["env"], line["generation"]) for line in lines] == [("blue", 1), ("green", 2)]


async def test_without_an_access_log_nothing_is_recorded():
    rig = Rig()
    rig.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.answer(OK)
    assert rig.proxy.access_records is None and rig.proxy.access_log is None
    assert rig.client.queue == [] and rig.client_t.take().startswith(b"HTTP/1.1 200 OK")


async def test_an_entry_holds_only_values_so_the_cycle_collector_lets_it_go():
    """A batch's entries wait up to FLUSH_INTERVAL: exchanges kept that long survived into the
    collector's older generations, and its full passes walked thousands of them."""
    import gc
    rig = logged_rig()
    for _ in range(3):
        rig.send(b"GET /x HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\n")
        rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    entries = list(rig.proxy.access_records)
    assert len(entries) == 3
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in entries)
