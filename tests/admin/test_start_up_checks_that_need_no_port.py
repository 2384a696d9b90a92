"""The start-up checks serve and check-config share that need no port (admin.serve.check_start):
a non-loopback admin listener without a token is a config error naming the key, and the state
the plan starts from is the saved one, or the config's when none is saved. Those that bind, and
check-config and serve as processes, are tests/e2e/test_check_config_startup_checks.py.
"""

from __future__ import annotations

import dataclasses

import pytest

from admin.config import Address, AdminConfig, ConfigError, load_config, parse_config
from admin.serve import check_start, start
from admin.state import StateError
from tests.support.stack import save_state, write_config


def test_a_non_loopback_admin_without_a_token_is_a_config_error_naming_the_key(tmp_path):
    config = parse_config({"environments": {"blue": {"servers": ["127.0.0.1:19001"]},
                                            "green": {"servers": ["127.0.0.1:19002"]}},
                           "admin": {"listen": "127.0.0.1:0", "auth": "none"},
                           "state_file": str(tmp_path / "state.json")}, tmp_path, {})
    wide_open = dataclasses.replace(config, admin=AdminConfig(Address("0.0.0.0", 9901), None, "token"))
    with pytest.raises(ConfigError) as refused:
        check_start(wide_open)
    assert refused.value.key == "admin.token" and "loopback" in str(refused.value)


async def test_serve_start_refuses_a_non_loopback_admin_without_a_token_as_a_config_error(tmp_path):
    config = parse_config({"environments": {"blue": {"servers": ["127.0.0.1:19001"]},
                                            "green": {"servers": ["127.0.0.1:19002"]}},
                           "admin": {"listen": "127.0.0.1:0", "auth": "none"},
                           "state_file": str(tmp_path / "state.json")}, tmp_path, {})
    wide_open = dataclasses.replace(config, admin=AdminConfig(Address("0.0.0.0", 0), None, "token"))
    with pytest.raises(ConfigError):
        await start(wide_open)


def test_check_start_answers_the_state_serve_would_start_from(tmp_path):
    plan = check_start(load_config(write_config(tmp_path)))
    assert (plan.saved, plan.state.live, plan.state.generation) == (False, "blue", 1)
    save_state(tmp_path, "green", "blue", 7)
    plan = check_start(load_config(write_config(tmp_path)))
    assert (plan.state.live, plan.state.previous, plan.state.generation) == ("green", "blue", 7)
    assert plan.saved and plan.store.path == tmp_path / "state.json"
    save_state(tmp_path, "purple", "blue", 8)
    with pytest.raises(StateError):
        check_start(load_config(write_config(tmp_path)))
