"""Server registration from CI (SPEC §12): PUT/DELETE /v1/environments/{env}/servers, `cutover servers`.

A real stack (admin.serve.start) in front of real test backends on loopback. A registration
replaces an environment's list at runtime without moving the route generation; status says
where each list comes from (servers_source); it is kept in the state file, survives a
restart, and is dropped (history says so) when the config's list it replaced changes.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from admin.serve import start as start_stack
from tests.support.cli import cutover
from tests.support.stack import proxy_config
from tests.support.traffic import Traffic
from tests.support.wait import eventually

FAST_HEALTH = {"interval": "50ms", "timeout": "1s", "healthy_after": 2, "unhealthy_after": 2}


def url(running) -> str:
    return f"http://127.0.0.1:{running.admin_port}"


async def call(session, running, method: str, path: str, body=None, headers=None):
    async with session.request(method, url(running) + path, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def status(session, running) -> dict:
    return (await call(session, running, "GET", "/v1/status"))[1]


async def body_of(session, port: int) -> str:
    async with session.get(f"http://127.0.0.1:{port}/") as resp:
        assert resp.status == 200
        return (await resp.text()).strip()


async def test_the_ci_flow_registers_green_waits_until_healthy_then_flips_to_it(make_stack, extra, session):
    running = await make_stack(health_check=FAST_HEALTH, admin={"listen": "127.0.0.1:0", "token": "t0ken"})
    a, b, _ = extra
    admin = ["--admin", url(running), "--token", "t0ken"]
    result = await cutover("servers", "green", a.address, b.address, "--wait-healthy", "10s", *admin)
    assert result.rc == 0, result.err
    assert "registered" in result.out and a.address in result.out
    result = await cutover("flip", "green", *admin)
    assert result.rc == 0, result.err
    seen = {await body_of(session, running.port) for _ in range(20)}
    assert seen == {"a", "b"}
    doc = (await cutover("status", "--json", *admin)).json()
    green = doc["environments"]["green"]
    assert green["servers_source"] == "registered"
    assert [s["address"] for s in green["servers"]] == [a.address, b.address]
    assert doc["environments"]["blue"]["servers_source"] == "config"
    # the config's green server was removed: it drained (nothing in flight) and is gone from status
    assert green["retired_servers"] == []
    events = (await cutover("history", "--json", *admin)).json()["events"]
    registered = next(e for e in events if e["action"] == "servers")
    assert registered["environment"] == "green" and registered["servers"] == [a.address, b.address]
    assert registered["removed"] == [running.controller.config.environments["green"].servers[0].__str__()]


async def test_a_registration_does_not_move_the_generation_and_delete_returns_to_the_config(
        make_stack, extra, session, backends):
    running = await make_stack(health_check=FAST_HEALTH)
    a = extra[0]
    before = await status(session, running)
    code, doc = await call(session, running, "PUT", "/v1/environments/green/servers",
                           {"servers": [{"address": a.address, "weight": 3}], "reason": "deploy 42"})
    assert code == 200 and doc["changed"] is True
    assert doc["generation"] == before["generation"]
    assert doc["environments"]["green"]["servers_source"] == "registered"
    assert doc["ack"]["complete"] is True
    # the same list again changes nothing
    code, doc = await call(session, running, "PUT", "/v1/environments/green/servers",
                           {"servers": [{"address": a.address, "weight": 3}]})
    assert code == 200 and doc["changed"] is False
    code, doc = await call(session, running, "DELETE", "/v1/environments/green/servers")
    assert code == 200 and doc["changed"] is True
    green = doc["environments"]["green"]
    assert green["servers_source"] == "config" and [s["address"] for s in green["servers"]] == [
        backends["green"].address]
    code, doc = await call(session, running, "DELETE", "/v1/environments/green/servers")
    assert code == 200 and doc["changed"] is False
    events = (await call(session, running, "GET", "/v1/history"))[1]["events"]
    assert [e["action"] for e in events[-2:]] == ["servers", "servers_reset"]
    assert events[-2]["reason"] == "deploy 42" and events[-2]["generation"] == before["generation"]


@pytest.mark.parametrize("body, code, words", [
    ({"servers": ["127.0.0.1:1", "no-port"]}, "bad_request", 'servers[1]: expected "host:port"'),
    ({"servers": [{"address": "127.0.0.1:1", "weight": 0}]}, "bad_request", "servers[0].weight"),
    ({"servers": ["127.0.0.1:1", "127.0.0.1:1"]}, "bad_request", "servers[1]"),
    ({"servers": []}, "bad_request", '"servers" must be a non-empty list'),
    ({}, "bad_request", '"servers" is required'),
    ({"servers": "127.0.0.1:1"}, "bad_request", '"servers" must be'),
])
async def test_a_bad_list_is_400_naming_the_entry_and_changes_nothing(make_stack, session, body, code, words):
    running = await make_stack()
    status_code, doc = await call(session, running, "PUT", "/v1/environments/green/servers", body)
    assert (status_code, doc["code"]) == (400, code), doc
    assert words in doc["error"]
    assert (await status(session, running))["environments"]["green"]["servers_source"] == "config"


async def test_a_server_of_the_other_environment_is_400_naming_it(make_stack, session, backends):
    running = await make_stack()
    blue = backends["blue"].address
    code, doc = await call(session, running, "PUT", "/v1/environments/green/servers", {"servers": [blue]})
    assert code == 400 and doc["code"] == "bad_request"
    assert f'servers[0]: "{blue}" is also a server of environment blue' in doc["error"]


async def test_an_unknown_environment_is_404(make_stack, session):
    running = await make_stack()
    for method, body in (("PUT", {"servers": ["127.0.0.1:1"]}), ("DELETE", None)):
        code, doc = await call(session, running, method, "/v1/environments/purple/servers", body)
        assert code == 404 and doc["code"] == "not_found" and "purple" in doc["error"]


async def test_a_lock_refuses_the_live_environment_and_allows_the_idle_one(make_stack, extra, session):
    running = await make_stack(health_check=FAST_HEALTH)
    a, b, _ = extra
    await call(session, running, "POST", "/v1/lock", {"reason": "freeze"})
    code, doc = await call(session, running, "PUT", "/v1/environments/blue/servers", {"servers": [a.address]})
    assert code == 409 and doc["code"] == "locked" and "freeze" in doc["error"]
    code, doc = await call(session, running, "PUT", "/v1/environments/green/servers", {"servers": [b.address]})
    assert code == 200 and doc["changed"] is True


async def test_an_idempotency_key_applies_a_registration_once(make_stack, extra, session):
    running = await make_stack()
    a, b, _ = extra
    key = {"Idempotency-Key": "ci-run-7"}
    first = await call(session, running, "PUT", "/v1/environments/green/servers", {"servers": [a.address]}, key)
    await call(session, running, "PUT", "/v1/environments/green/servers", {"servers": [b.address]})
    again = await call(session, running, "PUT", "/v1/environments/green/servers", {"servers": [a.address]}, key)
    assert again == first
    green = (await status(session, running))["environments"]["green"]
    assert [s["address"] for s in green["servers"]] == [b.address]


async def test_the_cli_refuses_addresses_with_reset_and_neither(make_stack):
    running = await make_stack()
    both = await cutover("servers", "green", "127.0.0.1:1", "--reset", "--admin", url(running))
    neither = await cutover("servers", "green", "--admin", url(running))
    for result in (both, neither):
        assert result.rc == 1 and result.out == "" and "servers" in result.err
    bad = await cutover("servers", "green", "nope", "--admin", url(running))
    assert bad.rc == 1 and 'servers[0]: expected "host:port"' in bad.err and "(bad_request)" in bad.err
    locked = await cutover("lock", "--admin", url(running))
    assert locked.rc == 0
    refused = await cutover("servers", "blue", "127.0.0.1:1", "--admin", url(running))
    assert refused.rc == 2 and "(locked)" in refused.err


async def test_replacing_the_live_list_under_16_keepalive_clients_fails_no_request(make_stack, extra, backends):
    running = await make_stack(health_check=FAST_HEALTH)
    a, b, _ = extra
    async with Traffic(running.port, 16) as traffic, aiohttp.ClientSession() as admin:
        seen = traffic.seen
        await eventually(lambda: seen.get("blue", 0) > 50, timeout=10)
        # every server of the live list is new: blue keeps serving until one of them is healthy
        code, doc = await call(admin, running, "PUT", "/v1/environments/blue/servers",
                               {"servers": [a.address, b.address]})
        assert code == 200, doc
        assert doc["environments"]["blue"]["retired_servers"][0]["address"] == backends["blue"].address
        await eventually(lambda: seen.get("a", 0) > 20 and seen.get("b", 0) > 20, timeout=10)
        count = seen.get("blue", 0)
        code, doc = await call(admin, running, "PUT", "/v1/environments/blue/servers", {"servers": [a.address]})
        assert code == 200
        after = dict(seen)
        await eventually(lambda: seen.get("a", 0) > after.get("a", 0) + 100, timeout=10)
        await traffic.stop()
    assert traffic.failures == []
    assert seen.get("blue", 0) - count < 50     # once a new server was healthy, blue took no new request
    history = running.controller.history()["events"]

    def drained():
        entries = [e for e in running.controller.history()["events"] if e["action"] == "servers"]
        return all("drain" in e for e in entries)
    await eventually(drained, timeout=10)
    entries = [e for e in running.controller.history()["events"] if e["action"] == "servers"]
    assert [e["removed"] for e in entries] == [[backends["blue"].address], [b.address]]
    for entry in entries:
        assert entry["forced_closed"] == 0 and entry["dropped"] == 0
        assert entry["drain"]["servers"] == entry["removed"]
    assert history      # the history was readable during the run
    live = running.controller.status()["environments"]["blue"]
    assert [s["address"] for s in live["servers"]] == [a.address] and live["retired_servers"] == []


async def test_a_registration_survives_a_restart_and_is_dropped_when_the_config_list_changes(
        tmp_path, extra, backends, session):
    a, b, c = extra
    config = proxy_config(tmp_path, backends, health_check=FAST_HEALTH)
    running = await start_stack(config)
    try:
        code, _ = await call(session, running, "PUT", "/v1/environments/green/servers",
                             {"servers": [a.address, b.address]})
        assert code == 200
    finally:
        await running.stop(0.5)
    saved = json.loads((tmp_path / "state.json").read_text())
    assert [s["address"] for s in saved["registrations"]["green"]["servers"]] == [a.address, b.address]

    running = await start_stack(config)
    try:
        green = (await status(session, running))["environments"]["green"]
        assert green["servers_source"] == "registered"
        assert [s["address"] for s in green["servers"]] == [a.address, b.address]
        # the registered servers serve at once after the restart (as the config's would)
        assert all(s["healthy"] for s in green["servers"]) and green["retired_servers"] == []
    finally:
        await running.stop(0.5)

    edited = proxy_config(tmp_path, {"blue": backends["blue"], "green": c}, health_check=FAST_HEALTH)
    running = await start_stack(edited)
    try:
        green = (await status(session, running))["environments"]["green"]
        assert green["servers_source"] == "config" and [s["address"] for s in green["servers"]] == [c.address]
        event = running.controller.history()["events"][-1]
        assert event["action"] == "servers_reset" and event["environment"] == "green"
        assert event["reason"].startswith("config changed") and event["actor"] == "cutover"
        assert event["servers"] == [c.address]
    finally:
        await running.stop(0.5)
    assert "registrations" not in json.loads((tmp_path / "state.json").read_text())


async def test_with_two_workers_every_worker_serves_the_registered_list_also_after_a_restart(
        make_stack, extra, session):
    running = await make_stack(workers=2, health_check={"interval": "100ms", "timeout": "5s"})
    a, b, _ = extra
    code, doc = await call(session, running, "PUT", "/v1/environments/blue/servers",
                           {"servers": [a.address, b.address]})
    assert code == 200 and doc["ack"]["complete"] and len(doc["ack"]["acked"]) == 2

    async def served_by_each_worker(names: set[str]) -> bool:
        seen = set()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
            for _ in range(40):
                seen.add(await body_of(fresh, running.port))
        return seen == names
    await eventually(lambda: served_by_each_worker({"a", "b"}), timeout=15)
    plane = running.plane
    victim = plane.workers[1]
    old = victim.pid
    victim.process.kill()
    await eventually(lambda: plane.workers[1].alive and plane.workers[1].pid != old, timeout=15)
    # fresh connections reach both workers (SO_REUSEPORT); none is answered by the old list
    for _ in range(3):
        assert await served_by_each_worker({"a", "b"})
    blue = (await status(session, running))["environments"]["blue"]
    assert [s["address"] for s in blue["servers"]] == [a.address, b.address] and blue["retired_servers"] == []
