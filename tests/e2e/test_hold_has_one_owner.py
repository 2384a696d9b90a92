"""A hold has one owner: the Controller keeps its deadline and runs the one timer that ends it.

The data plane only holds and releases (Change(hold=Hold(...)) through the plane); it shows
the deadline it was given in its snapshots and never ends a hold by itself. A hold saved
before a stop holds again after the restart until the same deadline; the stopped process
records no resume.
"""

from __future__ import annotations

import asyncio
import json

from tests.support.adminapi import JsonAdmin as Admin
from tests.support.wait import eventually


def saved(tmp_path) -> dict:
    return json.loads((tmp_path / "state.json").read_text())


async def test_the_data_plane_shows_the_controllers_deadline(make_stack, admin_session):
    running = await make_stack()
    answer = await Admin(admin_session, running.admin_port).ok("/v1/hold", {"timeout": 30})
    router = running.controller.plane.snapshot().router
    assert router.held and router.hold_until == running.controller.state.hold_until
    assert answer["hold_until"] is not None


async def test_a_hold_saved_before_a_restart_holds_again_until_the_same_deadline(make_stack, admin_session,
                                                                                 tmp_path):
    first = await make_stack()
    held = await Admin(admin_session, first.admin_port).ok("/v1/hold", {"timeout": 30})
    deadline = first.controller.state.hold_until
    await first.stop(0.5)
    assert saved(tmp_path)["held"] is True and saved(tmp_path)["hold_until"] == deadline

    second = await make_stack()
    status = await Admin(admin_session, second.admin_port).status()
    assert status["held"] is True and status["hold_until"] == held["hold_until"]
    assert second.controller.plane.snapshot().router.hold_until == deadline


async def test_a_stopped_process_records_no_resume_and_the_next_start_does(make_stack, admin_session, tmp_path):
    first = await make_stack()
    await Admin(admin_session, first.admin_port).ok("/v1/hold", {"timeout": 0.2})
    await first.stop(0.5)
    await asyncio.sleep(0.4)                            # past the deadline: nobody is running to end it
    state = saved(tmp_path)
    assert state["held"] is True and [e["action"] for e in state["history"]] == ["hold"]

    second = await make_stack()
    api = Admin(admin_session, second.admin_port)
    assert (await api.status())["held"] is False

    async def recorded():
        events = await api.events()
        return events if len(events) == 2 else None
    events = await eventually(recorded)
    assert (events[-1]["action"], events[-1]["reason"]) == ("resume", "hold timeout (expired while cutover was "
                                                                      "stopped)")


async def test_a_newer_hold_is_not_ended_by_the_deadline_of_the_one_it_replaced(make_stack, admin_session):
    running = await make_stack()
    api = Admin(admin_session, running.admin_port)
    await api.ok("/v1/hold", {"timeout": 0.2})
    await api.ok("/v1/hold", {"timeout": 30})
    await asyncio.sleep(0.4)                            # past the first deadline
    assert (await api.status())["held"] is True
    assert [e["action"] for e in await api.events()] == ["hold", "hold"]


async def test_a_late_hold_timeout_record_does_not_undo_a_newer_hold(make_stack):
    running = await make_stack()
    controller = running.controller
    await controller.hold(30)
    await controller._end_hold("hold timeout")      # the expiry of an older hold, handled late
    assert controller.state.held is True and running.proxy.router.held
    assert [e["action"] for e in controller.state.history] == ["hold"]


async def test_the_deadline_ends_the_hold_through_the_plane_and_records_the_resume(make_stack, admin_session):
    running = await make_stack()
    api = Admin(admin_session, running.admin_port)
    await api.ok("/v1/hold", {"timeout": 0.1})

    async def resumed():
        events = await api.events()
        return events if len(events) == 2 else None
    events = await eventually(resumed)
    assert (events[-1]["action"], events[-1]["reason"], events[-1]["actor"]) == ("resume", "hold timeout", "cutover")
    assert running.controller.state.held is False and running.controller.state.hold_until is None
    assert not running.controller.plane.snapshot().router.held


async def test_a_saved_hold_is_back_on_before_the_listener_accepts(make_stack, admin_session, monkeypatch):
    first = await make_stack()
    await Admin(admin_session, first.admin_port).ok("/v1/hold", {"timeout": 30})
    await first.stop(0.5)

    from admin.controller import Controller
    ports_seen = []
    real_start = Controller.start

    async def start(self):
        ports_seen.append(self.plane.snapshot().listen)    # port 0 until the proxy listens
        await real_start(self)
    monkeypatch.setattr(Controller, "start", start)
    second = await make_stack()
    assert len(ports_seen) == 1 and ports_seen[0].endswith(":0"), ports_seen
    assert second.controller.plane.snapshot().router.held


async def test_a_timed_out_hold_whose_resume_cannot_be_saved_is_saved_again(make_stack, admin_session, monkeypatch):
    running = await make_stack()
    api = Admin(admin_session, running.admin_port)
    await api.ok("/v1/hold", {"timeout": 0.1})
    store_type = type(running.controller.store)
    real_commit = store_type.commit
    failures = []

    async def failing_twice(self, *args, **kwargs):
        if len(failures) < 2:
            failures.append(1)
            from admin.state import StateError
            raise StateError("disk full (injected)")
        return await real_commit(self, *args, **kwargs)
    monkeypatch.setattr(store_type, "commit", failing_twice)

    async def resumed():
        events = await api.events()
        return events if len(events) == 2 else None
    events = await eventually(resumed, timeout=6)
    assert len(failures) == 2
    assert (events[-1]["action"], events[-1]["reason"]) == ("resume", "hold timeout")
    assert running.controller.state.held is False
    assert not running.controller.plane.snapshot().router.held
    assert saved_state_held(running) is False


def saved_state_held(running) -> bool:
    return json.loads(running.controller.store.path.read_text())["held"]
