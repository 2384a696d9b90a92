"""The etcd client (admin/fleet/etcd.py) against a real etcd, and its decoding quirks without one.

The first half needs no socket: tables over admin/fleet/gateway.py pin what etcd's JSON gateway
does (base64, int64 as strings, fields left out at their default, cancel with compact_revision,
error documents). The second half starts a real ``etcd`` on free loopback ports
(tests/etcdserver.py; one per module where tests can share it) and checks the calls the fleet
relies on: compare-and-swap txns, leases, watches from a revision, compaction, stall detection,
endpoint failover, authentication and a 3-member cluster with a member down.
"""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest

from admin.fleet.etcd import (
    DeleteResult, EtcdAuthError, EtcdClient, EtcdOutcomeUnknown, EtcdRequestError, EtcdUnavailable,
    KeyValue, LeaseNotFound, PutResult, RangeResult, RevisionCompacted, WatchCanceled, WatchCompacted,
    WatchStalled, compare_create_revision, compare_mod_revision, compare_value, compare_version,
    delete_op, get_op, put_op,
)
from admin.fleet.gateway import (
    decode_key, encode_key, parse_error, parse_key_value, parse_status, parse_txn,
    parse_watch_message, prefix_range_end, range_request, token_rejected,
)
from tests.support.etcdserver import EtcdCluster, EtcdServer, free_port, require_etcd


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


HEADER = {"cluster_id": "15118495548433857066", "member_id": "13668033151171901709",
          "revision": "7", "raft_term": "2"}


# ---------------------------------------------------------------- decoding, no sockets


@pytest.mark.parametrize("key, value", [
    ("plain", b"v"),
    ("/cutover/shop/state", b'{"live": "blue"}'),
    ("ümlaut/κλειδί", b"\x00\xff\xfe binary \n"),
    ("empty-value", b""),
])
def test_keys_and_values_travel_as_base64_and_come_back_as_given(key, value):
    assert encode_key(key) == b64(key)
    kv = parse_key_value({"key": encode_key(key), "value": b64(value), "mod_revision": "3"})
    assert (kv.key, kv.value) == (key, value)
    assert put_op(key, value).to_json() == {"request_put": {"key": b64(key), "value": b64(value)}}


def test_a_key_that_is_not_utf8_survives_the_round_trip():
    key = decode_key(b"\xff\xferaw")
    assert base64.b64decode(encode_key(key)) == b"\xff\xferaw"


def test_int64_fields_arrive_as_strings_and_omitted_ones_are_zero():
    kv = parse_key_value({"key": b64("k"), "mod_revision": "9007199254740993", "lease": "7587869430217203213"})
    assert kv == KeyValue(key="k", value=b"", create_revision=0, mod_revision=9007199254740993,
                          version=0, lease=7587869430217203213)


def test_a_failed_txn_has_no_succeeded_field_and_reads_as_failed():
    failed = parse_txn({"header": HEADER, "responses": [
        {"response_range": {"header": {"revision": "7"}, "kvs": [
            {"key": b64("k"), "create_revision": "2", "mod_revision": "7", "version": "3", "value": b64("theirs")}],
            "count": "1"}}]})
    assert failed.succeeded is False and failed.revision == 7
    assert failed.responses == (RangeResult(kvs=(KeyValue("k", b"theirs", 2, 7, 3),), count=1),)
    assert parse_txn({"header": HEADER}).succeeded is False


def test_a_successful_txn_reports_each_op_result_in_order():
    result = parse_txn({"header": HEADER, "succeeded": True, "responses": [
        {"response_put": {"header": {"revision": "7"}}},
        {"response_delete_range": {"header": {"revision": "7"}, "deleted": "2"}},
        {"response_range": {"header": {"revision": "7"}}},
    ]})
    assert result.succeeded is True
    assert result.responses == (PutResult(revision=7), DeleteResult(deleted=2), RangeResult(kvs=(), count=0))


def test_an_empty_range_has_no_kvs_and_no_count():
    assert parse_txn({"header": HEADER, "succeeded": True,
                      "responses": [{"response_range": {"header": {"revision": "7"}}}]}).responses == (
        RangeResult(kvs=(), count=0),)


