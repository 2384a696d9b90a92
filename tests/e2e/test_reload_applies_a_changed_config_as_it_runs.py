"""Reload (SPEC §12): POST /v1/reload and `cutover reload` re-read the config file and apply it.

A real stack (admin.serve.start) started from a config file on disk, in front of real test
backends on loopback. The file is edited, then reloaded: what changed applies as the router
runs (server lists drained and counted, timeouts, limits, health checks, the access log, the
admin token, a renewed certificate), the answer and the ``reload`` history event name the keys; an invalid file
answers 400 config_invalid naming the key and changes nothing; a key that needs a restart
answers 409 restart_required naming it and changes nothing; an unchanged file records
nothing. SIGHUP and workers: 2 are in test_reload_reaches_every_worker.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import aiohttp
import pytest

from admin.config import load_config
from admin.serve import start as start_stack
from proxy.tls import certificate_names
from tests.support.certs import client_context
from tests.support.cli import cutover
from tests.support.logfile import logged_lines
from tests.support.rawhttp import connect, read_response
from tests.support.traffic import Traffic
from tests.support.wait import eventually

FAST_HEALTH = {"interval": "50ms", "timeout": "1s", "healthy_after": 2, "unhealthy_after": 2}


class Site:
    """Site: a config file and the stack started from it; ``write`` replaces the file."""

    def __init__(self, tmp_path: Path, backends: dict) -> None:
        self.path = tmp_path / "cutover.yaml"
        self.doc = {
            "listen": "127.0.0.1:0",
            "admin": {"listen": "127.0.0.1:0", "auth": "none"},
            "environments": {name: {"servers": [b.address]} for name, b in backends.items()},
            "live": "blue",
            "state_file": str(tmp_path / "state.json"),
            "health_check": FAST_HEALTH,
            "drain_timeout": "5s",
        }
        self.running = None

    def write(self, **changes) -> None:
        self.doc.update(changes)
        self.path.write_text(json.dumps(self.doc))      # JSON is YAML

    async def start(self):
        self.write()
        self.running = await start_stack(load_config(self.path))
        return self.running

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.running.admin_port}"

    async def reload(self, session, headers=None) -> tuple[int, dict]:
        async with session.post(self.admin + "/v1/reload", json={}, headers=headers) as resp:
            return resp.status, await resp.json()


@pytest.fixture
async def site(tmp_path, backends):
    made = Site(tmp_path, backends)
    yield made
    if made.running is not None:
        await made.running.stop(0.5)


def events(running, action: str) -> list[dict]:
    return [e for e in running.controller.history()["events"] if e["action"] == action]


async def test_reload_adds_and_removes_servers_under_32_keepalive_clients_with_no_failed_request(
        site, extra, backends):
    a, b, _ = extra
    site.doc["environments"]["blue"]["servers"] = [backends["blue"].address, a.address]
    running = await site.start()
    async with Traffic(running.port, 32) as traffic, aiohttp.ClientSession() as admin:
        seen = traffic.seen
        await eventually(lambda: seen.get("blue", 0) > 50 and seen.get("a", 0) > 50, timeout=10)
        # blue's first server goes, b comes: a serves on, b takes traffic once healthy
        site.doc["environments"]["blue"]["servers"] = [a.address, b.address]
        site.write()
        code, doc = await site.reload(admin)
        assert code == 200, doc
        assert doc["changed"] is True and doc["reloaded"] == ["environments.blue.servers"]
        assert doc["ack"]["complete"] is True
        count = seen.get("blue", 0)
        await eventually(lambda: seen.get("b", 0) > 50, timeout=10)
        await traffic.stop()
    assert traffic.failures == []
    assert seen.get("blue", 0) - count < 40      # the removed server took no new request once b was healthy
    [event] = events(running, "reload")
    assert event["reloaded"] == ["environments.blue.servers"] and event["config"] == str(site.path)
    await eventually(lambda: "drain" in events(running, "reload")[0], timeout=10)
    [event] = events(running, "reload")
    assert event["drain"]["servers"] == [backends["blue"].address]
    assert event["forced_closed"] == 0 and event["dropped"] == 0
    blue = running.controller.status()["environments"]["blue"]
    assert [s["address"] for s in blue["servers"]] == [a.address, b.address] and blue["retired_servers"] == []
    assert blue["servers_source"] == "config"


async def test_an_invalid_file_answers_400_naming_the_key_and_changes_nothing(site, session):
    running = await site.start()
    site.write(timeouts={"connect": "-1s"})
    code, doc = await site.reload(session)
    assert code == 400 and doc["code"] == "config_invalid", doc
    assert doc["errors"][0]["key"] == "timeouts.connect" and "timeouts.connect" in doc["error"]
    assert "nothing changed" in doc["error"]
    assert running.proxy.connect_timeout == 2.0
    site.path.write_text("listen: [unclosed\n")
    code, doc = await site.reload(session)
    assert code == 400 and doc["code"] == "config_invalid" and doc["errors"][0]["line"] == 2, doc
    assert events(running, "reload") == []
    async with session.get(site.admin + "/metrics") as resp:
        metrics = await resp.text()
    assert 'cutover_reloads_total{result="config_invalid"} 2.0' in metrics
    assert 'cutover_reloads_total{result="applied"} 0.0' in metrics


async def test_keys_that_need_a_restart_answer_409_naming_each_and_nothing_changes(site, session):
    running = await site.start()
    site.write(listen="127.0.0.1:1", workers=2, timeouts={"connect": "3s"}, state_file=site.doc["state_file"] + "2")
    code, doc = await site.reload(session)
    assert code == 409 and doc["code"] == "restart_required", doc
    assert doc["keys"] == ["listen", "state_file", "workers"]
    assert all(key in doc["error"] for key in doc["keys"])
    assert running.proxy.connect_timeout == 2.0 and events(running, "reload") == []
    result = await cutover("reload", "--admin", site.admin)
    assert result.rc == 2 and "(restart_required)" in result.err and "listen" in result.err


async def test_an_unchanged_file_reloads_nothing_and_records_nothing(site, session):
    running = await site.start()
    site.write(drain_timeout=5)                  # the same value, written another way
    code, doc = await site.reload(session)
    assert code == 200 and doc["changed"] is False and doc["reloaded"] == []
    assert events(running, "reload") == []
    result = await cutover("reload", "--admin", site.admin)
    assert result.rc == 0 and "unchanged" in result.out


async def test_timeouts_limits_and_health_checks_apply_to_open_connections_and_new_ones(site, session):
    running = await site.start()
    reader, writer = await connect(running.port)
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 3000 + b"\r\n\r\n"
    writer.write(big)
    assert (await asyncio.wait_for(read_response(reader), 5)).status == 200
    site.write(limits={"max_header_bytes": "2KiB"}, timeouts={"connect": "750ms"},
               health_check={**FAST_HEALTH, "path": "/status/204"})
    code, doc = await site.reload(session)
    assert code == 200, doc
    assert doc["reloaded"] == ["health_check.path", "timeouts.connect", "limits.max_header_bytes"]
    writer.write(big)                            # the open keep-alive connection's next request
    assert (await asyncio.wait_for(read_response(reader), 5)).status == 431
    writer.close()
    async with session.get(f"http://127.0.0.1:{running.port}/", headers={"X-Big": "y" * 3000}) as resp:
        assert resp.status == 431
    async with session.get(f"http://127.0.0.1:{running.port}/") as resp:
        assert resp.status == 200
    assert running.proxy.connect_timeout == 0.75 and running.proxy.health.path == "/status/204"
    result = await cutover("reload", "--admin", site.admin)
    assert result.rc == 0 and "unchanged" in result.out


async def test_a_reload_turns_the_access_log_on_and_the_next_requests_are_logged(site, session, tmp_path):
    running = await site.start()
    log_path = tmp_path / "access.log"
    site.write(access_log={"path": str(log_path), "format": "json"})
    result = await cutover("reload", "--admin", site.admin, "--reason", "turn the access log on")
    assert result.rc == 0 and result.out.strip() == "reloaded: access_log.path", result.err
    async with session.get(f"http://127.0.0.1:{running.port}/logged") as resp:
        assert resp.status == 404 or resp.status == 200

    def logged():
        return any(line["target"] == "/logged" for line in logged_lines(log_path))
    await eventually(logged, timeout=10)
    [event] = events(running, "reload")
    assert event["reason"] == "turn the access log on" and event["actor"] == "none"
    site.write(access_log={"path": None})
    code, doc = await site.reload(session)
    assert code == 200 and doc["reloaded"] == ["access_log.path"]
    assert running.proxy.access_log is None


async def test_a_reload_rotates_the_admin_token_for_the_next_request(site, session):
    site.doc["admin"] = {"listen": "127.0.0.1:0", "token": "old-t0ken"}
    await site.start()
    old, new = {"Authorization": "Bearer old-t0ken"}, {"Authorization": "Bearer new-t0ken"}
    site.write(admin={"listen": "127.0.0.1:0", "token": "new-t0ken"})
    code, doc = await site.reload(session, headers=old)
    assert code == 200 and doc["reloaded"] == ["admin.token"], doc
    assert "new-t0ken" not in json.dumps(doc)
    async with session.get(site.admin + "/v1/status", headers=old) as resp:
        assert resp.status == 401
    async with session.get(site.admin + "/v1/status", headers=new) as resp:
        assert resp.status == 200


async def test_a_registration_gives_way_when_a_reload_changes_the_config_list_it_replaced(
        site, extra, session, backends):
    a, b, c = extra
    running = await site.start()
    async with session.put(site.admin + "/v1/environments/green/servers", json={"servers": [a.address]}) as resp:
        assert resp.status == 200
    site.write(timeouts={"connect": "1s"})       # green's config list unchanged: the registration stands
    code, doc = await site.reload(session)
    assert code == 200 and doc["environments"]["green"]["servers_source"] == "registered"
    site.doc["environments"]["green"]["servers"] = [c.address]
    site.write()
    code, doc = await site.reload(session)
    assert code == 200 and doc["reloaded"] == ["environments.green.servers"], doc
    green = doc["environments"]["green"]
    assert green["servers_source"] == "config" and [s["address"] for s in green["servers"]] == [c.address]
    [reset] = events(running, "servers_reset")
    assert reset["environment"] == "green" and "config changed" in reset["reason"]
    assert running.controller.state.registrations == {}


async def test_a_renewed_certificate_is_served_to_new_connections_after_a_reload_and_open_ones_go_on(
        site, session, tls_files, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(tls_files.shop.cert, cert)
    shutil.copy(tls_files.shop.key, key)
    site.doc["tls"] = {"cert": str(cert), "key": str(key)}
    running = await site.start()
    trusting = client_context(tls_files.authority)
    old_reader, old_writer = await asyncio.open_connection("127.0.0.1", running.port, ssl=trusting,
                                                           server_hostname="shop.test")
    assert await tls_get(old_reader, old_writer) == 200
    shutil.copy(tls_files.api.cert, cert)        # renewed in place: the same paths, the config unchanged
    shutil.copy(tls_files.shop.key, key)
    code, doc = await site.reload(session)       # a key that is not the new certificate's: refused
    assert code == 400 and doc["code"] == "config_invalid" and doc["errors"][0]["key"].startswith("tls"), doc
    shutil.copy(tls_files.api.key, key)
    code, doc = await site.reload(session)
    assert code == 200 and doc["reloaded"] == ["tls"], doc
    new_reader, new_writer = await asyncio.open_connection("127.0.0.1", running.port, ssl=trusting,
                                                           server_hostname="api.test")
    assert names_served(new_writer) == ("api.test", "*.api.test")
    assert await tls_get(new_reader, new_writer) == 200
    assert await tls_get(old_reader, old_writer) == 200       # the connection made before goes on
    assert names_served(old_writer) == ("shop.test",)
    for writer in (old_writer, new_writer):
        writer.close()
    code, doc = await site.reload(session)
    assert code == 200 and doc["changed"] is False             # the files as the last reload read them
    site.doc.pop("tls")
    site.write()
    code, doc = await site.reload(session)
    assert code == 409 and doc["keys"] == ["tls"], doc         # turning TLS off closes sockets: a restart


async def tls_get(reader, writer) -> int:
    writer.write(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
    return (await asyncio.wait_for(read_response(reader), 5)).status


def names_served(writer) -> tuple[str, ...]:
    return certificate_names(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
