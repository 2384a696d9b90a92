"""The history cap's config key, ``history_limit``: an integer from 1 to 100000, default 1000,
shown in the effective config and documented with its default in the reference config.
That the cap holds in memory and in the state file is tests/e2e/test_history_paging.py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from admin.config import ConfigError, effective_config, load_config, parse_config
from tests.support.paths import ROOT

REFERENCE = ROOT / "config" / "cutover.yaml"


def config_with(**top) -> dict:
    return {"admin": {"auth": "none"}, "environments": {"blue": {"servers": ["127.0.0.1:9001"]},
                                                         "green": {"servers": ["127.0.0.1:9101"]}},
            **top}


@pytest.mark.parametrize("value", [0, -1, 100001, "1000", 1.5, True, None, [10]])
def test_a_bad_history_limit_is_a_config_error_naming_the_key(value):
    with pytest.raises(ConfigError) as caught:
        parse_config(config_with(history_limit=value), Path("/srv"), {})
    assert caught.value.key == "history_limit"
    assert re.search(r"expected an integer|must be between 1 and 100000", caught.value.message), caught.value


def test_history_limit_is_read_and_shown_in_the_effective_config():
    cfg = parse_config(config_with(history_limit=50), Path("/srv"), {})
    assert cfg.history_limit == 50
    assert effective_config(cfg)["history_limit"] == 50
    assert parse_config(config_with(), Path("/srv"), {}).history_limit == 1000


def test_the_reference_config_documents_history_limit_with_its_default(tmp_path):
    text = REFERENCE.read_text()
    line = re.search(r"^history_limit: *(\d+)", text, re.MULTILINE)
    assert line is not None and line.group(1) == "1000"
    comment = text[:line.start()].rsplit("\n\n", 1)[-1]
    assert "Default 1000" in comment and "history" in comment
    cfg = load_config(Path(shutil.copy(REFERENCE, tmp_path / "cutover.yaml")), {"CUTOVER_TOKEN": "t"})
    assert cfg.history_limit == 1000
