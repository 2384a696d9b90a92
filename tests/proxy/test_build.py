"""The data plane's build: pure Python or compiled with mypyc (setup.py, bench/build.py)."""

from __future__ import annotations

import importlib
import re
import os
import tomllib

import proxy
import pytest

from tests.support.paths import ROOT


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


# The image is not built here (no container engine on the test machines); these read the files.

def runtime_stage() -> str:
    return (ROOT / "Dockerfile").read_text().split("\nFROM ")[2]


def image_config(environ: dict):
    """image_config: config/docker.yaml parsed as serve would, without creating its state folder."""
    import yaml
    from admin.config import expand_env, parse_config
    path = ROOT / "config" / "docker.yaml"
    return parse_config(yaml.safe_load(expand_env(path.read_text(), environ)), path.parent, environ)


def test_the_image_keeps_its_state_on_a_volume():
    runtime = runtime_stage()
    assert 'VOLUME ["/var/lib/cutover"]' in runtime
    assert "chown cutover:cutover /var/lib/cutover" in runtime   # the non-root user can write it
    config = image_config({"CUTOVER_TOKEN": "t"})
    assert str(config.state_file).startswith("/var/lib/cutover/")


def test_the_image_config_listens_everywhere_and_requires_the_token():
    from admin.config import ConfigError
    assert "COPY config/docker.yaml ./config/cutover.yaml" in runtime_stage()
    with pytest.raises(ConfigError, match="CUTOVER_TOKEN"):
        image_config({})
    config = image_config({"CUTOVER_TOKEN": "t", "CUTOVER_BLUE": "10.1.0.5:8000"})
    assert config.listen.host == "0.0.0.0" and config.admin.listen.host == "0.0.0.0"
    assert config.admin.token == "t" and config.admin.auth == "token"
    assert str(config.environments["blue"].servers[0]) == "10.1.0.5:8000"


def test_the_documented_stop_grace_period_outlasts_the_drain():
    config = image_config({"CUTOVER_TOKEN": "t"})
    text = (ROOT / "Dockerfile").read_text()
    grace = re.search(r"docker stop -t (\d+)", text)
    assert grace and f"--stop-timeout {grace[1]}" in text and f"stop_grace_period: {grace[1]}s" in text
    assert int(grace[1]) > config.drain_timeout


def test_the_image_healthcheck_asks_readyz_on_the_admin_listener():
    runtime = runtime_stage()
    check = re.search(r"HEALTHCHECK .*?CMD (\[.*?\])\n", runtime, re.S)
    assert check, "a HEALTHCHECK with an exec-form CMD"
    assert "http://127.0.0.1:9901/readyz" in check[1]


def test_the_build_context_leaves_out_what_the_image_does_not_need():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "tests", "bench"} <= ignored
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    for sources in copied:
        for source in sources.split():
            assert source not in ignored and source.split("/")[0] not in ignored, source
            assert (ROOT / source).exists(), source