@pytest.mark.parametrize("prefix, end", [
    (b"a", b"b"),
    (b"/cutover/shop/", b"/cutover/shop0"),
    (b"a\xff", b"b"),
    (b"a\xff\xff", b"b"),
    (b"\xff\xff", b"\0"),
    (b"", b"\0"),
])
def test_a_prefix_range_ends_just_past_every_key_under_it(prefix, end):
    assert prefix_range_end(prefix) == end


def test_an_empty_prefix_ranges_over_the_whole_keyspace():
    assert range_request("", prefix=True) == {"key": b64(b"\0"), "range_end": b64(b"\0")}
    with pytest.raises(ValueError, match="must not be empty"):
        range_request("", prefix=False)


def test_watch_messages_tell_created_progress_and_events_apart():
    created = parse_watch_message({"result": {"header": HEADER, "created": True}})
    assert created.created and not created.is_progress and created.events == ()
    progress = parse_watch_message({"result": {"header": HEADER}})
    assert progress.is_progress and progress.revision == 7
    events = parse_watch_message({"result": {"header": HEADER, "events": [
        {"kv": {"key": b64("k"), "create_revision": "5", "mod_revision": "6", "version": "2", "value": b64("v")}},
        {"type": "DELETE", "kv": {"key": b64("k"), "mod_revision": "7"},
         "prev_kv": {"key": b64("k"), "mod_revision": "6", "value": b64("v")}},
    ]}})
    assert [(event.type, event.kv.key, event.revision) for event in events.events] == [
        ("PUT", "k", 6), ("DELETE", "k", 7)]
    assert events.events[0].kv.value == b"v" and events.events[1].kv.value == b""
    assert events.events[1].prev_kv.value == b"v" and not events.is_progress


def test_a_watch_canceled_for_compaction_raises_watch_compacted_with_the_compact_revision():
    message = parse_watch_message({"result": {"header": {"cluster_id": "1", "raft_term": "2"},
                                              "canceled": True, "compact_revision": "3"}})
    assert message.revision == 0      # the gateway leaves the header's revision out here
    with pytest.raises(WatchCompacted) as raised:
        message.raise_if_canceled()
    assert raised.value.compact_revision == 3


def test_a_watch_canceled_for_another_reason_raises_watch_canceled_with_it():
    message = parse_watch_message({"result": {"header": HEADER, "watch_id": "-1", "created": True,
                                              "canceled": True, "cancel_reason": "rpc error: permission denied"}})
    with pytest.raises(WatchCanceled, match="permission denied"):
        message.raise_if_canceled()


def test_an_error_line_on_a_watch_stream_ends_the_watch():
    with pytest.raises(EtcdUnavailable, match="no leader"):
        parse_watch_message({"error": {"grpc_code": 14, "http_code": 503, "message": "etcdserver: no leader",
                                       "http_status": "Service Unavailable"}})
    with pytest.raises(WatchCanceled, match="permission denied"):
        parse_watch_message({"error": {"grpc_code": 7, "message": "etcdserver: permission denied"}})


@pytest.mark.parametrize("status, document, kind, code", [
    (404, {"error": "etcdserver: requested lease not found", "code": 5,
           "message": "etcdserver: requested lease not found"}, LeaseNotFound, 5),
    (400, {"error": "etcdserver: mvcc: required revision has been compacted", "code": 11,
           "message": "etcdserver: mvcc: required revision has been compacted"}, RevisionCompacted, 11),
    (401, {"error": "etcdserver: invalid auth token", "code": 16,
           "message": "etcdserver: invalid auth token"}, EtcdAuthError, 16),
    (400, {"error": "etcdserver: user name is empty", "code": 3,
           "message": "etcdserver: user name is empty"}, EtcdAuthError, 3),
    (400, {"error": "etcdserver: key is not provided", "code": 3,
           "message": "etcdserver: key is not provided"}, EtcdRequestError, 3),
    (200, {"error": {"grpc_code": 5, "http_code": 404, "message": "etcdserver: requested lease not found",
                     "http_status": "Not Found"}}, LeaseNotFound, 5),
    (404, {"code": 5, "message": "etcdserver: requested lease not found", "details": []}, LeaseNotFound, 5),
    (502, None, EtcdRequestError, 2),
])
def test_error_documents_become_exceptions_carrying_the_grpc_code_and_message(status, document, kind, code):
    error = parse_error(status, document, "http://127.0.0.1:1")
    assert type(error) is kind
    assert (error.code, error.status, error.endpoint) == (code, status, "http://127.0.0.1:1")
    assert error.message and error.message in str(error)


