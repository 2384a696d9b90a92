"""The pre-switch gates (SPEC §6) end to end: real proxy + controller + admin API, POST /v1/flip.

Each test runs its own small aiohttp backends (FakeApp) that serve ``/``, ``/healthz`` and a
``/__fingerprint`` whose JSON the test controls, and that record every request they get (path,
headers, and the route generation the proxy had at that moment), so a test can tell which gate
sent what to which environment, through which route, and whether it arrived before the swap.

Gate order (admin/gates.py): health, drift, schema, smoke, warm-up; later gates are skipped once
one fails. A forced flip runs none; a rollback runs only the health gate.
"""

from __future__ import annotations

import asyncio
import copy
import time

import aiohttp
import pytest
from aiohttp import web

from admin.story.demo_app import serve_app
from tests.support.adminapi import JsonAdmin, post
from tests.support.wait import eventually

TOKEN = "t0ken"
FP = {"version": "v1", "build": "1", "features": {"a": True, "b": False}, "db": "pg"}


# --------------------------------------------------------------------------- backends

class FakeApp:
    """FakeApp: one test application server with a controllable fingerprint and a request log."""

    def __init__(self, name: str, fingerprint: dict | None = None) -> None:
        self.name = name
        self.fingerprint = copy.deepcopy(FP if fingerprint is None else fingerprint)
        self.fingerprint_status = 200
        self.health_status = 200
        self.statuses: dict[str, int] = {}      # path -> status to answer (default 200)
        self.hits: list[dict] = []              # every request except /healthz
        self.observe = lambda: None             # called per request; the test points it at the route
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def paths(self, path: str | None = None) -> list[str]:
        return [h["path"] for h in self.hits if path is None or h["path"] == path]

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path == "/healthz":
            return web.Response(status=self.health_status, text="ok\n")
        self.hits.append({
            "path": request.path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "generation": self.observe(),
        })
        if request.path == "/__fingerprint":
            if self.fingerprint_status != 200:
                return web.Response(status=self.fingerprint_status, text="broken\n")
            return web.json_response(self.fingerprint)
        status = self.statuses.get(request.path, 200)
        return web.Response(status=status, text=f"{self.name}\n")

    async def start(self) -> "FakeApp":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner, self.port = await serve_app(app, shutdown_timeout=0.5)
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def apps():
    """apps(name, fingerprint=None) -> started FakeApp; all stopped after the test."""
    started: list[FakeApp] = []

    async def factory(name: str, fingerprint: dict | None = None, **changes) -> FakeApp:
        fp = copy.deepcopy(FP if fingerprint is None else fingerprint)
        fp.update(changes)
        app = await FakeApp(name, fp).start()
        started.append(app)
        return app

    yield factory
    for app in started:
        await app.stop()


# --------------------------------------------------------------------------- admin API

class Admin(JsonAdmin):
    """Admin: a JsonAdmin on ``running``'s admin API, every call bounded at 2.5 s; adds ``flip``."""

    def __init__(self, session: aiohttp.ClientSession, running, token: str | None = None) -> None:
        super().__init__(session, running.admin_port, token or None, timeout=2.5)
        self.running = running

    async def flip(self, body: dict | None = None) -> tuple[int, dict]:
        """flip: POST /v1/flip with ``body`` (or ``{}``); answers (status, json)."""
        return await self.call("POST", "/v1/flip", body or {})


@pytest.fixture
def stack(make_stack, session):
    """stack(blue, green, token=None, **overrides) -> Admin over a started stack.

    ``blue`` and ``green`` are a FakeApp or a list of them. Every FakeApp records the
    route generation at the moment each request reached it.
    """
    async def factory(blue, green, token: str | None = None, **overrides) -> Admin:
        if token is not None:
            overrides.setdefault("admin", {"listen": "127.0.0.1:0", "token": token})
        running = await make_stack({"blue": blue, "green": green}, **overrides)
        for app in [*_list(blue), *_list(green)]:
            app.observe = lambda r=running: r.proxy.router.route.generation
        return Admin(session, running, token)
    return factory


