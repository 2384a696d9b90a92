"""The gates judge a snapshot and what a Fetch answers: no Router, no Controller, no socket.

run_gates gets GateInputs (a snapshot source, the gates config, the attestations, the preview
token) and an opener; FakePlane and FakeHTTP (tests/support/fakeplane.py) stand in for the data
plane and for HTTP.
"""

from __future__ import annotations

import aiohttp
import pytest

from admin.gates import GateInputs, listen_url, preview_routes, run_gates
from proxy import Route
from admin.config import DriftGate, GatesConfig, SchemaGate, SmokeProbe, WarmupGate
from tests.support.fakeplane import FakeHTTP, FakePlane

FINGERPRINT = '{"version": "v1", "db": "pg", "build": "1"}'


def inputs(plane: FakePlane, gates: GatesConfig | None = None, **fields) -> GateInputs:
    return GateInputs(snapshot=plane, gates=gates or GatesConfig(), **fields)


# ------------------------------------------------------------------------ health


async def test_the_health_gate_passes_when_every_server_of_the_target_is_healthy():
    plane = FakePlane({"blue": ["127.0.0.1:1001"], "green": ["127.0.0.1:2001", "127.0.0.1:2002"]})
    http = FakeHTTP()
    [result] = await run_gates(inputs(plane), "green", opener=http)
    assert (result.name, result.passed, result.reason) == ("health", True, "all 2 servers of green healthy")
    assert http.opened == []                 # no other gate configured: no HTTP session at all


async def test_the_health_gate_names_each_unhealthy_server_and_stops_the_run():
    plane = FakePlane({"blue": ["127.0.0.1:1001"], "green": ["127.0.0.1:2001", "127.0.0.1:2002"]})
    plane.down = {"127.0.0.1:2002"}
    http = FakeHTTP()
    gates = GatesConfig(smoke=(SmokeProbe("/"),))
    [result] = await run_gates(inputs(plane, gates), "green", opener=http)
    assert not result.passed and result.reason == "unhealthy servers in green: 127.0.0.1:2002"
    assert http.requests == []


async def test_health_only_runs_no_other_gate():
    plane = FakePlane()
    http = FakeHTTP()
    gates = GatesConfig(smoke=(SmokeProbe("/"),), warmup=WarmupGate(("/",)))
    results = await run_gates(inputs(plane, gates), "green", health_only=True, opener=http)
    assert [r.name for r in results] == ["health"] and http.opened == []


# ---------------------------------------------------------------- preview routes


def test_the_preview_listener_is_used_when_it_serves_the_target():
    plane = FakePlane()
    plane.preview_listen = "127.0.0.1:8001"
    assert preview_routes(plane(), "green", None) == [("http://127.0.0.1:8001", {})]


def test_during_a_canary_the_preview_listener_serves_the_canary():
    plane = FakePlane()
    plane.preview_listen = "127.0.0.1:8001"
    plane.route = Route(2, "blue", canary="green", canary_weight=10, environments=plane.names)
    assert preview_routes(plane(), "green", None) == [("http://127.0.0.1:8001", {})]


def test_a_target_the_preview_listener_does_not_serve_goes_through_x_cutover_env():
    plane = FakePlane()
    plane.preview_listen = "127.0.0.1:8001"          # it serves green, the idle one
    plane.preview_token_set = True
    assert preview_routes(plane(), "blue", "s3cret") == [
        ("http://127.0.0.1:8000", {"X-Cutover-Env": "blue", "X-Cutover-Token": "s3cret"})]


def test_without_a_token_the_data_plane_honours_the_servers_are_asked_directly():
    plane = FakePlane({"blue": ["127.0.0.1:1001"], "green": ["127.0.0.1:2001", "127.0.0.1:2002"]})
    assert preview_routes(plane(), "green", None) == [("http://127.0.0.1:2001", {}), ("http://127.0.0.1:2002", {})]
    # a token the data plane would not honour is never sent through the user's listener
    assert preview_routes(plane(), "green", "s3cret") == [("http://127.0.0.1:2001", {}),
                                                         ("http://127.0.0.1:2002", {})]