@pytest.mark.parametrize("message, code, rejected", [
    ("etcdserver: invalid auth token", 16, True),
    ("etcdserver: revision of auth store is old", 3, True),
    ("rpc error: code = InvalidArgument desc = etcdserver: user name is empty", 0, True),
    ("etcdserver: authentication failed, invalid user ID or password", 3, False),
    ("etcdserver: key is not provided", 3, False),
])
def test_only_a_rejected_token_makes_the_client_authenticate_again(message, code, rejected):
    assert token_rejected(message, code) is rejected


def test_status_answers_decode_with_the_leader_and_the_cluster_revision():
    status = parse_status({"header": HEADER, "version": "3.4.23", "dbSize": "24576",
                           "leader": "13668033151171901709", "raftIndex": "10", "raftTerm": "2"},
                          "http://127.0.0.1:2379")
    assert (status.revision, status.version, status.raft_index, status.db_size) == (7, "3.4.23", 10, 24576)
    assert status.is_leader


def test_compares_and_ops_build_the_gateway_json():
    assert compare_mod_revision("k", "==", 5).to_json() == {
        "key": b64("k"), "target": "MOD", "result": "EQUAL", "mod_revision": "5"}
    assert compare_create_revision("k", "==", 0).to_json()["create_revision"] == "0"
    assert compare_version("k", ">", 2).to_json()["result"] == "GREATER"
    assert compare_value("k", "!=", b"\x00").to_json() == {
        "key": b64("k"), "target": "VALUE", "result": "NOT_EQUAL", "value": b64(b"\x00")}
    assert put_op("k", b"v", lease=12).to_json() == {"request_put": {"key": b64("k"), "value": b64("v"),
                                                                     "lease": "12"}}
    assert get_op("p/", prefix=True).to_json() == {"request_range": {"key": b64("p/"), "range_end": b64("p0")}}
    assert delete_op("k").to_json() == {"request_delete_range": {"key": b64("k")}}


@pytest.mark.parametrize("build, error, match", [
    (lambda: compare_mod_revision("k", "=>", 1), ValueError, "not '=>'"),
    (lambda: compare_mod_revision("k", "==", -1), ValueError, ">= 0"),
    (lambda: compare_mod_revision("", "==", 1), ValueError, "needs a key"),
    (lambda: compare_value("k", "==", 5), TypeError, "bytes"),
    (lambda: put_op("k", "text"), TypeError, "bytes, not str"),
    (lambda: put_op("", b"v"), ValueError, "must not be empty"),
    (lambda: get_op(b"k"), TypeError, "str, not bytes"),
])
def test_bad_txn_input_is_refused_with_a_message_naming_the_problem(build, error, match):
    with pytest.raises(error, match=match):
        build()


@pytest.mark.parametrize("arguments, match", [
    ({"endpoints": ["127.0.0.1:2379"]}, "'127.0.0.1:2379'"),
    ({"endpoints": ["http://127.0.0.1:2379/v3"]}, "http://127.0.0.1:2379/v3"),
    ({"endpoints": []}, "at least one endpoint"),
    ({"endpoints": ["http://127.0.0.1:2379"], "username": "root"}, "both or neither"),
    ({"endpoints": ["http://127.0.0.1:2379"], "request_timeout": 0}, "> 0"),
])
def test_a_client_with_bad_settings_is_refused_by_name(arguments, match):
    with pytest.raises(ValueError, match=match):
        EtcdClient(**arguments)


async def test_every_endpoint_form_is_kept_as_its_origin():
    client = EtcdClient(["http://127.0.0.1:2379/", "https://etcd.example:2379"])
    assert client.endpoints == ("http://127.0.0.1:2379", "https://etcd.example:2379")
    await client.close()


# ---------------------------------------------------------------- a real etcd


@pytest.fixture
def prefix(request) -> str:
    """prefix: a key prefix of this test's own, so tests sharing the etcd never see each other."""
    return f"/test/{request.node.name}/"


async def test_put_then_get_gives_the_bytes_back_with_their_revisions(client, prefix):
    first = await client.put(prefix + "k", b"\x00one")
    second = await client.put(prefix + "k", b"two")
    kv = await client.get(prefix + "k")
    assert second > first
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (b"two", first, second, 2, 0)
    assert (await client.get(prefix + "k", revision=first)).value == b"\x00one"
    assert await client.get(prefix + "missing") is None