def _list(x) -> list:
    return x if isinstance(x, list) else [x]


# --------------------------------------------------------------------------- assertions

async def assert_flipped(admin: Admin, status: int, payload: dict, gates: list[str]) -> dict:
    """assert_flipped: 200, green live at generation 2, and the history entry lists ``gates`` passed."""
    assert status == 200, payload
    assert (payload["live"], payload["previous"], payload["generation"]) == ("green", "blue", 2), payload
    assert payload.get("changed") is True
    assert admin.running.proxy.router.route.live == "green"
    flips = [e for e in await admin.events() if e["action"] == "flip"]
    assert len(flips) == 1, flips
    entry = flips[0]
    assert (entry["from"], entry["to"], entry["generation"]) == ("blue", "green", 2)
    assert [g["gate"] for g in entry["gates"]] == gates, entry
    assert all(g["passed"] is True and g["reason"] for g in entry["gates"]), entry
    return entry


async def assert_refused(admin: Admin, status: int, payload: dict, gate: str,
                         ran: list[str], *reason_parts: str) -> dict:
    """assert_refused: 409 gate_failed naming ``gate``; exactly ``ran`` gates ran; nothing changed.

    Returns the failing gate's entry; its reason must contain every one of ``reason_parts``.
    """
    assert status == 409, payload
    assert payload["code"] == "gate_failed", payload
    assert gate in payload["error"], payload
    gates = payload["gates"]
    assert [g["gate"] for g in gates] == ran, gates
    assert all(g["passed"] is True for g in gates[:-1]), gates
    failed = gates[-1]
    assert failed["gate"] == gate and failed["passed"] is False and failed["reason"], failed
    for part in reason_parts:
        assert part in failed["reason"], (part, failed)
        assert part in payload["error"], (part, payload["error"])
    st = await admin.status()
    assert (st["live"], st["previous"], st["generation"]) == ("blue", None, 1), st
    route = admin.running.proxy.router.route
    assert (route.live, route.generation) == ("blue", 1)
    assert not [e for e in await admin.events() if e["action"] in ("flip", "rollback")]
    return failed


# --------------------------------------------------------------------------- smoke

