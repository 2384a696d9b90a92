"""The `access_log` and `request_id` sections of the config (SPEC §12): defaults, paths, every
error naming its key path, the effective config, and what reaches the data plane's Settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from admin.config import ConfigError, effective_config, parse_config
from proxy.settings import AccessLogConfig


def config(tmp_path: Path, **top):
    data = {"admin": {"auth": "none"},
            "environments": {"blue": {"servers": ["127.0.0.1:9001"]}, "green": {"servers": ["127.0.0.1:9002"]}},
            "state_file": str(tmp_path / "state.json"), **top}
    return parse_config(data, tmp_path, {"HOME": str(tmp_path)})


def test_by_default_there_is_no_access_log_and_ids_are_generated(tmp_path):
    cfg = config(tmp_path)
    assert cfg.access_log is None and cfg.generate_request_id is True
    settings = cfg.settings()
    assert settings.access_log is None and settings.generate_request_id is True


@pytest.mark.parametrize("section, expected", [
    ({"path": "-"}, AccessLogConfig("-", "json")),
    ({"path": "-", "format": "combined"}, AccessLogConfig("-", "combined")),
    ({"path": None, "format": "combined"}, None),
    ({}, None),
    (None, None),
])
def test_access_log_sections(tmp_path, section, expected):
    assert config(tmp_path, access_log=section).access_log == expected


def test_a_relative_path_is_relative_to_the_config_folder_and_home_is_expanded(tmp_path):
    (tmp_path / "logs").mkdir()
    assert config(tmp_path, access_log={"path": "logs/a.log"}).settings().access_log.path == \
        str(tmp_path / "logs" / "a.log")
    assert config(tmp_path, access_log={"path": "~/b.log"}).access_log.path == str(tmp_path / "b.log")


@pytest.mark.parametrize("section, key, words", [
    ({"path": "-", "format": "xml"}, "access_log.format", "expected one of json, combined"),
    ({"path": 7}, "access_log.path", "expected a string"),
    ({"path": " "}, "access_log.path", "must not be empty"),
    ({"path": "nowhere/a.log"}, "access_log.path", "does not exist"),
    ({"path": "."}, "access_log.path", "is a folder"),
    ({"path": "-", "level": "info"}, "access_log.level", "unknown key"),
    ("yes", "access_log", "expected a mapping"),
])
def test_access_log_errors_name_their_key(tmp_path, section, key, words):
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, access_log=section)
    assert caught.value.key == key and words in str(caught.value)


@pytest.mark.parametrize("section, key, words", [
    ({"generate": "no"}, "request_id.generate", "expected true or false"),
    ({"generate": 1}, "request_id.generate", "expected true or false"),
    ({"header": "X-Trace"}, "request_id.header", "unknown key"),
])
def test_request_id_errors_name_their_key(tmp_path, section, key, words):
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, request_id=section)
    assert caught.value.key == key and words in str(caught.value)


def test_generate_false_reaches_the_settings(tmp_path):
    assert config(tmp_path, request_id={"generate": False}).settings().generate_request_id is False


def test_the_effective_config_shows_both_sections_and_is_a_valid_config_itself(tmp_path):
    cfg = config(tmp_path, access_log={"path": "a.log", "format": "combined"}, request_id={"generate": False})
    effective = effective_config(cfg)
    assert effective["access_log"] == {"path": str(tmp_path / "a.log"), "format": "combined"}
    assert effective["request_id"] == {"generate": False}
    again = parse_config(effective, tmp_path, {})
    assert again.access_log == cfg.access_log and again.generate_request_id is False
    assert effective_config(config(tmp_path))["access_log"] == {"path": None, "format": "json"}
