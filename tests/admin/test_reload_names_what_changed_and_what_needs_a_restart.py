"""admin/reload.py: the key paths a re-read config changes, and which of them need a restart."""

from __future__ import annotations

import pytest

from admin.config import parse_config
from admin.reload import changed_keys, restart_keys


def config(tmp_path, **overrides):
    data = {
        "listen": "127.0.0.1:8080",
        "admin": {"listen": "127.0.0.1:9901", "token": "t0ken"},
        "environments": {"blue": {"servers": ["127.0.0.1:9001"]}, "green": {"servers": ["127.0.0.1:9002"]}},
        "state_file": str(tmp_path / "state.json"),
    }
    data.update(overrides)
    return parse_config(data, tmp_path, {})


def test_a_key_written_out_with_its_default_value_is_no_change(tmp_path):
    assert changed_keys(config(tmp_path), config(tmp_path, drain_timeout="30s", timeouts={"connect": 2})) == []


def test_each_changed_leaf_is_named_by_its_path_in_config_order(tmp_path):
    new = config(tmp_path, timeouts={"connect": "1s"}, health_check={"path": "/ready"},
                 environments={"blue": {"servers": ["127.0.0.1:9001", "127.0.0.1:9003"]},
                               "green": {"servers": ["127.0.0.1:9002"]}})
    assert changed_keys(config(tmp_path), new) == ["environments.blue.servers", "health_check.path",
                                                   "timeouts.connect"]


def test_a_section_turned_on_or_off_is_one_key(tmp_path):
    assert changed_keys(config(tmp_path), config(tmp_path, canary={"header": "X-Canary"})) == ["canary"]
    assert changed_keys(config(tmp_path, gates={"schema": {"command": "true"}}), config(tmp_path)) == ["gates.schema"]


def test_a_secret_is_compared_by_its_value_and_named_without_it(tmp_path):
    old, new = config(tmp_path), config(tmp_path, admin={"listen": "127.0.0.1:9901", "token": "other-t0ken"})
    assert changed_keys(old, new) == ["admin.token"]


@pytest.mark.parametrize("overrides, keys", [
    ({"listen": "127.0.0.1:8081"}, ["listen"]),
    ({"preview_listen": "127.0.0.1:8082"}, ["preview_listen"]),
    ({"admin": {"listen": "127.0.0.1:9902", "token": "t0ken"}}, ["admin.listen"]),
    ({"workers": 3}, ["workers"]),
    ({"history_limit": 10}, ["history_limit"]),
])
def test_sockets_processes_and_the_store_need_a_restart(tmp_path, overrides, keys):
    old, new = config(tmp_path), config(tmp_path, **overrides)
    assert restart_keys(old, new, changed_keys(old, new)) == keys


def test_worker_nice_needs_a_restart_with_workers_and_is_no_change_with_one_process(tmp_path):
    old, new = config(tmp_path, workers=2), config(tmp_path, workers=2, worker_nice=0)
    assert restart_keys(old, new, changed_keys(old, new)) == ["worker_nice"]
    old, new = config(tmp_path), config(tmp_path, worker_nice=0)
    assert changed_keys(old, new) == []


def test_renamed_environments_need_a_restart_and_other_changes_do_not(tmp_path):
    old = config(tmp_path)
    renamed = config(tmp_path, environments={"blue": {"servers": ["127.0.0.1:9001"]},
                                             "red": {"servers": ["127.0.0.1:9002"]}}, live="blue")
    assert restart_keys(old, renamed, changed_keys(old, renamed))[0] == "environments"
    tuned = config(tmp_path, timeouts={"connect": "1s"}, limits={"max_body_bytes": "1MiB"}, log={"format": "json"})
    assert restart_keys(old, tuned, changed_keys(old, tuned)) == []


def test_without_a_store_the_replica_name_following_listen_is_not_a_change_of_its_own(tmp_path):
    old, new = config(tmp_path), config(tmp_path, listen="127.0.0.1:8081")
    assert changed_keys(old, new) == ["listen"]