async def test_smoke_passes_when_status_and_body_match(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    admin = await stack(blue, green, gates={"smoke": [
        {"path": "/", "expect_status": 200, "expect_body_contains": "green"},
        {"path": "/created", "expect_status": 201}]})
    green.statuses["/created"] = 201
    status, payload = await admin.flip({"reason": "release"})
    entry = await assert_flipped(admin, status, payload, ["health", "smoke"])
    assert "2 probe(s)" in entry["gates"][1]["reason"]
    assert green.paths("/") == ["/"] and green.paths("/created") == ["/created"]
    assert all(h["generation"] == 1 for h in green.hits)       # before the swap
    assert blue.hits == []


async def test_smoke_fails_on_an_unexpected_status(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    admin = await stack(blue, green, gates={"smoke": [{"path": "/ready", "expect_status": 200}]})
    green.statuses["/ready"] = 503
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "smoke", ["health", "smoke"],
                         "/ready", "status 503", "expected 200")


async def test_smoke_fails_when_the_expected_body_text_is_missing(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    admin = await stack(blue, green, gates={"smoke": [
        {"path": "/", "expect_status": 200, "expect_body_contains": "purple"}]})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "smoke", ["health", "smoke"], "'purple'")
    assert green.paths("/") == ["/"]         # the probe did reach green; its body was wrong


async def test_smoke_probes_go_through_the_preview_listener(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    admin = await stack(blue, green, preview_listen="127.0.0.1:0",
                        gates={"smoke": [{"path": "/probe", "expect_body_contains": "green"}]})
    assert admin.running.proxy.preview_port
    status, payload = await admin.flip()
    await assert_flipped(admin, status, payload, ["health", "smoke"])
    assert blue.paths("/probe") == []
    [hit] = [h for h in green.hits if h["path"] == "/probe"]
    assert "x-forwarded-for" in hit["headers"], hit     # it went through the proxy, not direct
    assert "x-cutover-env" not in hit["headers"] and "x-cutover-token" not in hit["headers"]


async def test_smoke_probes_use_x_cutover_env_on_the_main_listener_without_leaking_it(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    admin = await stack(blue, green, token=TOKEN,
                        gates={"smoke": [{"path": "/probe", "expect_body_contains": "green"}]})
    assert admin.running.proxy.preview_port is None
    status, payload = await admin.flip()
    await assert_flipped(admin, status, payload, ["health", "smoke"])
    assert blue.paths("/probe") == []
    [hit] = [h for h in green.hits if h["path"] == "/probe"]
    assert "x-forwarded-for" in hit["headers"], hit
    assert "x-cutover-env" not in hit["headers"], hit
    assert "x-cutover-token" not in hit["headers"], hit
    assert TOKEN not in " ".join(hit["headers"].values()), hit


async def test_smoke_probes_go_straight_to_every_green_server_without_a_preview_route(apps, stack):
    blue = await apps("blue")
    greens = [await apps("green"), await apps("green")]
    admin = await stack(blue, greens, gates={"smoke": [{"path": "/probe", "expect_body_contains": "green"}]})
    status, payload = await admin.flip()
    await assert_flipped(admin, status, payload, ["health", "smoke"])
    assert blue.paths("/probe") == []
    for green in greens:
        [hit] = [h for h in green.hits if h["path"] == "/probe"]
        assert "x-forwarded-for" not in hit["headers"], hit     # direct, not through the proxy


async def test_smoke_failing_on_one_of_several_green_servers_fails_the_gate(apps, stack):
    blue = await apps("blue")
    greens = [await apps("green"), await apps("green")]
    greens[1].statuses["/probe"] = 500
    admin = await stack(blue, greens, gates={"smoke": [{"path": "/probe"}]})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "smoke", ["health", "smoke"], "status 500")


async def test_a_failing_smoke_probe_means_no_warmup(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    admin = await stack(blue, green, gates={
        "smoke": [{"path": "/", "expect_status": 204}],
        "warmup": {"paths": ["/warm"], "requests": 3}})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "smoke", ["health", "smoke"], "expected 204")
    assert green.paths("/warm") == [] and blue.paths("/warm") == []


# --------------------------------------------------------------------------- warm-up

async def test_warmup_sends_n_requests_per_path_to_green_before_the_swap(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    admin = await stack(blue, green, gates={"warmup": {"paths": ["/a", "/b?x=1"], "requests": 4}})
    status, payload = await admin.flip()
    entry = await assert_flipped(admin, status, payload, ["health", "warmup"])
    assert "8 warm-up requests" in entry["gates"][1]["reason"]
    assert len(green.paths("/a")) == 4 and len(green.paths("/b")) == 4
    assert all(h["generation"] == 1 for h in green.hits), green.hits   # all before the swap
    assert blue.hits == []


async def test_warmup_through_the_preview_listener_reaches_only_green(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    admin = await stack(blue, green, preview_listen="127.0.0.1:0",
                        gates={"warmup": {"paths": ["/w"], "requests": 5}})
    status, payload = await admin.flip()
    await assert_flipped(admin, status, payload, ["health", "warmup"])
    hits = [h for h in green.hits if h["path"] == "/w"]
    assert len(hits) == 5 and all("x-forwarded-for" in h["headers"] for h in hits)
    assert all(h["generation"] == 1 for h in hits)
    assert blue.hits == []


async def test_warmup_path_answering_500_fails_the_gate(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    green.statuses["/boom"] = 500
    admin = await stack(blue, green, gates={"warmup": {"paths": ["/ok", "/boom"], "requests": 2}})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "warmup", ["health", "warmup"],
                         "2 of 4", "/boom", "status 500")
    assert blue.hits == []


# --------------------------------------------------------------------------- drift

async def test_drift_identical_fingerprints_pass(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    admin = await stack(blue, green, gates={"drift": {}})
    status, payload = await admin.flip()
    entry = await assert_flipped(admin, status, payload, ["health", "drift"])
    assert "match" in entry["gates"][1]["reason"]
    assert blue.paths() == ["/__fingerprint"] and green.paths() == ["/__fingerprint"]


async def test_drift_a_differing_key_fails_with_the_diff(apps, stack):
    blue, green = await apps("blue"), await apps("green", db="mysql")
    admin = await stack(blue, green, gates={"drift": {"ignore": ["version", "build"]}})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "drift", ["health", "drift"],
                         'db: live "pg" != target "mysql"')


async def test_drift_a_differing_nested_key_fails_with_its_dotted_name(apps, stack):
    blue = await apps("blue")
    green = await apps("green", features={"a": True, "b": True})
    admin = await stack(blue, green, gates={"drift": {}})
    status, payload = await admin.flip()
    failed = await assert_refused(admin, status, payload, "drift", ["health", "drift"],
                                  "features.b: live false != target true")
    assert "features.a" not in failed["reason"]


async def test_drift_ignored_keys_and_nested_keys_under_an_ignored_prefix_pass(apps, stack):
    blue = await apps("blue")
    green = await apps("green", version="v2", build="77", features={"a": False, "b": False, "c": 1})
    admin = await stack(blue, green, gates={"drift": {"ignore": ["version", "build", "features"]}})
    status, payload = await admin.flip()
    entry = await assert_flipped(admin, status, payload, ["health", "drift"])
    assert "ignoring" in entry["gates"][1]["reason"]


async def test_drift_ignoring_a_nested_key_by_its_dotted_name(apps, stack):
    blue = await apps("blue")
    green = await apps("green", features={"a": False, "b": False})
    admin = await stack(blue, green, gates={"drift": {"ignore": ["features.a"]}})
    status, payload = await admin.flip()
    await assert_flipped(admin, status, payload, ["health", "drift"])


async def test_drift_a_key_only_in_the_target_fails(apps, stack):
    blue, green = await apps("blue"), await apps("green", cache="redis")
    admin = await stack(blue, green, gates={"drift": {}})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "drift", ["health", "drift"], "cache", "only in target")


async def test_drift_a_key_only_in_live_fails(apps, stack):
    blue, green = await apps("blue", cache="redis"), await apps("green")
    admin = await stack(blue, green, gates={"drift": {}})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "drift", ["health", "drift"], "cache", "missing in target")


async def test_drift_a_fingerprint_answering_500_fails_naming_the_target(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    green.fingerprint_status = 500
    admin = await stack(blue, green, gates={"drift": {}})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "drift", ["health", "drift"],
                         "no fingerprint from green", "status 500")


async def test_drift_a_fingerprint_answering_500_fails_naming_live(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    blue.fingerprint_status = 500
    admin = await stack(blue, green, gates={"drift": {}})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "drift", ["health", "drift"],
                         "no fingerprint from blue", "status 500")


async def test_drift_uses_the_configured_path(apps, stack):
    blue, green = await apps("blue"), await apps("green", db="mysql")
    admin = await stack(blue, green, gates={"drift": {"path": "/__fingerprint?full=1"}})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "drift", ["health", "drift"], "db:")


async def test_a_failing_drift_means_no_schema_smoke_or_warmup(apps, stack, tmp_path):
    marker = tmp_path / "schema-ran"
    blue, green = await apps("blue"), await apps("green", version="v2", db="mysql")
    admin = await stack(blue, green, gates={
        "drift": {"ignore": ["version"]},
        "schema": {"command": f"touch '{marker}'"},
        "smoke": [{"path": "/smoke"}],
        "warmup": {"paths": ["/warm"], "requests": 3}})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "drift", ["health", "drift"], "db:")
    assert not marker.exists()
    assert green.paths() == ["/__fingerprint"]        # no smoke probe, no warm-up request
    assert blue.paths() == ["/__fingerprint"]


