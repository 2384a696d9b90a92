"""The config belongs to the control plane: the data plane is built from small frozen Settings.

admin/config.py loads, expands and validates the YAML; proxy/ gets only proxy.Settings from
Config.settings(): plain values that pickle (a worker can be sent them), with no admin,
gates, analysis or state section. The preview route's token is a setting of its own, so no
module of proxy/ reads the admin section, and no module of proxy/ parses YAML.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import pickle
from pathlib import Path

import pytest

import proxy
from admin.config import load_config, parse_config
from tests.support.paths import ROOT

BASE = {
    "listen": "127.0.0.1:0",
    "preview_listen": "127.0.0.1:0",
    "admin": {"listen": "127.0.0.1:0", "token": "s3cret"},
    "environments": {"blue": {"servers": ["127.0.0.1:7001", {"address": "127.0.0.1:7002", "weight": 3}]},
                     "green": {"servers": ["127.0.0.1:7003"]}},
    "live": "green",
    "hold": {"max_queued": 7},
    "canary": {"header": "X-User"},
    "forwarded_headers": "replace",
    "timeouts": {"connect": "250ms"},
    "limits": {"max_body_bytes": "1m"},
    "drain_timeout": "4s",
    "gates": {"smoke": [{"path": "/ok"}]},
    "analysis": {"window": "5s"},
}


def settings_of(**overrides):
    return parse_config({**BASE, **overrides}, Path("/tmp"), {}).settings()


def test_settings_carry_what_the_data_plane_reads_from_the_config():
    s = settings_of()
    assert [e.name for e in s.environments] == ["blue", "green"]
    assert [(str(a), w) for a, w in zip(s.environments[0].servers, s.environments[0].weights)] == [
        ("127.0.0.1:7001", 1), ("127.0.0.1:7002", 3)]
    assert (s.live, s.max_queued, s.canary_header, s.forwarded_headers) == ("green", 7, "X-User", "replace")
    assert (s.timeouts.connect, s.limits.max_body_bytes, s.drain_timeout) == (0.25, 1 << 20, 4.0)
    assert s.preview_listen is not None and s.preview_listen.port == 0


def test_settings_have_no_admin_gates_analysis_or_state_section():
    names = {f.name for f in dataclasses.fields(proxy.Settings)}
    assert not names & {"admin", "gates", "analysis", "state_file", "history_limit", "source", "hold"}


def test_settings_pickle_to_an_equal_value_small_enough_to_send_to_a_worker():
    s = settings_of()
    data = pickle.dumps(s)
    assert pickle.loads(data) == s
    assert len(data) < 4096
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.live = "blue"  # type: ignore[misc]


def test_the_reference_config_gives_picklable_settings():
    config = load_config(ROOT / "config" / "cutover.yaml", {"HOME": "/tmp", "CUTOVER_TOKEN": "t"})
    assert pickle.loads(pickle.dumps(config.settings())) == config.settings()


def test_the_preview_token_is_the_admin_token_unless_auth_is_none():
    assert settings_of().preview_token == "s3cret"
    assert settings_of(admin={"listen": "127.0.0.1:0", "auth": "none"}).preview_token is None


def proxy_sources():
    return sorted((ROOT / "proxy").glob("*.py"))


def test_no_data_plane_module_reads_an_admin_section_or_parses_yaml():
    wrong = []
    for path in proxy_sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("admin", "gates", "analysis", "state_file"):
                wrong.append(f"{path.name}:{node.lineno}: .{node.attr}")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(m == "yaml" or m.startswith(("yaml.", "admin")) for m in modules):
                    wrong.append(f"{path.name}:{node.lineno}: imports {modules}")
    assert len(proxy_sources()) > 10
    assert wrong == []


def test_the_config_module_lives_in_admin_only():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("proxy.config")


def test_admin_imports_the_data_plane_only_through_the_proxy_package():
    wrong = []
    for path in sorted((ROOT / "admin").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("proxy."):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module}")
            elif isinstance(node, ast.Import):
                wrong += [f"{path.relative_to(ROOT)}:{node.lineno}: import {a.name}"
                          for a in node.names if a.name.startswith("proxy.")]
    assert wrong == []