async def test_get_prefix_lists_only_the_keys_under_it_in_key_order_and_the_revision(client, prefix):
    for key in ("b", "a", "c/d"):
        await client.put(prefix + key, key.encode())
    await client.put(prefix.rstrip("/") + "0", b"outside")       # the first key past the prefix
    last = await client.put(prefix.rstrip("/"), b"outside too")
    kvs, revision = await client.get_prefix(prefix)
    assert [(kv.key, kv.value) for kv in kvs] == [(prefix + "a", b"a"), (prefix + "b", b"b"),
                                                 (prefix + "c/d", b"c/d")]
    assert revision == last
    assert await client.get_prefix(prefix + "nothing/") == ([], revision)


async def test_delete_removes_one_key_or_every_key_under_a_prefix(client, prefix):
    for key in ("x", "y/1", "y/2"):
        await client.put(prefix + key, b"v")
    assert await client.delete(prefix + "x") == 1
    assert await client.delete(prefix + "x") == 0
    assert await client.delete(prefix + "y/", prefix=True) == 2
    assert await client.get_prefix(prefix) == ([], (await client.status()).revision)


async def test_two_racing_writers_comparing_the_mod_revision_they_read_exactly_one_wins(client, prefix):
    key = prefix + "state"
    await client.put(key, b"generation 1")
    read = await client.get(key)

    async def write(value: bytes):
        return await client.txn([compare_mod_revision(key, "==", read.mod_revision)],
                                [put_op(key, value)], [get_op(key)])

    results = await asyncio.gather(write(b"replica a"), write(b"replica b"))
    winners = [result for result in results if result.succeeded]
    losers = [result for result in results if not result.succeeded]
    assert len(winners) == 1 and len(losers) == 1
    stored = await client.get(key)
    assert stored.mod_revision == winners[0].revision
    assert losers[0].responses[0].kvs[0].value == stored.value      # the loser sees what won


async def test_a_create_compare_lets_only_the_first_writer_create_a_key(client, prefix):
    key = prefix + "lock"
    absent = [compare_create_revision(key, "==", 0)]
    first = await client.txn(absent, [put_op(key, b"first")])
    second = await client.txn(absent, [put_op(key, b"second")], [get_op(key)])
    assert first.succeeded and not second.succeeded
    assert second.responses[0].kvs[0].value == b"first"
    assert (await client.txn([compare_value(key, "==", b"first"), compare_version(key, "==", 1)],
                             [delete_op(key)])).succeeded
    assert await client.get(key) is None


async def test_a_lease_kept_alive_holds_its_keys_and_revoking_it_deletes_them(client, prefix):
    lease = await client.grant(2)
    await client.put(prefix + "replicas/a", b"alive", lease=lease)
    assert await client.keepalive_once(lease) == 2
    info = await client.time_to_live(lease, keys=True)
    assert info.id == lease and info.granted_ttl == 2 and 0 < info.ttl <= 2
    assert info.keys == (prefix + "replicas/a",)
    assert (await client.get(prefix + "replicas/a")).lease == lease
    assert await client.revoke(lease) is True
    assert await client.get(prefix + "replicas/a") is None
    assert await client.revoke(lease) is False
    assert await client.keepalive_once(lease) == 0           # the gateway leaves TTL out: 0
    assert (await client.time_to_live(lease)).ttl == -1


async def test_a_lease_left_to_expire_deletes_its_keys(client, prefix):
    lease = await client.grant(1)
    revision = await client.put(prefix + "replicas/b", b"alive", lease=lease)
    async with asyncio.timeout(10):
        async with client.watch(prefix, revision + 1, idle_timeout=5) as events:
            event = await anext(events)
    assert (event.type, event.kv.key) == ("DELETE", prefix + "replicas/b")
    assert await client.get(prefix + "replicas/b") is None
    assert (await client.time_to_live(lease)).ttl == -1
    assert await client.keepalive_once(lease) == 0
    with pytest.raises(LeaseNotFound):
        await client.put(prefix + "replicas/b", b"again", lease=lease)


