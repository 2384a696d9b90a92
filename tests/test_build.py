"""The data plane's build: pure Python or compiled with mypyc (setup.py, bench/build.py)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import proxy

ROOT = Path(__file__).resolve().parent.parent


def compiled_modules() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        files = tomllib.load(f)["tool"]["mypy"]["files"]
    return [name.removesuffix(".py").replace("/", ".") for name in files]


def test_the_compiled_list_names_data_plane_modules_only():
    names = compiled_modules()
    assert "proxy.exchange" in names and "proxy.downstream" in names and "proxy.upstream" in names
    assert all(name.startswith("proxy.") for name in names)   # proxy/ never imports admin/


def test_every_listed_module_is_built_the_same_way():
    # A half-compiled data plane would mean a stale or partial build.
    kinds = {importlib.import_module(name).__file__.endswith(".py") for name in compiled_modules()}
    assert len(kinds) == 1
    assert proxy.build() == ("pure Python" if kinds == {True} else "compiled (mypyc)")


def test_the_build_is_the_one_ci_asked_for():
    # .ci/run runs the suite a second time on the compiled tree and says so here.
    expected = os.environ.get("CUTOVER_EXPECT_BUILD")
    if expected is not None:
        assert proxy.build() == expected


def test_cutover_version_names_the_build():
    out = subprocess.run([sys.executable, "-m", "admin.cli", "version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("cutover ")
    assert f"(data plane: {proxy.build()})" in out.stdout


def test_the_image_compiles_in_a_build_stage_and_runs_as_non_root():
    text = (ROOT / "Dockerfile").read_text()
    stages = text.split("\nFROM ")[1:]
    assert len(stages) == 2, "a build stage with a compiler, then the slim runtime"
    assert "python:3.11-bookworm AS build" in stages[0]
    assert "CUTOVER_COMPILE=require pip wheel" in stages[0]   # never a silently pure image
    runtime = stages[1]
    assert runtime.startswith("python:3.11-slim-bookworm")   # the same Debian as the build
    assert "COPY --from=build /wheels" in runtime and "pip install" in runtime
    assert "\nUSER cutover\n" in runtime and 'ENTRYPOINT ["cutover"]' in runtime
