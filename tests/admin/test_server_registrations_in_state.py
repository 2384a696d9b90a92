"""Server registrations as a runtime fact (SPEC §8, §12): their form in the State, and the fingerprint rule.

A registration is kept with the fingerprint of the config's list it replaced; a wrong shape
is a StateError naming the key; a registration of an environment the config lacks stops
the start; the fingerprint changes with any change of the config's list (address, order,
weight), which is what drops a registration.
"""

from __future__ import annotations

import pytest

from admin.config import ConfigError, parse_servers
from admin.controller import fingerprint
from admin.state import FileStateStore, State, StateError
from tests.support.stack import proxy_config


class Addr:
    def __init__(self, address: str) -> None:
        self.address = address


def config(tmp_path, green=("127.0.0.1:9101",)):
    return proxy_config(tmp_path, {"blue": Addr("127.0.0.1:9001"), "green": [Addr(a) for a in green]})


def registered(**registrations) -> dict:
    data = State(live="blue", previous=None, generation=3).to_dict()
    data["registrations"] = registrations
    return data


GOOD = {"servers": [{"address": "127.0.0.1:9201", "weight": 2}], "fingerprint": "0123456789abcdef"}


def test_a_registration_survives_save_and_load(tmp_path):
    store = FileStateStore(tmp_path / "state.json")
    state = State.from_dict(registered(green=GOOD), "test")
    store.save(state)
    loaded, _ = store.read()
    assert loaded.registrations == {"green": GOOD}


def test_a_state_without_registrations_keeps_its_old_form():
    assert "registrations" not in State(live="blue", previous=None, generation=1).to_dict()
    assert State.from_dict(State(live="blue", previous=None, generation=1).to_dict(), "t").registrations == {}


@pytest.mark.parametrize("registrations, words", [
    ({"green": []}, '"registrations.green" must be an object'),
    ({"green": {**GOOD, "servers": []}}, '"registrations.green.servers" must be a non-empty list'),
    ({"green": {**GOOD, "fingerprint": ""}}, '"registrations.green.fingerprint" must be a non-empty string'),
    ({"green": {**GOOD, "extra": 1}}, 'unknown key "registrations.green.extra"'),
    ({"green": {**GOOD, "servers": [{"address": 5}]}}, '"registrations.green.servers[0].address" must be a string'),
    ({"green": {**GOOD, "servers": [{"address": "h:1", "weight": 0}]}},
     '"registrations.green.servers[0].weight" must be an integer >= 1'),
    ({"green": {**GOOD, "servers": ["h:1"]}}, '"registrations.green.servers[0]" must be an object'),
])
def test_a_wrong_shape_is_a_state_error_naming_the_key(registrations, words):
    with pytest.raises(StateError) as caught:
        State.from_dict(registered(**registrations), "file s.json")
    assert words in str(caught.value) and "file s.json" in str(caught.value)


def test_registrations_must_be_an_object():
    data = registered()
    data["registrations"] = ["green"]
    with pytest.raises(StateError, match='"registrations" must be an object'):
        State.from_dict(data, "t")


def test_a_registration_of_an_environment_the_config_lacks_stops_the_start():
    state = State.from_dict(registered(purple=GOOD), "t")
    with pytest.raises(StateError, match='names environment "purple"'):
        state.check_environments(["blue", "green"], "t")


def test_the_fingerprint_follows_every_change_of_the_config_list(tmp_path):
    base = fingerprint(config(tmp_path, ("127.0.0.1:9101", "127.0.0.1:9102")).environments["green"])
    assert base == fingerprint(config(tmp_path, ("127.0.0.1:9101", "127.0.0.1:9102")).environments["green"])
    for other in (("127.0.0.1:9102", "127.0.0.1:9101"), ("127.0.0.1:9101",), ("127.0.0.1:9101", "127.0.0.1:9103")):
        assert fingerprint(config(tmp_path, other).environments["green"]) != base
    weighted = proxy_config(tmp_path, {"blue": Addr("127.0.0.1:9001"), "green": Addr("127.0.0.1:9101")})
    assert fingerprint(weighted.environments["green"]) != fingerprint(
        proxy_config(tmp_path, {"blue": Addr("127.0.0.1:9001"), "green": Addr("127.0.0.1:9101")},
                     environments={"blue": {"servers": ["127.0.0.1:9001"]},
                                   "green": {"servers": [{"address": "127.0.0.1:9101", "weight": 2}]}}
                     ).environments["green"])


def test_a_registered_list_is_checked_as_the_configs_and_errors_name_the_entry(tmp_path):
    cfg = config(tmp_path)
    env = parse_servers(cfg, "green", ["127.0.0.1:9201", {"address": "localhost:9202", "weight": 3}])
    assert [str(a) for a in env.servers] == ["127.0.0.1:9201", "localhost:9202"] and env.weights == (1, 3)
    for value, key in ((["127.0.0.1:1", "x"], "servers[1]"), ([], "servers"), ("a", "servers"),
                       ([{"weight": 2}], "servers[0].address")):
        with pytest.raises(ConfigError) as caught:
            parse_servers(cfg, "green", value)
        assert caught.value.key == key
    fixed = proxy_config(tmp_path, {"blue": Addr("127.0.0.1:9001"), "green": Addr("127.0.0.1:9101")},
                         listen="127.0.0.1:8080")
    with pytest.raises(ConfigError, match="cutover's own listen address"):
        parse_servers(fixed, "green", ["127.0.0.1:8080"])