# --------------------------------------------------------------------------- schema

async def test_schema_without_command_or_attestation_fails(apps, stack):
    blue, green = await apps("blue"), await apps("green", version="v2")
    admin = await stack(blue, green, gates={"schema": {}})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "schema", ["health", "schema"],
                         "no attestation for v1 -> v2")


async def test_schema_attestation_for_the_pair_makes_it_pass(apps, stack):
    blue, green = await apps("blue"), await apps("green", version="v2")
    admin = await stack(blue, green, gates={"schema": {}})
    answer = await admin.ok("/v1/schema/attest", {"from_version": "v1", "to_version": "v2", "by": "ci"})
    assert answer["generation"] == 1 and answer["live"] == "blue"      # attesting is not a switch
    assert [(a["from_version"], a["to_version"], a["by"]) for a in answer["attestations"]] == [("v1", "v2", "ci")]
    status, payload = await admin.flip()
    entry = await assert_flipped(admin, status, payload, ["health", "schema"])
    assert "v1 -> v2" in entry["gates"][1]["reason"] and "ci" in entry["gates"][1]["reason"]


async def test_schema_attestation_for_another_pair_does_not_count(apps, stack):
    blue, green = await apps("blue"), await apps("green", version="v2")
    admin = await stack(blue, green, gates={"schema": {}})
    await admin.ok("/v1/schema/attest", {"from_version": "v1", "to_version": "v3", "by": "ci"})
    await admin.ok("/v1/schema/attest", {"from_version": "v2", "to_version": "v1", "by": "ci"})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "schema", ["health", "schema"],
                         "no attestation for v1 -> v2")