async def test_a_watch_from_a_revision_sees_every_later_change_in_order(client, prefix):
    start = await client.put(prefix + "a", b"1")
    await client.put(prefix + "b", b"2")
    await client.txn([], [put_op(prefix + "a", b"3"), put_op(prefix + "c", b"4")])
    await client.delete(prefix + "a")
    await client.put(prefix.rstrip("/") + "0", b"not watched")
    seen = []
    async with asyncio.timeout(10):
        async with client.watch(prefix, start, idle_timeout=5, prev_kv=True) as events:
            async for event in events:
                seen.append(event)
                if len(seen) == 5:
                    break
    assert [(event.type, event.kv.key.removeprefix(prefix), event.kv.value) for event in seen] == [
        ("PUT", "a", b"1"), ("PUT", "b", b"2"), ("PUT", "a", b"3"), ("PUT", "c", b"4"), ("DELETE", "a", b"")]
    revisions = [event.revision for event in seen]
    assert revisions[0] == start and revisions == sorted(revisions) and revisions[2] == revisions[3]
    assert seen[4].prev_kv.value == b"3"
    assert events.revision == revisions[-1]


async def test_a_watch_of_one_key_sees_only_that_key(client, prefix):
    start = await client.put(prefix + "ab", b"longer key")
    await client.put(prefix + "a", b"the key")
    async with asyncio.timeout(10):
        async with client.watch(prefix + "a", start, prefix=False, idle_timeout=5) as events:
            event = await anext(events)
    assert (event.kv.key, event.kv.value) == (prefix + "a", b"the key")


async def test_a_watch_of_a_key_range_sees_the_keys_in_it_one_transaction_per_batch(client, prefix):
    start = await client.put(prefix + "a/1", b"before the range")
    await client.txn([], [put_op(prefix + "b/1", b"one"), put_op(prefix + "c", b"two"), put_op(prefix + "a/2", b"out"),
                          put_op(prefix + "d", b"end, excluded")])
    last = (await client.txn([], [put_op(prefix + "b/2", b"three")])).revision
    batches = []
    async with asyncio.timeout(10):
        async with client.watch(prefix + "b/", start, range_end=prefix + "d", idle_timeout=5) as events:
            while sum(map(len, batches)) < 3:
                batches.append(await events.batch())
    seen = [e for batch in batches for e in batch]
    assert [(e.kv.key, e.kv.value) for e in seen] == [(prefix + "b/1", b"one"), (prefix + "c", b"two"),
                                                      (prefix + "b/2", b"three")]
    assert seen[0].revision == seen[1].revision < seen[2].revision == last
    # A batch may hold several revisions (a watch catching up), never part of one.
    for before, after in zip(batches, batches[1:]):
        assert before[-1].revision < after[0].revision
    with pytest.raises(ValueError, match="must sort after"):
        client.watch(prefix + "b/", start, range_end=prefix + "a")


async def test_a_watch_from_a_compacted_revision_raises_watch_compacted_with_the_compact_revision(client, prefix):
    first = await client.put(prefix + "k", b"1")
    second = await client.put(prefix + "k", b"2")
    await client.compact(second)
    with pytest.raises(RevisionCompacted):
        await client.get(prefix + "k", revision=first)
    with pytest.raises(RevisionCompacted):
        await client.compact(second)
    with pytest.raises(WatchCompacted) as raised:
        async with asyncio.timeout(10):
            async with client.watch(prefix, first, idle_timeout=5) as events:
                await anext(events)
    assert raised.value.compact_revision == second
    # From the compact revision on, the history is still there.
    async with asyncio.timeout(10):
        async with client.watch(prefix, second, idle_timeout=5) as events:
            assert (await anext(events)).kv.value == b"2"


