"""The etcd state store (admin/fleet/store.py) against a real etcd, and its key and drain rules without one.

The first part is tables over the pure functions (keys, summing the replicas' drain outcomes,
the range delete that trims the history). The rest starts one etcd for the module
(tests/etcdserver.py) and gives each test a prefix of its own: commits compare the revision
they read, events and drain outcomes go to their own keys without rewriting the state, the
history is trimmed, the watch reports other writers' commits in order and survives
compaction, a paused etcd is unavailable within a bound, a lost answer is read back before
the commit answers, and two Controllers on one prefix follow each other.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging

import pytest

import admin.fleet.store
from admin.controller import ControlError, Controller
from admin.fleet.etcd import EtcdClient, EtcdOutcomeUnknown, delete_range_op
from admin.fleet.start import LocalCopy
from admin.fleet.store import (
    EtcdStateStore, StoreUnavailable, drain_key, history_key, parse_drain_key, parse_history_key, sum_drains,
)
from admin.plane import LocalPlane
from admin.state import FileStateStore, State, StateConflict, StateError
from tests.support.stack import proxy_config


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def event(action: str, generation: int, source: str = "blue", target: str = "green", **extra) -> dict:
    return {"at": f"2024-05-01T10:00:{generation:02d}.000Z", "action": action, "from": source, "to": target,
            "generation": generation, "reason": f"{action} {generation}", **extra}


def outcome(drained: int, forced: int = 0, dropped: int = 0, duration: float = 0.5, **extra) -> dict:
    return {"environment": "blue", "generation": 2, "inflight_at_start": drained + forced + dropped,
            "drained": drained, "forced_closed": forced, "dropped": dropped, "client_gone": 0, "remaining": 0,
            "interrupted": False, "duration": duration, "idle_connections_closed": 1, **extra}


# ---------------------------------------------------------------- keys and sums, no etcd


@pytest.mark.parametrize("seq", [1, 42, 9_223_372_036_854_775_807])
def test_history_keys_are_zero_padded_so_key_order_is_number_order(seq):
    key = history_key("/p", seq)
    assert key.startswith("/p/history/") and len(key.rsplit("/", 1)[1]) == 20
    assert parse_history_key("/p", key) == seq
    assert (history_key("/p", 9) < history_key("/p", 10)) and (history_key("/p", 99) < history_key("/p", 100))


@pytest.mark.parametrize("key", ["/p/history/12", "/p/history/0000000000000000000x", "/q/history/" + "0" * 20,
                                 "/p/historyx/" + "0" * 20])
def test_a_key_that_is_not_a_history_key_parses_as_none(key):
    assert parse_history_key("/p", key) is None


@pytest.mark.parametrize("source, writer", [("blue", "web-1:8080"), ("green", "odd/writer id"), ("b%2Fx", "ü")])
def test_a_drain_key_keeps_source_and_writer_whatever_they_hold(source, writer):
    key = drain_key("/p", 7, source, writer)
    assert key.startswith("/p/drains/00000000000000000007/") and key.count("/") == 5
    assert parse_drain_key("/p", key) == (7, source, writer)


@pytest.mark.parametrize("key", ["/p/drains/7/blue/w", "/p/drains/" + "0" * 20 + "/blue", "/p/seq",
                                 "/p/drains/" + "0" * 20 + "//w"])
def test_a_key_that_is_not_a_drain_key_parses_as_none(key):
    assert parse_drain_key("/p", key) is None


@pytest.mark.parametrize("parts, expected", [
    ([outcome(3)], outcome(3)),
    ([outcome(3, forced=1, duration=0.5), outcome(4, dropped=2, duration=1.5)],
     {**outcome(7, forced=1, dropped=2, duration=1.5), "inflight_at_start": 10, "idle_connections_closed": 2}),
    ([outcome(1, interrupted=True), outcome(1)],
     {**outcome(2, interrupted=True), "idle_connections_closed": 2}),
    ([outcome(1, duration=None), outcome(1, duration=2.0)],
     {**outcome(2, duration=None), "idle_connections_closed": 2}),
    ([{"drained": 1, "forced_closed": 0, "dropped": 0},
      {"drained": 2, "forced_closed": 1, "dropped": 0, "new": 5}],
     {"drained": 3, "forced_closed": 1, "dropped": 0, "new": 5}),
])
def test_the_replicas_drain_outcomes_sum_like_the_workers_do(parts, expected):
    assert sum_drains(parts) == expected


def test_a_range_delete_spans_from_its_key_to_before_its_end():
    op = delete_range_op("/p/history/", history_key("/p", 5))
    assert op.to_json() == {"request_delete_range": {"key": b64("/p/history/"),
                                                     "range_end": b64(history_key("/p", 5))}}
    with pytest.raises(ValueError, match="must sort after"):
        delete_range_op("/p/b", "/p/a")
    with pytest.raises(ValueError, match="must not be empty"):
        delete_range_op("", "/p/a")


@pytest.mark.parametrize("arguments, match", [
    ({"prefix": "cutover"}, 'starts with "/"'),
    ({"prefix": "/cutover/"}, 'no trailing "/"'),
    ({"prefix": "/c", "history_limit": -1}, ">= 0"),
    ({"prefix": "/c", "writer": ""}, "non-empty"),
])
async def test_a_store_with_bad_settings_is_refused_by_name(arguments, match):
    client = EtcdClient(["http://127.0.0.1:2379"])
    try:
        with pytest.raises(ValueError, match=match):
            EtcdStateStore(client, **arguments)
    finally:
        await client.close()


# ---------------------------------------------------------------- a real etcd


@pytest.fixture
def prefix(request) -> str:
    return "/test/" + request.node.name.replace("[", "-").replace("]", "")


def store_on(client, prefix, writer, history_limit=1000, **options) -> EtcdStateStore:
    return EtcdStateStore(client, prefix, history_limit, writer=writer, watch_idle_timeout=2.0, **options)


def facts(state: State) -> dict:
    data = state.to_dict()
    del data["history"]
    return data


async def test_a_commit_loads_back_with_its_event_and_the_revision_of_the_state_key(client, prefix):
    store = store_on(client, prefix, "one")
    assert await store.load() == (None, None)
    first = State(live="blue", previous=None, generation=1,
                  attestations=[{"from_version": "1", "to_version": "2"}])
    revision = await store.commit(first, None, event("lock", 1))
    loaded, read = await store.load()
    assert read == revision == (await client.get(prefix + "/state")).mod_revision
    assert facts(loaded) == facts(first) and loaded.history == [event("lock", 1)]
    stored = json.loads((await client.get(prefix + "/state")).value)
    assert stored == facts(first) and "history" not in stored       # the events live in their own keys

    second = State(live="green", previous="blue", generation=2)
    newer = await store.commit(second, revision, event("flip", 2))
    loaded, read = await store.load()
    assert read == newer > revision
    assert (loaded.live, loaded.generation) == ("green", 2)
    assert [e["action"] for e in loaded.history] == ["lock", "flip"]
    assert store.describe() == f"etcd {client.endpoints[0]} prefix {prefix}"


async def test_two_stores_committing_on_the_same_revision_exactly_one_wins(client, prefix):
    one, two = store_on(client, prefix, "one"), store_on(client, prefix, "two")
    base = await one.commit(State(live="blue", previous=None, generation=1), None)
    results = await asyncio.gather(
        one.commit(State(live="green", previous="blue", generation=2), base, event("flip", 2, reason="one")),
        two.commit(State(live="blue", previous=None, generation=2, locked=True), base, event("lock", 2)),
        return_exceptions=True)
    winners = [r for r in results if isinstance(r, int)]
    losers = [r for r in results if isinstance(r, StateConflict)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert "nothing written" in str(losers[0])
    loaded, revision = await one.load()
    assert revision == winners[0] and len(loaded.history) == 1       # only the winner's event
    assert (loaded.locked, loaded.history[0]["action"]) == ((True, "lock") if results[1] == winners[0]
                                                            else (False, "flip"))
    with pytest.raises(StateConflict):                              # the loser's revision is stale
        await (two if results[1] is losers[0] else one).commit(State(live="blue", previous=None, generation=3),
                                                                base)


async def test_the_very_same_change_from_a_second_writer_is_a_conflict_not_taken_for_its_own(client, prefix):
    # Two replicas taking the same flip in the same millisecond write byte-identical state and
    # event: only a write whose answer was lost may be recognised as landed by its content.
    one, two = store_on(client, prefix, "one"), store_on(client, prefix, "two")
    flip = State(live="green", previous="blue", generation=2)
    await one.commit(flip, None, event("flip", 2))
    with pytest.raises(StateConflict, match="nothing written"):
        await two.commit(flip, None, event("flip", 2))
    loaded, _ = await one.load()
    assert len(loaded.history) == 1


async def test_a_first_commit_finding_a_state_already_stored_is_a_conflict(client, prefix):
    await store_on(client, prefix, "one").commit(State(live="blue", previous=None, generation=1), None)
    with pytest.raises(StateConflict, match="revision None expected"):
        await store_on(client, prefix, "two").commit(State(live="green", previous=None, generation=1), None)


async def test_events_amends_and_drains_of_two_writers_fold_into_the_history_without_rewriting_the_state(
        client, prefix):
    one, two = store_on(client, prefix, "one"), store_on(client, prefix, "two")
    with pytest.raises(StateError, match="no state saved yet"):
        await one.append(event("note", 1))
    await one.commit(State(live="blue", previous=None, generation=1), None)
    _, revision = await two.load()
    flip = event("flip", 2)
    revision = await two.commit(State(live="green", previous="blue", generation=2), revision, flip)
    state_revision = (await client.get(prefix + "/state")).mod_revision

    await asyncio.gather(one.append(event("hold", 2, source="green")),
                         two.append(event("resume", 2, source="green")))
    await one.amend(flip, {"recovery_ms": 12.5})
    await one.add_drain(2, "blue", outcome(3, duration=0.5))
    await two.add_drain(2, "blue", outcome(4, forced=1, duration=1.5))
    await two.add_drain(2, "blue", outcome(100))                   # a writer's first outcome is kept
    await one.amend(event("gone", 9), {"x": 1})                    # no such event: nothing happens

    assert (await client.get(prefix + "/state")).mod_revision == state_revision   # never rewritten
    loaded, read = await one.load()
    assert read == revision
    assert [e["action"] for e in loaded.history[:1]] == ["flip"]
    assert sorted(e["action"] for e in loaded.history[1:]) == ["hold", "resume"]      # none lost
    entry = loaded.history[0]
    assert entry["recovery_ms"] == 12.5
    assert (entry["drained"], entry["forced_closed"], entry["dropped"]) == (7, 1, 0)
    assert entry["drain"]["duration"] == 1.5
    assert entry["drain"]["replicas"] == {"one": outcome(3, duration=0.5),
                                          "two": outcome(4, forced=1, duration=1.5)}
    raw, _ = await client.get_prefix(prefix + "/history/")
    assert len(raw) == 3 and all("drain" not in json.loads(kv.value) for kv in raw)   # summed only when read


async def test_the_history_keeps_the_newest_events_and_old_drains_are_trimmed(client, prefix):
    store = store_on(client, prefix, "one", history_limit=3)
    revision = await store.commit(State(live="blue", previous=None, generation=1), None, event("lock", 1))
    await store.add_drain(1, "blue", outcome(1))
    live, other = "blue", "green"
    for generation in range(2, 7):
        live, other = other, live
        revision = await store.commit(State(live=live, previous=other, generation=generation), revision,
                                      event("flip", generation, source=other, target=live))
        await store.add_drain(generation, other, outcome(generation))
    loaded, _ = await store.load()
    assert [e["generation"] for e in loaded.history] == [4, 5, 6]
    assert [e["drained"] for e in loaded.history] == [4, 5, 6]
    history, _ = await client.get_prefix(prefix + "/history/")
    assert [parse_history_key(prefix, kv.key) for kv in history] == [4, 5, 6]
    drains, _ = await client.get_prefix(prefix + "/drains/")
    # A commit of generation G drops drain keys of generation G - 3 and older.
    assert sorted(parse_drain_key(prefix, kv.key)[0] for kv in drains) == [4, 5, 6]


async def collect(store: EtcdStateStore, since, count: int, into: list) -> None:
    async for state, revision in store.watch(since):
        into.append((state, revision))
        if len(into) == count:
            return


async def test_the_watch_reports_each_commit_of_another_store_in_order_and_not_its_own(client, prefix):
    watcher, writer = store_on(client, prefix, "watcher"), store_on(client, prefix, "writer")
    base = await writer.commit(State(live="blue", previous=None, generation=1), None)
    _, since = await watcher.load()
    seen: list = []
    following = asyncio.ensure_future(collect(watcher, since, 4, seen))
    revisions = []
    revision = base
    for generation, locked in ((2, False), (3, True), (4, False)):
        revision = await writer.commit(State(live="green" if generation % 2 == 0 else "blue", previous=None,
                                             generation=generation, locked=locked), revision,
                                       event("flip", generation))
        revisions.append(revision)
    async with asyncio.timeout(10):
        while len(seen) < 3:
            await asyncio.sleep(0.01)
    own = await watcher.commit(State(live="green", previous=None, generation=5), revision, event("flip", 5))
    _, revision = await writer.load()
    last = await writer.commit(State(live="blue", previous="green", generation=6), revision, event("flip", 6))
    async with asyncio.timeout(10):
        await following
    assert [r for _, r in seen] == [*revisions, last]               # the watcher's own commit is not news
    assert own not in [r for _, r in seen]
    assert [(s.generation, s.locked) for s, _ in seen] == [(2, False), (3, True), (4, False), (6, False)]
    assert [len(s.history) for s, _ in seen] == [1, 2, 3, 5]        # each with its history as of then


async def test_a_watch_from_a_compacted_revision_still_yields_the_newest_state(client, prefix):
    watcher, writer = store_on(client, prefix, "watcher"), store_on(client, prefix, "writer")
    revision = await writer.commit(State(live="blue", previous=None, generation=1), None)
    _, since = await watcher.load()
    for generation in (2, 3):
        revision = await writer.commit(State(live="blue", previous=None, generation=generation), revision,
                                       event("canary", generation))
    await client.compact((await client.status()).revision)         # past `since`: the watch cannot start there
    seen: list = []
    following = asyncio.ensure_future(collect(watcher, since, 2, seen))
    async with asyncio.timeout(10):
        while not seen:
            await asyncio.sleep(0.01)
    assert (seen[0][0].generation, seen[0][1]) == (3, revision)    # the newest, read again after the cancel
    newest = await writer.commit(State(live="green", previous="blue", generation=4), revision, event("flip", 4))
    async with asyncio.timeout(10):
        await following
    assert (seen[1][0].generation, seen[1][1]) == (4, newest)


async def test_a_watch_that_stalls_on_a_sigstopped_etcd_reads_again_and_goes_on(client, etcd, prefix, caplog):
    caplog.set_level(logging.INFO, logger="cutover.fleet.store")
    writer = store_on(client, prefix, "writer")
    base = await writer.commit(State(live="blue", previous=None, generation=1), None)
    async with EtcdClient([etcd.endpoint], request_timeout=0.3) as impatient:
        watcher = EtcdStateStore(impatient, prefix, writer="watcher", watch_idle_timeout=0.3)
        seen: list = []
        following = asyncio.ensure_future(collect(watcher, base, 1, seen))
        etcd.pause()
        try:
            async with asyncio.timeout(10):
                while not any("reading the state again" in r.getMessage() for r in caplog.records):
                    await asyncio.sleep(0.01)
        finally:
            etcd.resume()
        revision = await writer.commit(State(live="green", previous="blue", generation=2), base, event("flip", 2))
        async with asyncio.timeout(10):
            await following
    assert (seen[0][0].generation, seen[0][1]) == (2, revision)


async def test_the_fleets_watch_outlives_an_outage_its_store_gave_up_on_and_yields_the_next_commit(
        client, etcd, prefix, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(admin.fleet.store, "_WATCH_FAILURES", 2)
    caplog.set_level(logging.WARNING, logger="cutover.fleet")
    writer = store_on(client, prefix, "writer")
    base = await writer.commit(State(live="blue", previous=None, generation=1), None)
    async with EtcdClient([etcd.endpoint], request_timeout=0.3) as impatient:
        watcher = LocalCopy(EtcdStateStore(impatient, prefix, writer="watcher", watch_idle_timeout=0.3),
                            FileStateStore(tmp_path / "copy.json"))
        impatient.on_answer = watcher.heard
        seen: list = []
        following = asyncio.ensure_future(collect(watcher, base, 1, seen))
        etcd.pause()
        try:
            async with asyncio.timeout(10):          # the store's watch gives up: etcd does not answer
                while not any("watching again once etcd answers" in r.getMessage() for r in caplog.records):
                    await asyncio.sleep(0.01)
            assert not following.done() and watcher.connected is False
        finally:
            etcd.resume()
        revision = await writer.commit(State(live="green", previous="blue", generation=2), base, event("flip", 2))
        async with asyncio.timeout(10):
            await following
        await watcher.flush()
    assert (seen[0][0].generation, seen[0][1]) == (2, revision) and watcher.connected is True
    assert FileStateStore(tmp_path / "copy.json").read()[0].generation == 2     # kept as the local copy


async def test_each_state_the_watch_yields_has_the_history_a_full_read_has_amends_drains_and_trims_included(
        client, prefix):
    watcher, writer = store_on(client, prefix, "watcher", history_limit=3), store_on(client, prefix, "writer",
                                                                                     history_limit=3)
    reader = store_on(client, prefix, "reader", history_limit=3)
    revision = await writer.commit(State(live="blue", previous=None, generation=1), None, event("lock", 1))
    seen: list = []
    following = asyncio.ensure_future(collect(watcher, revision, 6, seen))

    async def taken(count: int) -> None:
        async with asyncio.timeout(10):
            while len(seen) < count:
                await asyncio.sleep(0.01)

    live, other = "blue", "green"
    for generation in range(2, 7):
        live, other = other, live
        flip = event("flip", generation, source=other, target=live)
        revision = await writer.commit(State(live=live, previous=other, generation=generation), revision, flip)
        await taken(generation - 1)
        loaded, read = await reader.load()
        assert seen[-1][1] == read == revision
        assert seen[-1][0].to_dict() == loaded.to_dict()
        # What lands between two commits shows in the next one: notes, amends, drain outcomes
        # of both writers (the watcher's own too), and the trim of what falls out.
        await writer.append(event("note", generation, source=live, target=live))
        await watcher.amend(flip, {"recovery_ms": float(generation)})
        await writer.add_drain(generation, other, outcome(generation))
        await watcher.add_drain(generation, other, outcome(1, forced=1))
    own = await watcher.commit(State(live=other, previous=live, generation=7), revision, event("flip", 7))
    last = await writer.commit(State(live=live, previous=other, generation=8), own, event("flip", 8))
    async with asyncio.timeout(10):
        await following
    loaded, read = await reader.load()
    assert seen[-1][1] == read == last
    assert seen[-1][0].to_dict() == loaded.to_dict()
    assert [e["action"] for e in loaded.history] == ["note", "flip", "flip"]        # trimmed to 3
    sixth = seen[-2][0].history                   # as of generation 6: generation 5's amend and drains in
    assert [(e["action"], e["generation"], e.get("recovery_ms"), e.get("drained")) for e in sixth] == [
        ("flip", 5, 5.0, 6), ("note", 5, None, None), ("flip", 6, None, None)]


async def test_the_watch_takes_each_change_from_its_events_without_reading_the_store(client, prefix):
    watcher, writer = store_on(client, prefix, "watcher"), store_on(client, prefix, "writer")
    revision = await writer.commit(State(live="blue", previous=None, generation=1), None)
    _, since = await watcher.load()
    reads: list = []
    async with EtcdClient(client.endpoints) as counted:
        plain = counted.get_prefix

        async def get_prefix(prefix: str, **options):
            reads.append((prefix, options))
            return await plain(prefix, **options)

        counted.get_prefix = get_prefix
        following = EtcdStateStore(counted, prefix, writer="watcher", watch_idle_timeout=5.0)
        seen: list = []
        task = asyncio.ensure_future(collect(following, since, 5, seen))
        for generation in range(2, 7):
            revision = await writer.commit(State(live="green" if generation % 2 else "blue", previous=None,
                                                 generation=generation), revision, event("flip", generation))
        async with asyncio.timeout(10):
            await task
    assert [s.generation for s, _ in seen] == [2, 3, 4, 5, 6]
    assert [len(s.history) for s, _ in seen] == [1, 2, 3, 4, 5]
    assert len(reads) == 1                      # the keys as of `since`, once; then only the watch's events


async def test_a_watch_from_nothing_starts_with_what_is_stored(client, prefix):
    watcher, writer = store_on(client, prefix, "watcher"), store_on(client, prefix, "writer")
    revision = await writer.commit(State(live="green", previous="blue", generation=7), None, event("flip", 7))
    seen: list = []
    async with asyncio.timeout(10):
        await collect(watcher, None, 1, seen)
    assert (seen[0][0].generation, seen[0][1]) == (7, revision)


async def test_on_a_sigstopped_etcd_a_commit_is_unavailable_within_its_bound(etcd, prefix):
    async with EtcdClient([etcd.endpoint], request_timeout=0.3) as impatient:
        store = store_on(impatient, prefix, "one")
        revision = await store.commit(State(live="blue", previous=None, generation=1), None)
        etcd.pause()
        try:
            with pytest.raises(StoreUnavailable) as raised:
                await asyncio.wait_for(store.commit(State(live="green", previous="blue", generation=2), revision,
                                                    event("flip", 2)), 10)
            with pytest.raises(StoreUnavailable):
                await asyncio.wait_for(store.load(), 10)
        finally:
            etcd.resume()
        assert raised.value.code == "store_unavailable"
        assert "did not answer whether the change was stored" in str(raised.value)
        loaded, _ = await store.load()
        assert loaded.generation in (1, 2)         # a request etcd got before the pause may still apply


async def test_with_every_endpoint_down_a_commit_is_unavailable_and_nothing_written(etcd, prefix):
    from tests.support.ports import free_port
    async with EtcdClient([f"http://127.0.0.1:{free_port()}"], request_timeout=1.0) as nowhere:
        store = store_on(nowhere, prefix, "one")
        with pytest.raises(StoreUnavailable, match="not written, etcd did not answer"):
            await asyncio.wait_for(store.commit(State(live="blue", previous=None, generation=1), None), 10)


class LosesAnswers:
    """LosesAnswers: the real client, but txn answers as the plan says: "lose" applies the txn and raises
    EtcdOutcomeUnknown (the answer was lost), "drop" raises it without sending (the request was lost);
    ``meanwhile`` runs before the raise, as another writer would."""

    def __init__(self, client: EtcdClient, plan: list[str], meanwhile=None) -> None:
        self.client, self.plan, self.meanwhile = client, list(plan), meanwhile
        self.endpoints = client.endpoints
        self.txns = 0

    async def get_prefix(self, *args, **options):
        return await self.client.get_prefix(*args, **options)

    def watch(self, *args, **options):
        return self.client.watch(*args, **options)

    async def pause(self, seconds):
        await self.client.pause(seconds)

    async def txn(self, compare, success, failure=()):
        self.txns += 1
        step = self.plan.pop(0) if self.plan else "answer"
        if step == "drop":
            if self.meanwhile is not None:
                await self.meanwhile()
            raise EtcdOutcomeUnknown("the test lost the request", self.endpoints[0])
        result = await self.client.txn(compare, success, failure)
        if step == "lose":
            if self.meanwhile is not None:
                await self.meanwhile()
            raise EtcdOutcomeUnknown("the test lost the answer", self.endpoints[0])
        return result


async def seeded(client, prefix) -> int:
    return await store_on(client, prefix, "seed").commit(State(live="blue", previous=None, generation=1), None)


async def test_a_commit_whose_answer_was_lost_is_read_back_and_reported_done_once(client, prefix):
    base = await seeded(client, prefix)
    flaky = LosesAnswers(client, ["lose"])
    revision = await store_on(flaky, prefix, "one").commit(State(live="green", previous="blue", generation=2),
                                                          base, event("flip", 2))
    loaded, read = await store_on(client, prefix, "reader").load()
    assert revision == read and loaded.generation == 2
    assert [e["action"] for e in loaded.history] == ["flip"]       # applied once, not twice
    assert flaky.txns == 2


async def test_a_commit_whose_request_was_lost_is_sent_again_and_lands_once(client, prefix):
    base = await seeded(client, prefix)
    flaky = LosesAnswers(client, ["drop"])
    revision = await store_on(flaky, prefix, "one").commit(State(live="green", previous="blue", generation=2),
                                                          base, event("flip", 2))
    loaded, read = await store_on(client, prefix, "reader").load()
    assert revision == read and [e["action"] for e in loaded.history] == ["flip"]


async def test_a_lost_answer_of_a_commit_that_landed_is_done_even_when_another_writer_followed(client, prefix):
    base = await seeded(client, prefix)
    other = store_on(client, prefix, "other")

    async def follow_it():
        _, revision = await other.load()
        await other.commit(State(live="blue", previous="green", generation=3), revision, event("flip", 3))

    revision = await store_on(LosesAnswers(client, ["lose"], follow_it), prefix, "one").commit(
        State(live="green", previous="blue", generation=2), base, event("flip", 2))
    loaded, read = await other.load()
    assert revision < read and loaded.generation == 3                 # ours landed, then theirs
    assert [e["generation"] for e in loaded.history] == [2, 3]


async def test_a_lost_request_while_another_writer_committed_is_a_conflict(client, prefix):
    base = await seeded(client, prefix)
    other = store_on(client, prefix, "other")

    async def overtake():
        await other.commit(State(live="blue", previous=None, generation=2, locked=True), base, event("lock", 2))

    with pytest.raises(StateConflict):
        await store_on(LosesAnswers(client, ["drop"], overtake), prefix, "one").commit(
            State(live="green", previous="blue", generation=2), base, event("flip", 2))
    loaded, _ = await other.load()
    assert loaded.locked and [e["action"] for e in loaded.history] == ["lock"]


async def test_answers_lost_twice_leave_the_outcome_unknown_and_say_so(client, prefix):
    base = await seeded(client, prefix)
    store = store_on(LosesAnswers(client, ["drop", "drop"]), prefix, "one")
    with pytest.raises(StoreUnavailable, match="did not answer whether the change was stored"):
        await store.commit(State(live="green", previous="blue", generation=2), base, event("flip", 2))
    loaded, read = await store_on(client, prefix, "reader").load()
    assert (read, loaded.generation) == (base, 1)


async def test_lost_answers_of_append_amend_and_add_drain_write_each_once(client, prefix):
    base = await seeded(client, prefix)
    flip = event("flip", 2)
    await store_on(client, prefix, "seed").commit(State(live="green", previous="blue", generation=2), base, flip)
    flaky = LosesAnswers(client, ["lose", "answer"])
    store = store_on(flaky, prefix, "one")
    await store.load()                                         # it knows the newest event's number
    await store.append(event("hold", 2, source="green"))       # lost, sent again: its compare fails
    flaky.plan = ["lose"]
    await store.amend(flip, {"recovery_ms": 3.0})              # lost, read again: it is there
    flaky.plan = ["lose", "answer"]
    await store.add_drain(2, "blue", outcome(5))               # lost, sent again: the key exists
    assert flaky.txns == 5
    loaded, _ = await store_on(client, prefix, "reader").load()
    assert [e["action"] for e in loaded.history] == ["flip", "hold"]
    assert loaded.history[0]["recovery_ms"] == 3.0 and loaded.history[0]["drained"] == 5


async def test_a_corrupt_state_key_is_a_state_error_naming_the_key(client, prefix):
    await client.put(prefix + "/state", b"{not json")
    with pytest.raises(StateError, match=f"{prefix}/state .*not valid JSON"):
        await store_on(client, prefix, "one").load()


# ---------------------------------------------------------------- the controller on it


@dataclasses.dataclass(frozen=True)
class Unstarted:
    """Unstarted: a backend address nothing listens on (the planes are never started)."""

    address: str


async def controller_on(store: EtcdStateStore, config) -> Controller:
    state, revision = await Controller.initial_state(config, store)
    plane = LocalPlane.build(config.settings(), Controller.route_of(state, tuple(config.environments)))
    controller = Controller(config, plane, store, state, revision)
    await controller.start()
    return controller


async def test_a_flip_on_one_controller_commits_to_etcd_and_another_controller_takes_it(client, prefix, tmp_path):
    config = proxy_config(tmp_path, {"blue": Unstarted("127.0.0.1:9"), "green": Unstarted("127.0.0.1:10")})
    one = await controller_on(store_on(client, prefix, "one"), config)
    two = await controller_on(store_on(client, prefix, "two"), config)
    try:
        await one.flip(force=True, reason="on one")
        stored = json.loads((await client.get(prefix + "/state")).value)
        assert (stored["live"], stored["generation"]) == ("green", 2)
        async with asyncio.timeout(10):
            while two.state.generation != 2:
                await asyncio.sleep(0.01)
        route = two.plane.snapshot().router.route
        assert (route.live, route.generation) == ("green", 2)
        assert two.revision == one.revision
        assert [e["reason"] for e in two.state.history] == ["on one"]
        # Each plane's drain of blue ends at once (nothing in flight); each replica stores its outcome.
        reader = store_on(client, prefix, "reader")
        async with asyncio.timeout(10):
            while set((await reader.load())[0].history[-1].get("drain", {}).get("replicas", ())) != {"one", "two"}:
                await asyncio.sleep(0.02)
        entry = (await reader.load())[0].history[-1]
        assert entry["drained"] == sum(part["drained"] for part in entry["drain"]["replicas"].values())
    finally:
        for controller in (one, two):
            controller.stop()
            await controller.close()


async def test_a_flip_while_etcd_is_sigstopped_answers_store_unavailable_and_changes_nothing(
        etcd, prefix, tmp_path):
    config = proxy_config(tmp_path, {"blue": Unstarted("127.0.0.1:9"), "green": Unstarted("127.0.0.1:10")})
    async with EtcdClient([etcd.endpoint], request_timeout=0.3) as impatient:
        controller = await controller_on(store_on(impatient, prefix, "one"), config)
        try:
            etcd.pause()
            try:
                with pytest.raises(ControlError) as raised:
                    await asyncio.wait_for(controller.flip(force=True), 10)
            finally:
                etcd.resume()
            assert raised.value.code == "store_unavailable" and raised.value.status == 503
            route = controller.plane.snapshot().router.route
            assert (route.live, route.generation, controller.state.live) == ("blue", 1, "blue")
        finally:
            controller.stop()
            await controller.close()


class Unreadable(EtcdStateStore):
    """Unreadable: an etcd store whose load gets no answer (etcd went away after the commit's conflict)."""

    __slots__ = ()

    async def load(self):
        raise self._unavailable("cannot read it: the test's etcd did not answer")


async def test_a_conflict_whose_reread_gets_no_answer_answers_store_unavailable(client, prefix, tmp_path):
    config = proxy_config(tmp_path, {"blue": Unstarted("127.0.0.1:9"), "green": Unstarted("127.0.0.1:10")})
    one = await controller_on(store_on(client, prefix, "one"), config)
    state, revision = await Controller.initial_state(config, store_on(client, prefix, "two"))
    plane = LocalPlane.build(config.settings(), Controller.route_of(state, tuple(config.environments)))
    # Not started: two does not follow the store, so its flip finds the state moved.
    two = Controller(config, plane, Unreadable(client, prefix, 1000, writer="two"), state, revision)
    try:
        await one.flip(force=True)
        with pytest.raises(ControlError) as raised:
            await two.lock_switch("on two")
        assert raised.value.code == "store_unavailable"
        assert "changed since this router read it" in str(raised.value)
        assert (two.state.generation, two.state.locked) == (1, False)
    finally:
        one.stop()
        await one.close()
