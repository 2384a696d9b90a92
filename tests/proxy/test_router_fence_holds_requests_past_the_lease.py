"""Router.fence without sockets: a fleet replica serves by its route only while its lease is
known to live (SPEC §9.2 fencing). A request that starts past the fence waits — it never goes by
the route it would have read then — and the next fence ahead starts every waiting request again,
in arrival order, by the route as it is at that moment; a fence lifted to inf (etcd not
answering: fail static) starts them too. The wait is bounded like a hold's; a client that goes
away leaves the queue; a shutdown refuses what still waits, with nothing sent upstream.
"""

from __future__ import annotations

import math
import time

from proxy.downstream import ClientConnection
from proxy.route import Route
from tests.support.fakes import FakeTransport, Rig

GREEN = Route(generation=2, live="green", previous="blue", environments=("blue", "green"))
REQUEST = b"GET /fenced HTTP/1.1\r\nHost: h\r\n\r\n"


async def test_a_router_without_a_fence_serves_as_always():
    rig = Rig()
    router = rig.proxy.router
    assert router.fence_until == math.inf
    rig.send(REQUEST)
    assert rig.up_t.take().startswith(b"GET /fenced HTTP/1.1\r\n")
    assert router.snapshot().fenced_requests == 0


async def test_a_request_started_past_the_fence_waits_and_goes_by_the_route_the_next_fence_finds():
    rig = Rig()
    router = rig.proxy.router
    router.fence(time.monotonic() - 1)          # the lease may have run out
    rig.send(REQUEST)
    assert rig.up_t.take() == b"" and router.snapshot().fenced_requests == 1   # not sent by blue
    router.swap(GREEN)                           # what re-reading the fleet's state brought
    assert router.fence(time.monotonic() + 5) == 1
    rig.proxy.flush_due()
    _, green = rig.ups["green"]
    assert green.take().startswith(b"GET /fenced HTTP/1.1\r\n") and rig.up_t.take() == b""
    assert router.snapshot().fenced_requests == 0
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ngreen", env="green")
    assert rig.client_t.take().endswith(b"\r\n\r\ngreen")


async def test_a_fence_already_past_starts_nobody_and_inf_starts_everybody():
    rig = Rig()
    router = rig.proxy.router
    router.fence(time.monotonic() - 2)
    rig.send(REQUEST)
    assert router.fence(time.monotonic() - 1) == 0 and router.snapshot().fenced_requests == 1
    assert router.fence(math.inf) == 1           # etcd does not answer: fail static, serve on
    rig.proxy.flush_due()
    assert rig.up_t.take().startswith(b"GET /fenced HTTP/1.1\r\n")


async def test_a_request_started_before_the_fence_passed_is_not_held():
    rig = Rig()
    router = rig.proxy.router
    router.fence(time.monotonic() + 60)
    rig.send(REQUEST)
    assert rig.up_t.take().startswith(b"GET /fenced HTTP/1.1\r\n")


async def test_the_fence_queue_is_bounded_by_hold_max_queued():
    rig = Rig(hold={"max_queued": 1})
    router = rig.proxy.router
    router.fence(time.monotonic() - 1)
    rig.send(REQUEST)
    other = ClientConnection(rig.proxy)          # a second client of the same router
    other_t = FakeTransport()
    other.connection_made(other_t)
    other.data_received(REQUEST)
    rig.proxy.flush_due()
    answer = other_t.take()
    assert answer.startswith(b"HTTP/1.1 503 ") and b"hold.max_queued" in answer, answer
    assert router.snapshot().fenced_requests == 1 and rig.up_t.take() == b""


async def test_a_fenced_request_released_while_held_waits_in_the_hold_instead():
    rig = Rig()
    router = rig.proxy.router
    router.fence(time.monotonic() - 1)
    rig.send(REQUEST)
    router.hold()                                # the state re-read says: held
    assert router.fence(time.monotonic() + 5) == 1
    rig.proxy.flush_due()
    assert rig.up_t.take() == b"" and router.held_requests == 1
    assert router.resume() == 1
    rig.proxy.flush_due()
    assert rig.up_t.take().startswith(b"GET /fenced HTTP/1.1\r\n")


async def test_a_client_gone_while_fenced_leaves_the_queue():
    rig = Rig()
    router = rig.proxy.router
    router.fence(time.monotonic() - 1)
    rig.send(REQUEST)
    assert router.snapshot().fenced_requests == 1
    rig.client.connection_lost(None)
    assert router.snapshot().fenced_requests == 0
    assert router.fence(math.inf) == 0 and rig.up_t.take() == b""


async def test_a_shutdown_refuses_what_still_waits_for_the_fence_with_503():
    rig = Rig()
    router = rig.proxy.router
    router.fence(time.monotonic() - 1)
    rig.send(REQUEST)
    await rig.proxy.shutdown(0)
    answer = rig.client_t.take()
    assert answer.startswith(b"HTTP/1.1 503 ") and b"not confirmed" in answer, answer
    assert rig.up_t.take() == b"" and router.snapshot().fenced_requests == 0