async def test_schema_attestation_is_checked_against_the_token(apps, stack):
    blue, green = await apps("blue"), await apps("green", version="v2")
    admin = await stack(blue, green, token=TOKEN, gates={"schema": {}})
    anonymous = Admin(admin.session, admin.running)
    status, payload = await anonymous.call("POST", "/v1/schema/attest",
                                           {"from_version": "v1", "to_version": "v2"})
    assert status == 401 and payload["code"] == "unauthorized"
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "schema", ["health", "schema"], "no attestation")


async def test_schema_command_exit_0_passes(apps, stack):
    blue, green = await apps("blue"), await apps("green", version="v2")
    admin = await stack(blue, green, gates={"schema": {"command": "exit 0"}})
    status, payload = await admin.flip()
    entry = await assert_flipped(admin, status, payload, ["health", "schema"])
    assert "v1 -> v2" in entry["gates"][1]["reason"]


async def test_schema_command_exit_3_fails_naming_the_exit_status(apps, stack):
    blue, green = await apps("blue"), await apps("green", version="v2")
    admin = await stack(blue, green, gates={"schema": {"command": "echo incompatible column; exit 3"}})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "schema", ["health", "schema"],
                         "exited 3", "incompatible column")


async def test_schema_command_sees_the_versions_and_environments(apps, stack, tmp_path):
    out = tmp_path / "schema-env.txt"
    blue, green = await apps("blue"), await apps("green", version="v2")
    admin = await stack(blue, green, gates={"schema": {"command":
        f'echo "$CUTOVER_FROM_VERSION $CUTOVER_TO_VERSION $CUTOVER_FROM_ENV $CUTOVER_TO_ENV" > \'{out}\''}})
    status, payload = await admin.flip()
    await assert_flipped(admin, status, payload, ["health", "schema"])
    assert out.read_text().strip() == "v1 v2 blue green"


async def test_schema_attestation_wins_over_a_failing_command(apps, stack, tmp_path):
    marker = tmp_path / "ran"
    blue, green = await apps("blue"), await apps("green", version="v2")
    admin = await stack(blue, green, gates={"schema": {"command": f"touch '{marker}'; exit 1"}})
    await admin.ok("/v1/schema/attest", {"from_version": "v1", "to_version": "v2", "by": "dba"})
    status, payload = await admin.flip()
    await assert_flipped(admin, status, payload, ["health", "schema"])
    assert not marker.exists()


async def test_schema_fails_when_a_fingerprint_has_no_version(apps, stack):
    blue = await apps("blue")
    green = await apps("green", fingerprint={"db": "pg"})
    admin = await stack(blue, green, gates={"schema": {"command": "exit 0"}})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "schema", ["health", "schema"], "version", "green")