@pytest.mark.parametrize("listen, url", [
    ("127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("0.0.0.0:8000", "http://127.0.0.1:8000"),
    ("[::1]:8000", "http://[::1]:8000"),
    ("[::]:8000", "http://127.0.0.1:8000"),
    ("localhost:80", "http://localhost:80"),
])
def test_a_listener_as_a_snapshot_names_it_becomes_a_url(listen, url):
    assert listen_url(listen) == url


# ------------------------------------------------------------------------- smoke


async def test_through_one_route_each_probe_is_sent_once_per_server_of_the_target():
    plane = FakePlane({"blue": ["127.0.0.1:1001"], "green": ["127.0.0.1:2001", "127.0.0.1:2002"]})
    plane.preview_listen = "127.0.0.1:8001"
    http = FakeHTTP({"http://127.0.0.1:8001/ready": (200, "ready: yes")})
    gates = GatesConfig(smoke=(SmokeProbe("/ready", expect_body_contains="yes"),))
    health, smoke = await run_gates(inputs(plane, gates), "green", opener=http)
    assert smoke.passed and smoke.reason == "1 probe(s) passed on green"
    assert http.urls() == ["http://127.0.0.1:8001/ready"] * 2


@pytest.mark.parametrize("answer, reason", [
    ((503, "down"), "GET /ready: status 503, expected 200"),
    ((200, "starting"), "GET /ready: body lacks 'ready'"),
    (aiohttp.ClientConnectionError("refused"), "GET /ready: ClientConnectionError refused"),
])
async def test_a_smoke_probe_that_answers_otherwise_fails_the_gate_and_says_how(answer, reason):
    plane = FakePlane()
    http = FakeHTTP({"http://127.0.0.1:2001/ready": answer})
    gates = GatesConfig(smoke=(SmokeProbe("/ready", expect_body_contains="ready"),),
                        warmup=WarmupGate(("/",), requests=1))
    results = await run_gates(inputs(plane, gates), "green", opener=http)
    assert [(r.name, r.passed) for r in results] == [("health", True), ("smoke", False)]    # no warm-up after it
    assert results[-1].reason == reason


async def test_the_x_cutover_env_route_carries_the_target_and_the_token():
    plane = FakePlane()
    plane.preview_token_set = True
    http = FakeHTTP()
    gates = GatesConfig(smoke=(SmokeProbe("/"),))
    await run_gates(inputs(plane, gates, preview_token="s3cret"), "green", opener=http)
    assert http.requests == [("GET", "http://127.0.0.1:8000/", {"X-Cutover-Env": "green", "X-Cutover-Token": "s3cret"})]


# ------------------------------------------------------------------------ warm-up


async def test_warmup_counts_the_requests_that_failed():
    plane = FakePlane({"blue": ["127.0.0.1:1001"], "green": ["127.0.0.1:2001", "127.0.0.1:2002"]})
    http = FakeHTTP({"http://127.0.0.1:2002/cache": (502, "")})
    gates = GatesConfig(warmup=WarmupGate(("/cache",), requests=4))
    results = await run_gates(inputs(plane, gates), "green", opener=http)
    assert results[-1].reason == "2 of 4 warm-up requests failed (last: GET /cache: status 502)"
    assert http.urls() == ["http://127.0.0.1:2001/cache", "http://127.0.0.1:2002/cache"] * 2


# -------------------------------------------------------------------- drift, schema


async def test_drift_compares_every_server_of_the_target_with_live_outside_the_allow_list():
    plane = FakePlane({"blue": ["127.0.0.1:1001"], "green": ["127.0.0.1:2001", "127.0.0.1:2002"]})
    http = FakeHTTP({
        "http://127.0.0.1:1001/__fingerprint": (200, FINGERPRINT),
        "http://127.0.0.1:2001/__fingerprint": (200, '{"version": "v2", "db": "pg", "build": "1"}'),
        "http://127.0.0.1:2002/__fingerprint": (200, '{"version": "v2", "db": "mysql", "build": "1"}'),
    })
    gates = GatesConfig(drift=DriftGate(ignore=("version",)))
    results = await run_gates(inputs(plane, gates), "green", opener=http)
    assert results[-1].reason == '127.0.0.1:2002: 1 difference(s): db: live "pg" != target "mysql"'


async def test_drift_reads_live_from_the_snapshot_and_passes_a_target_that_is_live():
    plane = FakePlane(live="green")
    http = FakeHTTP()
    results = await run_gates(inputs(plane, GatesConfig(drift=DriftGate())), "green", opener=http)
    assert (results[-1].passed, results[-1].reason) == (True, "target is live") and http.requests == []


async def test_fingerprints_come_from_healthy_servers_first():
    plane = FakePlane({"blue": ["127.0.0.1:1001", "127.0.0.1:1002"], "green": ["127.0.0.1:2001"]})
    plane.down = {"127.0.0.1:1001"}
    http = FakeHTTP({"http://127.0.0.1:1002/__fingerprint": (200, FINGERPRINT),
                     "http://127.0.0.1:2001/__fingerprint": (200, FINGERPRINT)})
    results = await run_gates(inputs(plane, GatesConfig(drift=DriftGate())), "green", opener=http)
    assert results[-1].passed and "http://127.0.0.1:1001/__fingerprint" not in http.urls()


async def test_an_attestation_for_exactly_this_pair_of_versions_passes_the_schema_gate():
    plane = FakePlane()
    http = FakeHTTP({"http://127.0.0.1:1001/__fingerprint": (200, FINGERPRINT),
                     "http://127.0.0.1:2001/__fingerprint": (200, '{"version": "v2"}')})
    attested = ({"from_version": "v1", "to_version": "v2", "by": "dba", "at": "2024-01-01T00:00:00.000Z"},)
    other = ({"from_version": "v0", "to_version": "v2", "by": "dba", "at": "2024-01-01T00:00:00.000Z"},)
    gates = GatesConfig(schema=SchemaGate())
    passed = await run_gates(inputs(plane, gates, attestations=attested), "green", opener=http)
    assert passed[-1].passed and passed[-1].reason == "attested compatible v1 -> v2 by dba"
    refused = await run_gates(inputs(plane, gates, attestations=other), "green", opener=http)
    assert not refused[-1].passed and refused[-1].reason.startswith("no attestation for v1 -> v2")


async def test_a_fingerprint_that_is_not_a_json_object_means_the_versions_are_unknown():
    plane = FakePlane()
    http = FakeHTTP({"http://127.0.0.1:1001/__fingerprint": (200, "[1, 2]")})
    results = await run_gates(inputs(plane, GatesConfig(schema=SchemaGate())), "green", opener=http)
    assert results[-1].reason == ("cannot tell the versions: no fingerprint from blue "
                                  "(127.0.0.1:1001: not a JSON object)")