async def test_an_idle_watch_with_progress_notifications_outlives_its_idle_timeout(client, prefix):
    start = await client.put(prefix + "k", b"before")
    progressed = asyncio.Event()
    notified = []

    def on_progress(revision: int) -> None:
        notified.append(revision)
        if len(notified) >= 10:          # one every other 50 ms tick: about twice the idle timeout
            progressed.set()

    async with asyncio.timeout(15):
        async with client.watch(prefix, start + 1, idle_timeout=0.5, on_progress=on_progress) as events:
            following = asyncio.ensure_future(anext(events))
            waiting = asyncio.ensure_future(progressed.wait())
            await asyncio.wait({following, waiting}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            assert not following.done(), following.exception()
            assert events.revision >= start
            revision = await client.put(prefix + "k", b"after")
            event = await following
    assert (event.kv.value, event.revision) == (b"after", revision)
    assert notified == sorted(notified) and notified[-1] >= start


async def test_a_watch_on_a_sigstopped_etcd_raises_watch_stalled(client, etcd, prefix):
    start = await client.put(prefix + "k", b"v")
    progressed = asyncio.Event()
    async with client.watch(prefix, start + 1, idle_timeout=0.4,
                            on_progress=lambda revision: progressed.set()) as events:
        following = asyncio.ensure_future(anext(events))
        await asyncio.wait_for(progressed.wait(), 10)      # healthy first: progress arrives
        etcd.pause()
        try:
            with pytest.raises(WatchStalled) as raised:
                await asyncio.wait_for(following, 10)
        finally:
            etcd.resume()
    assert raised.value.endpoint == etcd.endpoint and "0.4s" in str(raised.value)


async def test_on_a_sigstopped_etcd_a_mutation_is_outcome_unknown_and_a_read_is_unavailable(
        client, etcd, prefix):
    await client.put(prefix + "k", b"before")
    async with EtcdClient([etcd.endpoint], request_timeout=0.3) as impatient:
        etcd.pause()
        try:
            with pytest.raises(EtcdOutcomeUnknown) as unknown:
                await asyncio.wait_for(impatient.put(prefix + "k", b"during"), 10)
            with pytest.raises(EtcdUnavailable) as unavailable:
                await asyncio.wait_for(impatient.get(prefix + "k"), 10)
        finally:
            etcd.resume()
    assert unknown.value.endpoint == etcd.endpoint and "may or may not" in str(unknown.value)
    assert type(unavailable.value) is EtcdUnavailable and etcd.endpoint in str(unavailable.value)
    assert (await client.get(prefix + "k")).value in (b"before", b"during")


async def test_a_pause_after_a_call_etcd_did_not_answer_ends_at_the_next_answer_not_at_its_time(etcd, prefix):
    async with EtcdClient([etcd.endpoint], request_timeout=0.3) as impatient:
        calm = asyncio.ensure_future(impatient.pause(60))        # started while etcd answers
        etcd.pause()
        try:
            with pytest.raises(EtcdUnavailable):
                await asyncio.wait_for(impatient.get(prefix + "k"), 10)
            waiting = asyncio.ensure_future(impatient.pause(60))
            for _ in range(3):
                await asyncio.sleep(0)
            assert not waiting.done()                            # no answer yet: it waits
        finally:
            etcd.resume()
        await impatient.put(prefix + "k", b"back")               # the first answer after the outage
        await asyncio.wait_for(waiting, 5)                       # ends by that answer, not after 60 s
        assert calm.done()                                       # the outage ended it too
        again = asyncio.ensure_future(impatient.pause(60))
        await impatient.get(prefix + "k")                        # answers while etcd answers: no news
        for _ in range(3):
            await asyncio.sleep(0)
        assert not again.done()
        again.cancel()


async def test_an_unreachable_first_endpoint_is_skipped_and_the_one_that_answered_is_remembered(etcd, prefix):
    dead = f"http://127.0.0.1:{free_port()}"
    async with EtcdClient([dead, etcd.endpoint], request_timeout=3.0) as client:
        assert client.endpoint == dead
        revision = await client.put(prefix + "k", b"v")
        assert client.endpoint == etcd.endpoint
        assert (await client.get(prefix + "k")).value == b"v"
        async with asyncio.timeout(10):
            async with client.watch(prefix, revision, idle_timeout=5) as events:
                assert (await anext(events)).kv.value == b"v"
                assert events.endpoint == etcd.endpoint


async def test_with_every_endpoint_down_a_call_raises_etcd_unavailable_naming_each_one():
    dead = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    async with EtcdClient(dead, request_timeout=3.0) as client:
        async with asyncio.timeout(5):
            with pytest.raises(EtcdUnavailable) as raised:
                await client.put("/k", b"v")
            with pytest.raises(EtcdUnavailable) as watched:
                async with client.watch("/k", 1):
                    pass
    assert type(raised.value) is EtcdUnavailable            # refused: nothing was sent
    assert all(endpoint in str(raised.value) for endpoint in dead) and len(raised.value.reasons) == 2
    assert all(endpoint in str(watched.value) for endpoint in dead)


async def test_a_three_member_cluster_keeps_answering_with_its_leader_down():
    require_etcd()
    cluster = await asyncio.to_thread(EtcdCluster(3).start)
    try:
        statuses = []
        for endpoint in cluster.endpoints:
            async with EtcdClient([endpoint]) as one:
                statuses.append(await one.status())
        leader = next(index for index, status in enumerate(statuses) if status.is_leader)
        order = [cluster.endpoints[leader]] + [e for i, e in enumerate(cluster.endpoints) if i != leader]
        async with EtcdClient(order, request_timeout=5.0) as client:
            start = await client.put("/fleet/state", b"generation 1")
            await asyncio.to_thread(cluster.members[leader].stop)
            async with asyncio.timeout(30):
                assert (await client.get("/fleet/state")).value == b"generation 1"
                assert client.endpoint != cluster.endpoints[leader]
                read = await client.get("/fleet/state")
                swapped = await client.txn([compare_mod_revision("/fleet/state", "==", read.mod_revision)],
                                           [put_op("/fleet/state", b"generation 2")])
                assert swapped.succeeded
                async with client.watch("/fleet/", start, idle_timeout=5) as events:
                    assert [(await anext(events)).kv.value, (await anext(events)).kv.value] == [
                        b"generation 1", b"generation 2"]
                assert (await client.status()).leader not in (0, statuses[leader].member_id)
            await asyncio.to_thread(cluster.members[leader].start)
            async with EtcdClient([cluster.endpoints[leader]]) as rejoined:
                assert (await rejoined.get("/fleet/state")).value == b"generation 2"
    finally:
        await asyncio.to_thread(cluster.close)


async def _gateway(endpoint: str, path: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    """_gateway: one raw gateway call, for what the client has no method for (enabling auth)."""
    headers = {"Authorization": token} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.post(endpoint + path, json=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=5)) as answer:
            return answer.status, json.loads(await answer.read())


async def test_with_credentials_the_client_authenticates_and_again_when_etcd_rejects_its_token():
    require_etcd()
    server = await asyncio.to_thread(EtcdServer("auth", extra_args=("--bcrypt-cost", "4")).start)
    try:
        for path, body in (("/v3/auth/user/add", {"name": "root", "password": "secret"}),
                           ("/v3/auth/role/add", {"name": "root"}),
                           ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
                           ("/v3/auth/enable", {})):
            status, answer = await _gateway(server.endpoint, path, body)
            assert status == 200, answer

        async with EtcdClient([server.endpoint]) as anonymous:
            with pytest.raises(EtcdAuthError, match="give a username and password"):
                await anonymous.get("/k")
            with pytest.raises(EtcdAuthError, match="give a username and password"):
                async with anonymous.watch("/k", 0, idle_timeout=5):
                    pass
        async with EtcdClient([server.endpoint], username="root", password="wrong") as wrong:
            with pytest.raises(EtcdAuthError, match="authentication failed"):
                await wrong.get("/k")

        unary = EtcdClient([server.endpoint], username="root", password="secret")
        watching = EtcdClient([server.endpoint], username="root", password="secret")
        try:
            await unary.put("/k", b"v1")
            assert (await watching.get("/k")).value == b"v1"
            _, issued = await _gateway(server.endpoint, "/v3/auth/authenticate",
                                       {"name": "root", "password": "secret"})
            # Turning authentication off and on again makes etcd forget every token it issued.
            status, answer = await _gateway(server.endpoint, "/v3/auth/disable", {}, issued["token"])
            assert status == 200, answer
            status, answer = await _gateway(server.endpoint, "/v3/auth/enable", {})
            assert status == 200, answer
            status, answer = await _gateway(server.endpoint, "/v3/kv/range", {"key": b64("/k")}, issued["token"])
            assert status == 401 and "invalid auth token" in answer["message"]

            revision = await unary.put("/k", b"v2")       # the client authenticated again
            async with asyncio.timeout(10):
                async with watching.watch("/k", revision, prefix=False, idle_timeout=5) as events:
                    assert (await anext(events)).kv.value == b"v2"
        finally:
            await unary.close()
            await watching.close()
    finally:
        await asyncio.to_thread(server.close)