async def test_schema_attestations_survive_a_restart(apps, stack, tmp_path):
    blue, green = await apps("blue"), await apps("green", version="v2")
    first = await stack(blue, green, gates={"schema": {}})
    await first.ok("/v1/schema/attest", {"from_version": "v1", "to_version": "v2", "by": "ci"})
    await first.running.stop(0.5)
    second = await stack(blue, green, gates={"schema": {}})
    assert (tmp_path / "state.json").exists()
    status, payload = await second.flip()
    entry = await assert_flipped(second, status, payload, ["health", "schema"])
    assert "by ci" in entry["gates"][1]["reason"]


async def test_a_failing_schema_gate_means_no_smoke_or_warmup(apps, stack):
    blue, green = await apps("blue"), await apps("green", version="v2")
    admin = await stack(blue, green, gates={
        "drift": {"ignore": ["version"]},
        "schema": {"command": "exit 3"},
        "smoke": [{"path": "/smoke"}],
        "warmup": {"paths": ["/warm"], "requests": 3}})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "schema", ["health", "drift", "schema"], "exited 3")
    assert set(green.paths()) == {"/__fingerprint"} and set(blue.paths()) == {"/__fingerprint"}


# --------------------------------------------------------------------------- all together

async def test_every_gate_passing_is_listed_in_the_history_entry(apps, stack, tmp_path):
    blue, green = await apps("blue"), await apps("green", version="v2", build="9")
    admin = await stack(blue, green, preview_listen="127.0.0.1:0", gates={
        "drift": {"ignore": ["version", "build"]},
        "schema": {"command": "exit 0"},
        "smoke": [{"path": "/", "expect_status": 200, "expect_body_contains": "green"}],
        "warmup": {"paths": ["/warm"], "requests": 3}})
    status, payload = await admin.flip({"reason": "release 2"})
    entry = await assert_flipped(admin, status, payload, ["health", "drift", "schema", "smoke", "warmup"])
    assert entry["reason"] == "release 2" and entry.get("forced") is False
    assert len(green.paths("/warm")) == 3 and blue.paths("/warm") == []
    assert all(h["generation"] == 1 for h in green.hits)
    # traffic now goes to green
    async with admin.session.get(f"http://127.0.0.1:{admin.running.proxy.port}/") as resp:
        assert (resp.status, await resp.text()) == (200, "green\n")


async def test_force_skips_every_gate(apps, stack, tmp_path):
    marker = tmp_path / "schema-ran"
    blue, green = await apps("blue"), await apps("green", version="v2", db="mysql")
    green.fingerprint_status = 500
    green.statuses["/"] = 500
    admin = await stack(blue, green, gates={
        "drift": {},
        "schema": {"command": f"touch '{marker}'; exit 3"},
        "smoke": [{"path": "/", "expect_body_contains": "purple"}],
        "warmup": {"paths": ["/warm"], "requests": 3}})
    status, payload = await admin.flip({"force": True, "reason": "break glass"})
    assert status == 200, payload
    assert (payload["live"], payload["generation"]) == ("green", 2)
    assert admin.running.proxy.router.route.live == "green"
    assert green.hits == [] and blue.hits == [] and not marker.exists()
    [entry] = [e for e in await admin.events() if e["action"] == "flip"]
    assert entry["forced"] is True and not entry.get("gates")


async def test_force_skips_the_health_gate_too(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    admin = await stack(blue, green, gates={"smoke": [{"path": "/"}]})
    green.health_status = 500
    await eventually(lambda: _unhealthy(admin, "green"))
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "health", ["health"])
    status, payload = await admin.flip({"force": True})
    assert status == 200 and payload["live"] == "green", payload


# --------------------------------------------------------------------------- health

async def _unhealthy(admin: Admin, env: str) -> bool:
    st = await admin.status()
    return any(not s["healthy"] for s in st["environments"][env]["servers"])


