"""The read token's config key, ``admin.read_token``: read and masked like the admin token, unset
when empty, never equal to admin.token, printable ASCII, and documented in the reference config.
What the read token may do is tests/e2e/test_admin_auth.py.
"""

from __future__ import annotations

import json

import pytest

from admin.config import Config, ConfigError, effective_config, load_config, parse_config
from tests.support.paths import ROOT

TOKEN = "admin-t0ken"
READ = "read-t0ken"
REFERENCE = ROOT / "config" / "cutover.yaml"


def admin_config(tmp_path, **admin) -> Config:
    data = {"admin": {"listen": "127.0.0.1:0", **admin},
            "environments": {"blue": {"servers": ["127.0.0.1:9001"]}, "green": {"servers": ["127.0.0.1:9101"]}}}
    return parse_config(data, tmp_path, {})


def test_read_token_is_read_and_masked(tmp_path):
    cfg = admin_config(tmp_path, token=TOKEN, read_token=READ)
    assert (cfg.admin.token, cfg.admin.read_token) == (TOKEN, READ)
    shown = effective_config(cfg)["admin"]
    assert shown["read_token"] == "***" and shown["token"] == "***"
    assert READ not in json.dumps(effective_config(cfg))


def test_read_token_defaults_to_none_and_empty_counts_as_unset(tmp_path):
    assert admin_config(tmp_path, token=TOKEN).admin.read_token is None
    assert admin_config(tmp_path, token=TOKEN, read_token="").admin.read_token is None
    assert effective_config(admin_config(tmp_path, token=TOKEN))["admin"]["read_token"] is None


@pytest.mark.parametrize("admin,message", [
    ({"token": TOKEN, "read_token": TOKEN}, "must differ from admin.token"),
    ({"token": TOKEN, "read_token": "has space"}, "printable ASCII"),
    ({"token": TOKEN, "read_token": "tab\there"}, "printable ASCII"),
    ({"token": TOKEN, "read_token": 5}, "admin.read_token"),
])
def test_read_token_validation_names_the_key(tmp_path, admin, message):
    with pytest.raises(ConfigError) as caught:
        admin_config(tmp_path, **admin)
    assert "admin.read_token" in str(caught.value) and message in str(caught.value), str(caught.value)


def test_the_reference_config_documents_read_token(tmp_path):
    text = REFERENCE.read_text()
    assert "read_token:" in text
    copy = tmp_path / "cutover.yaml"
    copy.write_text(text)
    cfg = load_config(copy, {"CUTOVER_TOKEN": TOKEN})
    assert cfg.admin.read_token is None
    cfg = load_config(copy, {"CUTOVER_TOKEN": TOKEN, "CUTOVER_READ_TOKEN": READ})
    assert cfg.admin.read_token == READ
