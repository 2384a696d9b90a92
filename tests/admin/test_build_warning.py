"""A regular install that fell back to pure Python says so where the operator looks: serve and demo."""

from __future__ import annotations

import importlib.metadata
import json

import pytest

from admin import serve


class FakeDistribution:
    def __init__(self, direct_url: dict | None) -> None:
        self.direct_url = direct_url

    def read_text(self, name: str) -> str | None:
        assert name == "direct_url.json"
        return None if self.direct_url is None else json.dumps(self.direct_url)


def installed(monkeypatch, build: str, direct_url: dict | None | Exception) -> None:
    monkeypatch.setattr(serve, "data_plane_build", lambda: build)

    def distribution(name: str):
        assert name == "cutover"
        if isinstance(direct_url, Exception):
            raise direct_url
        return FakeDistribution(direct_url)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


@pytest.mark.parametrize("direct_url", [
    {"url": "file:///src/cutover", "dir_info": {}},   # pip install .
    None,                                             # installed from an index: no direct_url.json
])
def test_a_regular_install_running_pure_python_is_warned_about(monkeypatch, direct_url):
    installed(monkeypatch, "pure Python", direct_url)
    warning = serve.build_warning()
    assert warning is not None
    assert "pure Python" in warning and "gcc python3-dev" in warning


@pytest.mark.parametrize("build, direct_url", [
    ("compiled (mypyc)", {"url": "file:///src/cutover", "dir_info": {}}),
    ("pure Python", {"url": "file:///src/cutover", "dir_info": {"editable": True}}),
    ("pure Python", importlib.metadata.PackageNotFoundError("cutover")),   # a source tree, not installed
])
def test_compiled_editable_and_uninstalled_trees_are_not_warned_about(monkeypatch, build, direct_url):
    installed(monkeypatch, build, direct_url)
    assert serve.build_warning() is None