async def test_an_unhealthy_green_server_fails_first_and_no_other_gate_runs(apps, stack, tmp_path):
    marker = tmp_path / "schema-ran"
    blue = await apps("blue")
    greens = [await apps("green"), await apps("green")]
    greens[1].health_status = 500
    admin = await stack(blue, greens, preview_listen="127.0.0.1:0", gates={
        "drift": {},
        "schema": {"command": f"touch '{marker}'"},
        "smoke": [{"path": "/"}],
        "warmup": {"paths": ["/warm"], "requests": 3}})
    await eventually(lambda: _unhealthy(admin, "green"))
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "health", ["health"],
                         greens[1].address)
    assert greens[0].address not in payload["gates"][0]["reason"]
    assert not marker.exists()
    assert blue.hits == [] and greens[0].hits == [] and greens[1].hits == []


# --------------------------------------------------------------------------- rollback

async def test_rollback_runs_only_the_health_gate(apps, stack, tmp_path):
    marker = tmp_path / "schema-ran"
    blue, green = await apps("blue", db="mysql"), await apps("green", version="v2")
    admin = await stack(blue, green, preview_listen="127.0.0.1:0", gates={
        "drift": {},
        "schema": {"command": f"touch '{marker}'; exit 3"},
        "smoke": [{"path": "/", "expect_body_contains": "purple"}],
        "warmup": {"paths": ["/warm"], "requests": 2}})
    green.statuses["/warm"] = 500
    await admin.ok("/v1/flip", {"force": True})
    blue.hits.clear()
    green.hits.clear()
    status, payload = await admin.call("POST", "/v1/rollback", {"reason": "bad release"})
    assert status == 200, payload
    assert (payload["live"], payload["previous"], payload["generation"]) == ("blue", "green", 3)
    assert admin.running.proxy.router.route.live == "blue"
    assert blue.hits == [] and green.hits == [] and not marker.exists()
    [entry] = [e for e in await admin.events() if e["action"] == "rollback"]
    assert [g["gate"] for g in entry["gates"]] == ["health"]
    assert entry["gates"][0]["passed"] is True


async def test_rollback_to_an_unhealthy_previous_fails_its_health_gate(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    admin = await stack(blue, green, gates={"smoke": [{"path": "/"}]})
    status, payload = await admin.flip()
    assert status == 200, payload
    blue.health_status = 500
    await eventually(lambda: _unhealthy(admin, "blue"))
    status, payload = await admin.call("POST", "/v1/rollback", {})
    assert status == 409 and payload["code"] == "gate_failed", payload
    assert [(g["gate"], g["passed"]) for g in payload["gates"]] == [("health", False)]
    assert blue.address in payload["gates"][0]["reason"]
    st = await admin.status()
    assert (st["live"], st["generation"]) == ("green", 2)


# --------------------------------------------------------------------------- around the gates

async def test_gates_through_x_cutover_env_are_not_held_so_hold_flip_resume_works(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    admin = await stack(blue, green, token=TOKEN, gates={
        "smoke": [{"path": "/", "expect_body_contains": "green"}],
        "warmup": {"paths": ["/warm"], "requests": 2}})
    await admin.ok("/v1/hold", {"timeout": 10})
    status, payload = await admin.flip()          # bounded by Admin.call's 2.5 s
    await assert_flipped(admin, status, payload, ["health", "smoke", "warmup"])
    assert payload["held"] is True
    resumed = await admin.ok("/v1/resume")
    assert resumed["held"] is False


async def test_warmup_through_the_preview_listener_spreads_over_the_green_servers(apps, stack):
    blue = await apps("blue")
    greens = [await apps("green"), await apps("green")]
    admin = await stack(blue, greens, preview_listen="127.0.0.1:0",
                        gates={"warmup": {"paths": ["/w"], "requests": 6}})
    status, payload = await admin.flip()
    await assert_flipped(admin, status, payload, ["health", "warmup"])
    counts = [len(g.paths("/w")) for g in greens]
    assert sum(counts) == 6 and all(counts), counts
    assert blue.hits == []


async def test_attest_validates_its_body(apps, stack):
    blue, green = await apps("blue"), await apps("green", version="v2")
    admin = await stack(blue, green, gates={"schema": {}})
    for body in ({"to_version": "v2"}, {"from_version": "v1", "to_version": ""},
                 {"from_version": "v1", "to_version": 2}, {"from_version": "v1", "to_version": "v2", "by": 1},
                 {"from_version": "v1", "to_version": "v2", "extra": True}):
        status, payload = await admin.call("POST", "/v1/schema/attest", body)
        assert status == 400 and payload["code"] == "bad_request", (body, payload)
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "schema", ["health", "schema"], "no attestation")


async def test_drift_compares_every_server_of_the_target(apps, stack):
    blue = await apps("blue")
    greens = [await apps("green"), await apps("green", db="mysql")]
    admin = await stack(blue, greens, gates={"drift": {}})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "drift", ["health", "drift"],
                         f'{greens[1].address}: 1 difference(s): db: live "pg" != target "mysql"')
    assert greens[0].paths("/__fingerprint") and greens[1].paths("/__fingerprint")


async def test_smoke_through_the_preview_listener_reaches_every_green_server(apps, stack):
    blue = await apps("blue")
    greens = [await apps("green"), await apps("green")]
    greens[1].statuses["/probe"] = 500
    admin = await stack(blue, greens, preview_listen="127.0.0.1:0", gates={"smoke": [{"path": "/probe"}]})
    status, payload = await admin.flip()
    await assert_refused(admin, status, payload, "smoke", ["health", "smoke"], "status 500")
    assert greens[1].paths("/probe")     # the bad copy was probed, not skipped by the balancer


async def test_drift_and_schema_ask_each_server_for_its_fingerprint_once(apps, stack):
    blue, green = await apps("blue"), await apps("green")
    admin = await stack(blue, green, gates={"drift": {"ignore": ["version", "build"]},
                                            "schema": {"command": "exit 0"}})
    status, payload = await admin.flip()
    await assert_flipped(admin, status, payload, ["health", "drift", "schema"])
    assert blue.paths("/__fingerprint") == ["/__fingerprint"]
    assert green.paths("/__fingerprint") == ["/__fingerprint"]


async def test_lock_answers_at_once_while_a_flips_gates_run_and_the_flip_then_refuses(make_stack):
    running = await make_stack(gates={"smoke": [{"path": "/slow?s=1"}]})
    async with aiohttp.ClientSession() as session:
        flip = asyncio.create_task(post(session, running, "/v1/flip"))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        status, body = await post(session, running, "/v1/lock", {"reason": "freeze"})
        assert status == 200 and body["locked"] is True
        assert time.monotonic() - started < 0.5        # not queued behind the gates
        status, body = await asyncio.wait_for(flip, 5)
    assert status == 409 and body["code"] == "locked"
    assert running.controller.state.live == "blue"


async def test_a_flip_whose_route_moved_during_its_gates_is_a_conflict(make_stack):
    running = await make_stack(gates={"smoke": [{"path": "/slow?s=0.6"}]})
    async with aiohttp.ClientSession() as session:
        flip = asyncio.create_task(post(session, running, "/v1/flip"))
        await asyncio.sleep(0.2)
        assert (await post(session, running, "/v1/flip", {"force": True}))[0] == 200
        status, body = await asyncio.wait_for(flip, 5)
    assert status == 409 and body["code"] == "conflict" and body["generation"] == 2


async def test_a_flip_whose_target_servers_were_replaced_during_its_gates_is_a_conflict(make_stack):
    running = await make_stack(gates={"smoke": [{"path": "/slow?s=0.6"}]})
    green = str(running.controller.config.environments["green"].servers[0])
    async with aiohttp.ClientSession() as session:
        flip = asyncio.create_task(post(session, running, "/v1/flip"))
        await asyncio.sleep(0.2)
        async with session.put(f"http://127.0.0.1:{running.admin_port}/v1/environments/green/servers",
                               json={"servers": [green, "127.0.0.1:9"]}) as resp:
            assert resp.status == 200        # a list the gates did not check
        status, body = await asyncio.wait_for(flip, 5)
    assert status == 409 and body["code"] == "conflict" and "server lists changed" in body["error"], body
    assert running.controller.state.live == "blue"
