"""Table tests for admin/config.py: durations, ${VAR}, addresses, every validation rule."""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
from pathlib import Path

import pytest

from admin.config import (
    Address,
    AdminConfig,
    Config,
    ConfigError,
    DriftGate,
    EnvironmentConfig,
    GatesConfig,
    HealthCheckConfig,
    HoldConfig,
    LimitsConfig,
    SchemaGate,
    SmokeProbe,
    TimeoutsConfig,
    WarmupGate,
    effective_config,
    expand_env,
    load_config,
    parse_address,
    parse_config,
    parse_duration,
    parse_size,
)
from tests.support.paths import ROOT as REPO

REFERENCE = REPO / "config" / "cutover.yaml"
LOCAL = REPO / "config" / "local.yaml"
DELETE = object()


def minimal() -> dict:
    return {
        "admin": {"auth": "none"},
        "environments": {
            "blue": {"servers": ["127.0.0.1:9001", "127.0.0.1:9002"]},
            "green": {"servers": ["127.0.0.1:9101"]},
        },
    }


def patched(patch: dict) -> dict:
    """patched: minimal() with patch merged in; DELETE removes a key, non-dicts replace."""

    def merge(base: dict, changes: dict) -> dict:
        for key, value in changes.items():
            if value is DELETE:
                base.pop(key, None)
            elif isinstance(value, dict) and isinstance(base.get(key), dict) and value:
                merge(base[key], value)
            else:
                base[key] = copy.deepcopy(value)
        return base

    return merge(minimal(), patch)


def parse(data: object, base_dir: Path = Path("/srv/cutover")) -> Config:
    return parse_config(data, base_dir, {})


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h1m1s500ms", 3661.5),
        ("1.5s", 1.5),
        (".5s", 0.5),
        (" 2s ", 2.0),
        ("5", 5.0),
        ("0.25", 0.25),
        (5, 5.0),
        (0.5, 0.5),
        (0, 0.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration_accepts(value, seconds):
    assert parse_duration(value, "timeouts.connect") == pytest.approx(seconds)
    assert isinstance(parse_duration(value, "x"), float)


@pytest.mark.parametrize(
    "value",
    [True, False, None, -1, -0.5, "-1s", "abc", "2x", "", "s", "ms", "1 s", "1ms2", "2 seconds",
     "1d", math.inf, math.nan, "inf", [1], {"s": 1}],
)
def test_parse_duration_rejects_and_names_path(value):
    with pytest.raises(ConfigError) as err:
        parse_duration(value, "timeouts.connect")
    assert str(err.value).startswith("timeouts.connect: ")
    assert err.value.key == "timeouts.connect"


@pytest.mark.parametrize(
    ("value", "size"),
    [(0, 0), (65536, 65536), ("64k", 65536), ("64K", 65536), ("1m", 1 << 20), ("2g", 2 << 30),
     ("1MiB", 1 << 20), ("8kb", 8192), ("123", 123)],
)
def test_parse_size_accepts(value, size):
    assert parse_size(value, "limits.max_body_bytes") == size


@pytest.mark.parametrize("value", [True, -1, 1.5, "1.5k", "1t", "k", "", None, [1]])
def test_parse_size_rejects_and_names_path(value):
    with pytest.raises(ConfigError, match=r"^limits\.max_body_bytes: "):
        parse_size(value, "limits.max_body_bytes")


# --------------------------------------------------------------------------- ${VAR}


@pytest.mark.parametrize(
    ("text", "environ", "expected"),
    [
        ("token: ${T}", {"T": "abc"}, "token: abc"),
        ("token: ${T}${U}", {"T": "a", "U": "b"}, "token: ab"),
        ('a: "${T}/x"\nb: ${U}\n', {"T": "1", "U": "2"}, 'a: "1/x"\nb: 2\n'),
        ("token: ${T:-dflt}", {}, "token: dflt"),
        ("token: ${T:-dflt}", {"T": ""}, "token: dflt"),
        ("token: ${T:-dflt}", {"T": "set"}, "token: set"),
        ("token: ${T:-}", {}, "token: "),
        ("token: ${T:-a b:c}", {}, "token: a b:c"),
        ("token: ${T}", {"T": ""}, "token: "),
        ("price: $$5", {}, "price: $5"),
        ("literal: $${T}", {}, "literal: ${T}"),
        ("literal: $$$${T}", {}, "literal: $${T}"),
        ("both: $$${T}", {"T": "x"}, "both: $x"),
        ("lone: a$b $ c$", {}, "lone: a$b $ c$"),
        ("no vars here", {}, "no vars here"),
        ("# token: ${UNSET}\nx: 1\n", {}, "# token: ${UNSET}\nx: 1\n"),
        ("x: 1  # see ${UNSET}\n", {}, "x: 1  # see ${UNSET}\n"),
        ("x: ${T} # ${UNSET} $$\n", {"T": "v"}, "x: v # ${UNSET} $$\n"),
        ("x: it's ${T} # ${UNSET}\n", {"T": "v"}, "x: it's v # ${UNSET}\n"),
        ('x: "a #${T}"\n', {"T": "v"}, 'x: "a #v"\n'),
        ("x: 'a # ${T}'\n", {"T": "v"}, "x: 'a # v'\n"),
        ('x: "q\\" # ${T}"\n', {"T": "v"}, 'x: "q\\" # v"\n'),
        ("x: a#${T}\n", {"T": "v"}, "x: a#v\n"),
    ],
)
def test_expand_env(text, environ, expected):
    assert expand_env(text, environ) == expected


def test_expand_env_unset_variable_is_named_with_its_line():
    with pytest.raises(ConfigError) as err:
        expand_env("a: 1\nadmin:\n  token: ${CUTOVER_TOKEN}\n", {"OTHER": "x"})
    message = str(err.value)
    assert "CUTOVER_TOKEN" in message
    assert "not set" in message
    assert err.value.line == 3
    assert message.startswith("line 3: ")


@pytest.mark.parametrize("text", ["x: ${1ABC}", "x: ${A", "x: ${A-b}", "x: ${}", "x: ${A B}", "x: ${A:b}"])
def test_expand_env_rejects_malformed_reference(text):
    with pytest.raises(ConfigError, match="malformed variable reference"):
        expand_env(text, {"A": "1", "ABC": "2"})


# --------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080, "127.0.0.1:8080"),
        ("0.0.0.0:1", "0.0.0.0", 1, "0.0.0.0:1"),
        ("localhost:65535", "localhost", 65535, "localhost:65535"),
        ("LocalHost:80", "localhost", 80, "localhost:80"),
        ("app-1.internal.example:443", "app-1.internal.example", 443, "app-1.internal.example:443"),
        ("blue_app:9000", "blue_app", 9000, "blue_app:9000"),
        ("[::1]:8080", "::1", 8080, "[::1]:8080"),
        ("[0:0::1]:80", "::1", 80, "[::1]:80"),
        ("[2001:DB8::1]:80", "2001:db8::1", 80, "[2001:db8::1]:80"),
        ("[::]:80", "::", 80, "[::]:80"),
        (" 127.0.0.1:80 ", "127.0.0.1", 80, "127.0.0.1:80"),
        ("127.0.0.1:080", "127.0.0.1", 80, "127.0.0.1:80"),
    ],
)
def test_parse_address_accepts(text, host, port, shown):
    address = parse_address(text, "listen")
    assert address == Address(host, port)
    assert str(address) == shown


@pytest.mark.parametrize(
    "value",
    ["localhost", "127.0.0.1", ":80", "::1:80", "[::1]80", "[::1]", "[nope]:80", "[127.0.0.1]:80",
     "host:abc", "host:", "host:-1", "host:70000", "host:65536", "host:0", "bad host:80",
     "-x:80", "x..y:80", "1.2.3.999:80", "999:80", "h\u00e9:80", "host:\u0661", 8080, None, True, ["a:1"], {"a": 1}],
)
def test_parse_address_rejects_and_names_path(value):
    with pytest.raises(ConfigError) as err:
        parse_address(value, "environments.green.servers[0]")
    message = str(err.value)
    assert message.startswith("environments.green.servers[0]: ")
    assert "host:port" in message or "port" in message


def test_an_ipv4_host_is_accepted_exactly_when_ipaddress_accepts_it_and_kept_as_it_writes_it():
    import ipaddress
    for n in list(range(256)) + [256, 299, 999]:
        for octet in (str(n), "0" + str(n), "00" + str(n)):
            host = f"{octet}.1.20.{octet}"
            try:
                expected = str(ipaddress.IPv4Address(host))
            except ValueError:
                expected = None
            try:
                got = parse_address(f"{host}:80", "k").host
            except ConfigError:
                got = None
            assert got == expected, host


def test_parse_address_message_shows_the_bad_value():
    with pytest.raises(ConfigError) as err:
        parse_address("localhost", "environments.green.servers[0]")
    assert str(err.value) == 'environments.green.servers[0]: expected "host:port", got "localhost"'


def test_parse_address_port_zero_only_when_allowed():
    assert parse_address("127.0.0.1:0", "listen", allow_port_zero=True).port == 0
    with pytest.raises(ConfigError, match="out of range 1..65535"):
        parse_address("127.0.0.1:0", "environments.blue.servers[0]")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.255.0.9", True), ("::1", True), ("localhost", True),
     ("LOCALHOST", True), ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False),
     ("10.0.0.1", False), ("128.0.0.1", False), ("example.com", False), ("localhost.example", False)],
)
def test_address_is_loopback(host, loopback):
    assert Address(host, 80).is_loopback is loopback


# --------------------------------------------------------------------------- parse_config


def test_minimal_config_gets_every_default():
    cfg = parse(minimal())
    assert cfg.listen == Address("127.0.0.1", 8080)
    assert cfg.admin == AdminConfig(listen=Address("127.0.0.1", 9901), token=None, auth="none")
    assert list(cfg.environments) == ["blue", "green"]
    assert cfg.environments["blue"] == EnvironmentConfig(
        "blue", (Address("127.0.0.1", 9001), Address("127.0.0.1", 9002)), (1, 1)
    )
    assert cfg.live == "blue"
    assert cfg.state_file == Path("/srv/cutover/var/cutover-state.json")
    assert cfg.health_check == HealthCheckConfig("/healthz", 1.0, 1.0, 2, 2)
    assert cfg.drain_timeout == 30.0
    assert cfg.timeouts == TimeoutsConfig(2.0, 30.0, 10.0, 60.0)
    assert cfg.limits == LimitsConfig(65536, None, 10000)
    assert cfg.hold == HoldConfig(30.0, 10000)
    assert cfg.forwarded_headers == "append"
    assert cfg.gates == GatesConfig((), None, None, None)
    assert cfg.preview_listen is None
    assert cfg.canary_header is None
    assert cfg.source is None


def test_every_key_is_read():
    data = {
        "listen": "0.0.0.0:0",
        "preview_listen": "127.0.0.1:0",
        "admin": {"listen": "[::1]:0", "token": "s3cr3t", "auth": "token"},
        "environments": {
            "green": {"servers": [{"address": "10.0.0.2:80", "weight": 3}, "10.0.0.3:80"]},
            "blue": {"servers": ["10.0.0.1:80"]},
        },
        "live": "blue",
        "state_file": "/var/lib/cutover/state.json",
        "health_check": {"path": "/ready", "interval": "500ms", "timeout": 0.25,
                         "healthy_after": 3, "unhealthy_after": 1},
        "drain_timeout": 0,
        "timeouts": {"connect": "1s", "upstream_response": "2m", "client_header": 5,
                     "keepalive_idle": "1h"},
        "limits": {"max_header_bytes": "16k", "max_body_bytes": 0, "max_connections": 1},
        "hold": {"max_wait": "1m30s", "max_queued": 0},
        "forwarded_headers": "replace",
        "canary": {"header": "X-Canary-Key"},
        "gates": {
            "smoke": [{"path": "/", "expect_status": 200, "expect_body_contains": "ok"},
                      {"path": "/api?x=1", "method": "HEAD", "expect_status": 204}],
            "drift": {"path": "/fp", "ignore": ["version", "build"]},
            "schema": {"command": "./scripts/check-compat.sh"},
            "warmup": {"paths": ["/", "/api"], "requests": 3},
        },
    }
    cfg = parse(data)
    assert cfg.listen == Address("0.0.0.0", 0)
    assert cfg.preview_listen == Address("127.0.0.1", 0)
    assert cfg.admin == AdminConfig(Address("::1", 0), "s3cr3t", "token")
    assert list(cfg.environments) == ["green", "blue"]
    assert cfg.environments["green"].servers == (Address("10.0.0.2", 80), Address("10.0.0.3", 80))
    assert cfg.environments["green"].weights == (3, 1)
    assert cfg.live == "blue"
    assert cfg.state_file == Path("/var/lib/cutover/state.json")
    assert cfg.health_check == HealthCheckConfig("/ready", 0.5, 0.25, 3, 1)
    assert cfg.drain_timeout == 0.0
    assert cfg.timeouts == TimeoutsConfig(1.0, 120.0, 5.0, 3600.0)
    assert cfg.limits == LimitsConfig(16384, 0, 1)
    assert cfg.hold == HoldConfig(90.0, 0)
    assert cfg.forwarded_headers == "replace"
    assert cfg.canary_header == "X-Canary-Key"
    assert cfg.gates == GatesConfig(
        smoke=(SmokeProbe("/", 200, "ok", "GET"), SmokeProbe("/api?x=1", 204, None, "HEAD")),
        drift=DriftGate("/fp", ("version", "build")),
        schema=SchemaGate("./scripts/check-compat.sh"),
        warmup=WarmupGate(("/", "/api"), 3),
    )


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"live": "green"}, "green"),
        ({"live": None}, "blue"),
        ({"environments": {"blue": DELETE, "red": {"servers": ["127.0.0.1:1"]}}}, "green"),
    ],
)
def test_live_defaults_to_first_environment(patch, expected):
    assert parse(patched(patch)).live == expected


@pytest.mark.parametrize(
    ("patch", "check"),
    [
        ({"gates": None}, lambda c: c.gates == GatesConfig()),
        ({"gates": {}}, lambda c: c.gates == GatesConfig()),
        ({"gates": {"drift": {}}}, lambda c: c.gates.drift == DriftGate("/__fingerprint", ())),
        ({"gates": {"drift": None}}, lambda c: c.gates.drift is None),
        ({"gates": {"schema": {}}}, lambda c: c.gates.schema == SchemaGate(None)),
        ({"gates": {"schema": {"command": ""}}}, lambda c: c.gates.schema == SchemaGate(None)),
        ({"gates": {"smoke": []}}, lambda c: c.gates.smoke == ()),
        ({"gates": {"smoke": [{"path": "/", "expect_body_contains": ""}]}},
         lambda c: c.gates.smoke[0].expect_body_contains is None),
        ({"gates": {"warmup": {"paths": ["/"]}}}, lambda c: c.gates.warmup == WarmupGate(("/",), 10)),
        ({"timeouts": None, "limits": None, "hold": None, "health_check": None},
         lambda c: (c.timeouts, c.limits, c.hold, c.health_check)
         == (TimeoutsConfig(), LimitsConfig(), HoldConfig(), HealthCheckConfig())),
        ({"limits": {"max_body_bytes": None}}, lambda c: c.limits.max_body_bytes is None),
        ({"limits": {"max_body_bytes": "10m"}}, lambda c: c.limits.max_body_bytes == 10 << 20),
        ({"limits": {}}, lambda c: c.limits.max_response_header_bytes == 65536),
        ({"limits": {"max_response_header_bytes": "16k"}}, lambda c: c.limits.max_response_header_bytes == 16384),
        ({"timeouts": {}}, lambda c: c.timeouts.client_body == 30.0),
        ({"timeouts": {"client_body": "250ms"}}, lambda c: c.timeouts.client_body == 0.25),
        ({"canary": None}, lambda c: c.canary_header is None),
        ({"canary": {}}, lambda c: c.canary_header is None),
        ({"preview_listen": None}, lambda c: c.preview_listen is None),
        ({"admin": {"token": "t", "auth": "none"}}, lambda c: c.admin.auth == "none"),
        ({"admin": {"listen": "localhost:9901"}}, lambda c: c.admin.listen.is_loopback),
        ({"admin": {"listen": "[::1]:9901"}}, lambda c: c.admin.listen == Address("::1", 9901)),
        ({"admin": {"token": "t", "auth": DELETE, "listen": "0.0.0.0:9901"}},
         lambda c: c.admin == AdminConfig(Address("0.0.0.0", 9901), "t", "token")),
        ({"listen": "0.0.0.0:8080", "admin": {"listen": "127.0.0.1:9901"}},
         lambda c: c.listen.is_wildcard),
        ({"listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0"}, "preview_listen": "127.0.0.1:0"},
         lambda c: c.listen.port == c.admin.listen.port == c.preview_listen.port == 0),
        ({"environments": {"blue": {"servers": ["localhost:9001"]}, "green": {"servers": ["127.0.0.1:9001"]}}},
         lambda c: True),
        ({"environments": {"blue": {"servers": ["127.0.0.1:9001"]}, "green": {"servers": ["127.0.0.1:9002"]}}},
         lambda c: len(c.environments["blue"].servers) == 1),
        ({"environments": {"blue": DELETE, "green": DELETE,
                           "a": {"servers": ["h:1"]}, "b-2_x": {"servers": ["h:2"]}}},
         lambda c: list(c.environments) == ["a", "b-2_x"]),
        ({"environments": {"blue": DELETE, "x" * 32: {"servers": ["h:1"]}}},
         lambda c: "x" * 32 in c.environments),
    ],
)
def test_accepted_variants(patch, check):
    assert check(parse(patched(patch)))


ERRORS = [
    # top level
    ({"listn": "127.0.0.1:1"}, "listn: unknown key"),
    ({"listn": "127.0.0.1:1"}, "listn: unknown key (did you mean 'listen'?)"),
    ({"bogus": 1}, "bogus: unknown key"),
    ({"listen": "localhost"}, 'listen: expected "host:port", got "localhost"'),
    ({"listen": 8080}, 'listen: expected "host:port", got 8080'),
    ({"listen": "127.0.0.1:65536"}, "listen: port 65536 is out of range 0..65535"),
    ({"preview_listen": "x"}, "preview_listen: expected"),
    ({"preview_listen": "127.0.0.1:8080"}, "preview_listen: "),
    ({"preview_listen": "127.0.0.1:9901"}, "preview_listen: "),
    # admin
    ({"admin": "127.0.0.1:9901"}, "admin: expected a mapping"),
    ({"admin": {"tokn": "x"}}, "admin.tokn: unknown key"),
    ({"admin": {"listen": "nope"}}, "admin.listen: expected"),
    ({"admin": {"listen": "127.0.0.1:8080"}}, "admin.listen: "),
    ({"admin": {"listen": "0.0.0.0:8080", "token": "t", "auth": "token"}}, "admin.listen: "),
    ({"admin": {"auth": "basic"}}, "admin.auth: expected one of token, none"),
    ({"admin": {"auth": None}}, "admin.auth: expected one of token, none"),
    ({"admin": {"auth": False}}, "admin.auth: expected one of token, none"),
    ({"admin": {"auth": DELETE}}, "admin.token: required unless admin.listen is loopback and admin.auth is none"),
    ({"admin": None}, "admin.token: required unless admin.listen is loopback and admin.auth is none"),
    ({"admin": {"auth": "token"}}, "admin.token: required unless admin.listen is loopback and admin.auth is none"),
    ({"admin": {"auth": "token", "token": ""}}, "admin.token: required unless"),
    ({"admin": {"auth": "token", "token": None}}, "admin.token: required unless"),
    ({"admin": {"auth": DELETE, "listen": "0.0.0.0:9901"}}, "admin.token: required unless"),
    ({"admin": {"auth": "none", "listen": "0.0.0.0:9901"}}, "admin.auth: "),
    ({"admin": {"auth": "none", "listen": "10.1.2.3:9901", "token": "t"}}, "admin.auth: "),
    ({"admin": {"auth": "none", "listen": "[::]:9901"}}, "admin.auth: "),
    ({"admin": {"auth": "token", "token": 12345}}, "admin.token: expected a string, got 12345"),
    ({"admin": {"auth": "token", "token": "has space"}}, "admin.token: "),
    ({"admin": {"auth": "token", "token": "tab\there"}}, "admin.token: "),
    # environments
    ({"environments": DELETE}, "environments: required"),
    ({"environments": None}, "environments: required"),
    ({"environments": ["blue", "green"]}, "environments: expected a mapping"),
    ({"environments": {"green": DELETE}}, "environments: expected exactly two environments, got 1"),
    ({"environments": {"red": {"servers": ["127.0.0.1:1"]}}}, "environments: expected exactly two environments, got 3"),
    ({"environments": {"blue": DELETE, "Green2": {"servers": ["h:1"]}}}, "environments.Green2: "),
    ({"environments": {"blue": DELETE, "1blue": {"servers": ["h:1"]}}}, "environments.1blue: "),
    ({"environments": {"blue": DELETE, "x" * 33: {"servers": ["h:1"]}}}, f"environments.{'x' * 33}: "),
    ({"environments": {"blue": DELETE, "bl ue": {"servers": ["h:1"]}}}, "environments.bl ue: "),
    ({"environments": {"blue": None}}, "environments.blue.servers: required"),
    ({"environments": {"blue": {"servers": DELETE}}}, "environments.blue.servers: required"),
    ({"environments": {"blue": {"server": ["h:1"]}}}, "environments.blue.server: unknown key"),
    ({"environments": {"blue": {"weight": 1}}}, "environments.blue.weight: unknown key"),
    ({"environments": {"blue": ["127.0.0.1:1"]}}, "environments.blue: expected a mapping"),
    ({"environments": {"blue": {"servers": []}}}, "environments.blue.servers: must list at least one server"),
    ({"environments": {"blue": {"servers": None}}}, "environments.blue.servers: must list at least one server"),
    ({"environments": {"blue": {"servers": "127.0.0.1:1"}}}, "environments.blue.servers: expected a list"),
    ({"environments": {"green": {"servers": ["localhost"]}}},
     'environments.green.servers[0]: expected "host:port", got "localhost"'),
    ({"environments": {"green": {"servers": ["127.0.0.1:9101", "127.0.0.1:0"]}}},
     "environments.green.servers[1]: port 0 is out of range 1..65535"),
    ({"environments": {"green": {"servers": ["127.0.0.1:9101", "127.0.0.1:9101"]}}},
     'environments.green.servers[1]: "127.0.0.1:9101" is already listed as servers[0]'),
    ({"environments": {"green": {"servers": ["[::1]:80", "[0::1]:80"]}}},
     'environments.green.servers[1]: "[::1]:80" is already listed as servers[0]'),
    ({"environments": {"green": {"servers": ["127.0.0.1:9001"]}}},
     "environments.green.servers[0]: \"127.0.0.1:9001\" is also in environments.blue"),
    ({"environments": {"green": {"servers": ["127.0.0.1:9101", {"address": "127.0.0.1:9002"}]}}},
     "environments.green.servers[1]: "),
    ({"environments": {"green": {"servers": ["127.0.0.1:8080"]}}}, "environments.green.servers[0]: "),
    ({"listen": "0.0.0.0:9101"}, "environments.green.servers[0]: "),
    ({"environments": {"green": {"servers": [{"address": "127.0.0.1:1", "weight": 0}]}}},
     "environments.green.servers[0].weight: must be >= 1, got 0"),
    ({"environments": {"green": {"servers": [{"address": "127.0.0.1:1", "weight": True}]}}},
     "environments.green.servers[0].weight: expected an integer, got true"),
    ({"environments": {"green": {"servers": [{"address": "127.0.0.1:1", "weight": 1.5}]}}},
     "environments.green.servers[0].weight: expected an integer"),
    ({"environments": {"green": {"servers": [{"weight": 2}]}}}, "environments.green.servers[0].address: required"),
    ({"environments": {"green": {"servers": [{"address": "127.0.0.1:1", "wieght": 2}]}}},
     "environments.green.servers[0].wieght: unknown key"),
    ({"environments": {"green": {"servers": [{"address": "nope"}]}}},
     'environments.green.servers[0].address: expected "host:port", got "nope"'),
    ({"environments": {"green": {"servers": [42]}}}, 'environments.green.servers[0]: expected "host:port", got 42'),
    # live
    ({"live": "red"}, 'live: "red" is not one of the environments (blue, green)'),
    ({"live": ["blue"]}, "live: a list is not one of the environments"),
    ({"live": 1}, "live: 1 is not one of the environments"),
    # state_file
    ({"state_file": ""}, "state_file: must not be empty"),
    ({"state_file": 5}, "state_file: expected a string"),
    # health_check
    ({"health_check": []}, "health_check: expected a mapping"),
    ({"health_check": {"pth": "/"}}, "health_check.pth: unknown key"),
    ({"health_check": {"path": "healthz"}}, "health_check.path: "),
    ({"health_check": {"path": "/health z"}}, "health_check.path: "),
    ({"health_check": {"path": 5}}, "health_check.path: expected a string"),
    ({"health_check": {"interval": 0}}, "health_check.interval: must be greater than 0"),
    ({"health_check": {"interval": "0s"}}, "health_check.interval: must be greater than 0"),
    ({"health_check": {"interval": "-1s"}}, "health_check.interval: "),
    ({"health_check": {"interval": "fast"}}, "health_check.interval: expected a duration"),
    ({"health_check": {"timeout": 0}}, "health_check.timeout: must be greater than 0"),
    ({"health_check": {"timeout": True}}, "health_check.timeout: expected a duration"),
    ({"health_check": {"healthy_after": 0}}, "health_check.healthy_after: must be >= 1, got 0"),
    ({"health_check": {"healthy_after": "2"}}, "health_check.healthy_after: expected an integer"),
    ({"health_check": {"unhealthy_after": 0}}, "health_check.unhealthy_after: must be >= 1"),
    ({"health_check": {"unhealthy_after": True}}, "health_check.unhealthy_after: expected an integer, got true"),
    ({"health_check": {"unhealthy_after": 2.0}}, "health_check.unhealthy_after: expected an integer"),
    # drain_timeout
    ({"drain_timeout": -1}, "drain_timeout: must not be negative"),
    ({"drain_timeout": "soon"}, "drain_timeout: expected a duration"),
    ({"drain_timeout": None}, "drain_timeout: expected a duration"),
    ({"drain_timeout": False}, "drain_timeout: expected a duration"),
    # timeouts
    ({"timeouts": {"conect": "1s"}}, "timeouts.conect: unknown key (did you mean 'connect'?)"),
    ({"timeouts": {"connect": 0}}, "timeouts.connect: must be greater than 0"),
    ({"timeouts": {"connect": "2 s"}}, "timeouts.connect: expected a duration"),
    ({"timeouts": {"upstream_response": "0ms"}}, "timeouts.upstream_response: must be greater than 0"),
    ({"timeouts": {"client_header": -5}}, "timeouts.client_header: must not be negative"),
    ({"timeouts": {"keepalive_idle": []}}, "timeouts.keepalive_idle: expected a duration"),
    ({"timeouts": "30s"}, "timeouts: expected a mapping"),
    ({"timeouts": {"client_body": 0}}, "timeouts.client_body: must be greater than 0"),
    ({"timeouts": {"client_body": "soon"}}, "timeouts.client_body: expected a duration"),
    # limits
    ({"limits": {"max_header_bytes": 0}}, "limits.max_header_bytes: must be >= 1"),
    ({"limits": {"max_header_bytes": -1}}, "limits.max_header_bytes: must not be negative"),
    ({"limits": {"max_header_bytes": True}}, "limits.max_header_bytes: expected a byte count"),
    ({"limits": {"max_header_bytes": 1.5}}, "limits.max_header_bytes: expected a byte count"),
    ({"limits": {"max_body_bytes": -1}}, "limits.max_body_bytes: must not be negative"),
    ({"limits": {"max_body_bytes": "lots"}}, "limits.max_body_bytes: expected a byte count"),
    ({"limits": {"max_connections": 0}}, "limits.max_connections: must be >= 1"),
    ({"limits": {"max_connections": False}}, "limits.max_connections: expected an integer"),
    ({"limits": {"max_conections": 1}}, "limits.max_conections: unknown key"),
    ({"limits": {"max_response_header_bytes": 0}}, "limits.max_response_header_bytes: must be >= 1"),
    ({"limits": {"max_response_header_bytes": "huge"}}, "limits.max_response_header_bytes: expected a byte count"),
    # hold
    ({"hold": {"max_wait": 0}}, "hold.max_wait: must be greater than 0"),
    ({"hold": {"max_wait": "forever"}}, "hold.max_wait: expected a duration"),
    ({"hold": {"max_queued": -1}}, "hold.max_queued: must be >= 0, got -1"),
    ({"hold": {"max_queued": True}}, "hold.max_queued: expected an integer"),
    ({"hold": {"timeout": 1}}, "hold.timeout: unknown key"),
    # forwarded_headers
    ({"forwarded_headers": "drop"}, 'forwarded_headers: expected one of append, replace, got "drop"'),
    ({"forwarded_headers": True}, "forwarded_headers: expected one of append, replace, got true"),
    # canary
    ({"canary": "X-Canary"}, "canary: expected a mapping"),
    ({"canary": {"cookie": "c"}}, "canary.cookie: unknown key"),
    ({"canary": {"header": "X Canary"}}, "canary.header: expected an HTTP header name"),
    ({"canary": {"header": ""}}, "canary.header: expected an HTTP header name"),
    ({"canary": {"header": 5}}, "canary.header: expected an HTTP header name"),
    # gates
    ({"gates": []}, "gates: expected a mapping"),
    ({"gates": {"smok": []}}, "gates.smok: unknown key"),
    ({"gates": {"smoke": {"path": "/"}}}, "gates.smoke: expected a list"),
    ({"gates": {"smoke": ["/"]}}, "gates.smoke[0]: expected a mapping"),
    ({"gates": {"smoke": [{"path": "/"}, {"expect_status": 200}]}}, "gates.smoke[1].path: required"),
    ({"gates": {"smoke": [{"path": "/"}, {"path": "x"}]}}, "gates.smoke[1].path: "),
    ({"gates": {"smoke": [{"path": "/"}, {"path": "/", "expect_status": 999}]}},
     "gates.smoke[1].expect_status: must be between 100 and 599, got 999"),
    ({"gates": {"smoke": [{"path": "/"}, {"path": "/", "expect_status": "200"}]}},
     "gates.smoke[1].expect_status: expected an integer"),
    ({"gates": {"smoke": [{"path": "/", "expect_status": True}]}}, "gates.smoke[0].expect_status: expected an integer"),
    ({"gates": {"smoke": [{"path": "/", "expect_body_contains": 5}]}},
     "gates.smoke[0].expect_body_contains: expected a string"),
    ({"gates": {"smoke": [{"path": "/", "method": "get"}]}}, "gates.smoke[0].method: expected an HTTP method"),
    ({"gates": {"smoke": [{"path": "/", "method": "G T"}]}}, "gates.smoke[0].method: "),
    ({"gates": {"smoke": [{"path": "/", "expect": 200}]}}, "gates.smoke[0].expect: unknown key"),
    ({"gates": {"drift": "/fp"}}, "gates.drift: expected a mapping"),
    ({"gates": {"drift": {"path": "fp"}}}, "gates.drift.path: "),
    ({"gates": {"drift": {"ignore": "version"}}}, "gates.drift.ignore: expected a list"),
    ({"gates": {"drift": {"ignore": ["version", 3]}}}, "gates.drift.ignore[1]: expected a non-empty string"),
    ({"gates": {"drift": {"ignore": [""]}}}, "gates.drift.ignore[0]: expected a non-empty string"),
    ({"gates": {"drift": {"allow": []}}}, "gates.drift.allow: unknown key"),
    ({"gates": {"schema": {"command": ["a", "b"]}}}, "gates.schema.command: expected a string"),
    ({"gates": {"schema": {"cmd": "x"}}}, "gates.schema.cmd: unknown key"),
    ({"gates": {"schema": "x"}}, "gates.schema: expected a mapping"),
    ({"gates": {"warmup": {}}}, "gates.warmup.paths: must list at least one path"),
    ({"gates": {"warmup": {"paths": []}}}, "gates.warmup.paths: must list at least one path"),
    ({"gates": {"warmup": {"paths": ["/", "api"]}}}, "gates.warmup.paths[1]: "),
    ({"gates": {"warmup": {"paths": ["/"], "requests": 0}}}, "gates.warmup.requests: must be >= 1"),
    ({"gates": {"warmup": {"paths": ["/"], "rps": 5}}}, "gates.warmup.rps: unknown key"),
]


@pytest.mark.parametrize(("patch", "expected"), ERRORS, ids=[e[1][:60] for e in ERRORS])
def test_invalid_config_names_the_key_path(patch, expected):
    with pytest.raises(ConfigError) as err:
        parse(patched(patch))
    assert expected in str(err.value)
    key = expected.split(": ")[0]
    assert str(err.value).startswith(key + ":")


@pytest.mark.parametrize(
    ("data", "expected"),
    [(None, "empty"), ([], "mapping"), ("listen: x", "mapping"), (5, "mapping"),
     ({"admin": {"auth": "none"}}, "environments: required"), ({}, "admin.token: required"), ({1: "x"}, "keys must be strings")],
)
def test_config_that_is_not_a_mapping_is_rejected(data, expected):
    with pytest.raises(ConfigError, match=expected):
        parse(data)


def test_non_string_environment_name_is_rejected():
    data = patched({"environments": {"blue": DELETE}})
    data["environments"][7] = {"servers": ["h:1"]}
    with pytest.raises(ConfigError, match=r"^environments\.7: "):
        parse(data)


# --------------------------------------------------------------------------- state_file


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (DELETE, "/srv/cutover/var/cutover-state.json"),
        ("state.json", "/srv/cutover/state.json"),
        ("./run/../state/s.json", "/srv/cutover/state/s.json"),
        ("/abs/s.json", "/abs/s.json"),
        ("~/s.json", "/home/op/s.json"),
    ],
)
def test_state_file_is_made_absolute_against_base_dir(value, expected):
    cfg = parse_config(patched({"state_file": value}), Path("/srv/cutover"), {"HOME": "/home/op"})
    assert cfg.state_file == Path(expected)
    assert cfg.state_file.is_absolute()


def test_parse_config_touches_no_files(tmp_path):
    parse_config(minimal(), tmp_path, {})
    assert list(tmp_path.iterdir()) == []


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


LOCAL_YAML = """\
admin: {auth: none}
environments:
  blue: {servers: ["127.0.0.1:9001"]}
  green: {servers: ["127.0.0.1:9101"]}
"""


def test_load_config_resolves_relative_state_file_and_creates_its_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conf = write(tmp_path / "etc" / "c.yaml", LOCAL_YAML + "state_file: run/deep/state.json\n")
    cfg = load_config("etc/c.yaml", {})
    assert cfg.state_file == tmp_path / "etc" / "run" / "deep" / "state.json"
    assert cfg.state_file.parent.is_dir()
    assert not cfg.state_file.exists()
    assert cfg.source == conf
    assert cfg.source.is_absolute()


def test_load_config_default_state_file_sits_next_to_the_config(tmp_path):
    cfg = load_config(write(tmp_path / "c.yaml", LOCAL_YAML), {})
    assert cfg.state_file == tmp_path / "var" / "cutover-state.json"
    assert (tmp_path / "var").is_dir()


def test_load_config_rejects_a_state_file_that_is_a_folder(tmp_path):
    (tmp_path / "state").mkdir()
    with pytest.raises(ConfigError, match="state_file: "):
        load_config(write(tmp_path / "c.yaml", LOCAL_YAML + "state_file: state\n"), {})


def test_load_config_reports_an_uncreatable_state_folder(tmp_path):
    write(tmp_path / "file", "x")
    with pytest.raises(ConfigError, match="state_file: cannot create the folder"):
        load_config(write(tmp_path / "c.yaml", LOCAL_YAML + "state_file: file/sub/s.json\n"), {})


def test_load_config_expands_environment_variables(tmp_path):
    text = LOCAL_YAML.replace("admin: {auth: none}", 'admin: {token: "${TOK}", listen: "${ADMIN:-0.0.0.0:9901}"}')
    text += "drain_timeout: ${DRAIN}\nhold: {max_queued: ${Q:-7}}\n"
    cfg = load_config(write(tmp_path / "c.yaml", text), {"TOK": "abc", "DRAIN": "5s"})
    assert cfg.admin == AdminConfig(Address("0.0.0.0", 9901), "abc", "token")
    assert cfg.drain_timeout == 5.0
    assert cfg.hold.max_queued == 7


def test_load_config_defaults_to_os_environ(tmp_path, monkeypatch):
    monkeypatch.setenv("CUTOVER_TEST_TOKEN", "from-env")
    text = LOCAL_YAML.replace("admin: {auth: none}", 'admin: {token: "${CUTOVER_TEST_TOKEN}"}')
    assert load_config(write(tmp_path / "c.yaml", text)).admin.token == "from-env"


def test_load_config_unset_variable_names_file_line_and_variable(tmp_path):
    conf = write(tmp_path / "c.yaml", LOCAL_YAML + "drain_timeout: ${NOPE_DRAIN}\n")
    with pytest.raises(ConfigError) as err:
        load_config(conf, {})
    assert str(err.value).startswith(f"{conf}:5: ")
    assert "NOPE_DRAIN" in str(err.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("# only a comment\n", "empty"),
        ("- a\n- b\n", "mapping"),
        ("just text\n", "mapping"),
        ("admin: {auth: none\n", r":2: YAML error: .*flow mapping started on line 1"),
        (LOCAL_YAML + "listen: [\n", r":6: YAML error: expected the node content"),
        (LOCAL_YAML + "listen: [a, b\nlive: blue\n", r":6: YAML error: .*flow sequence started on line 5"),
        ("admin:\n  auth: none\n listen: x\n", r":3: YAML error: "),
        ("a: 1\n b: 2\n", r":2: YAML error: "),
        ("\tfoo: 1\n", r":1: YAML error: "),
        (LOCAL_YAML + "admin: {auth: none}\n", r":5: YAML error: found duplicate key 'admin'"),
        (LOCAL_YAML + "---\nx: 1\n", r"YAML error: "),
        (LOCAL_YAML + "timeouts: {connect: 0}\n", r"c\.yaml: timeouts\.connect: must be greater than 0"),
    ],
)
def test_load_config_file_errors_name_the_file(tmp_path, text, expected):
    conf = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config(conf, {})
    assert str(err.value).startswith(str(conf))
    assert re.search(expected, str(err.value))


def test_load_config_yaml_merge_keys_are_not_duplicates(tmp_path):
    text = LOCAL_YAML + "health_check: {<<: {interval: 2s, timeout: 5s}, interval: 3s}\n"
    cfg = load_config(write(tmp_path / "c.yaml", text), {})
    assert (cfg.health_check.interval, cfg.health_check.timeout) == (3.0, 5.0)


def test_config_error_survives_pickling():
    import pickle

    err = ConfigError("bad", key="timeouts.connect", source="c.yaml", line=3)
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) == "c.yaml:3: timeouts.connect: bad"


def test_load_config_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(missing, {})
    assert str(err.value).startswith(f"{missing}: cannot read config")


def test_load_config_non_utf8_file(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_bytes(b"listen: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(conf, {})


# --------------------------------------------------------------------------- reference configs


def copy_reference(tmp_path: Path, source: Path) -> Path:
    """copy_reference: the config copied into tmp_path so its state folder lands there."""
    return Path(shutil.copy(source, tmp_path / source.name))


def test_reference_config_loads_with_token(tmp_path):
    cfg = load_config(copy_reference(tmp_path, REFERENCE), {"CUTOVER_TOKEN": "t0ken"})
    assert cfg.listen == Address("127.0.0.1", 8080)
    assert cfg.admin == AdminConfig(Address("127.0.0.1", 9901), "t0ken", "token")
    assert list(cfg.environments) == ["blue", "green"]
    assert cfg.environments["blue"].servers == (Address("127.0.0.1", 9001), Address("127.0.0.1", 9002))
    assert cfg.environments["green"].servers == (Address("127.0.0.1", 9101),)
    assert cfg.live == "blue"
    assert cfg.state_file == tmp_path / "var" / "cutover-state.json"
    assert cfg.health_check == HealthCheckConfig()
    assert cfg.drain_timeout == 30.0
    assert (cfg.timeouts, cfg.limits, cfg.hold) == (TimeoutsConfig(), LimitsConfig(), HoldConfig())
    assert cfg.forwarded_headers == "append"
    assert cfg.gates == GatesConfig()


def test_reference_config_needs_the_token(tmp_path):
    with pytest.raises(ConfigError, match="CUTOVER_TOKEN"):
        load_config(copy_reference(tmp_path, REFERENCE), {})
    with pytest.raises(ConfigError, match="admin.token: required"):
        load_config(copy_reference(tmp_path, REFERENCE), {"CUTOVER_TOKEN": ""})


def uncomment(text: str, key: str) -> str:
    """uncomment: text with the commented-out top-level block `# key:` made live."""
    lines = text.splitlines()
    start = lines.index(f"# {key}:") if f"# {key}:" in lines else next(
        i for i, line in enumerate(lines) if line.startswith(f"# {key}:")
    )
    end = start + 1
    while end < len(lines) and lines[end].startswith("#  "):
        end += 1
    lines[start:end] = [line[2:] for line in lines[start:end]]
    return "\n".join(lines) + "\n"


def test_reference_config_commented_blocks_are_valid(tmp_path):
    text = REFERENCE.read_text()
    for key in ("gates", "canary", "preview_listen"):
        text = uncomment(text, key)
    cfg = load_config(write(tmp_path / "c.yaml", text), {"CUTOVER_TOKEN": "t"})
    assert cfg.gates.smoke[0] == SmokeProbe("/", 200, "ok", "GET")
    assert cfg.gates.drift == DriftGate("/__fingerprint", ("version", "build"))
    assert cfg.gates.schema == SchemaGate("./scripts/check-compat.sh")
    assert cfg.gates.warmup is not None
    assert cfg.canary_header is not None
    assert cfg.preview_listen is not None


def test_reference_config_documents_every_key():
    text = REFERENCE.read_text()
    keys = ["listen", "preview_listen", "admin", "token", "auth", "environments", "servers", "weight",
            "live", "state_file", "health_check", "path", "interval", "timeout", "healthy_after",
            "unhealthy_after", "drain_timeout", "timeouts", "connect", "upstream_response",
            "client_header", "keepalive_idle", "limits", "max_header_bytes", "max_body_bytes",
            "max_connections", "max_response_header_bytes", "client_body",
            "hold", "max_wait", "max_queued", "forwarded_headers", "canary",
            "header", "gates", "smoke", "expect_status", "expect_body_contains", "method", "drift",
            "ignore", "schema", "command", "warmup", "paths", "requests"]
    for key in keys:
        assert re.search(rf"\b{key}:", text), key


def test_local_config_loads_without_environment(tmp_path):
    cfg = load_config(copy_reference(tmp_path, LOCAL), {})
    assert cfg.admin.auth == "none"
    assert cfg.admin.token is None
    assert cfg.admin.listen.is_loopback
    assert cfg.listen.is_loopback
    assert len(cfg.environments) == 2


# --------------------------------------------------------------------------- effective_config


def test_effective_config_redacts_token_and_is_json(tmp_path):
    cfg = load_config(copy_reference(tmp_path, REFERENCE), {"CUTOVER_TOKEN": "super-secret"})
    effective = effective_config(cfg)
    text = json.dumps(effective)
    assert "super-secret" not in text
    assert effective["admin"]["token"] == "***"
    assert json.loads(text) == effective
    assert effective["listen"] == "127.0.0.1:8080"
    assert effective["timeouts"]["connect"] == 2.0
    assert effective["drain_timeout"] == 30.0
    assert effective["state_file"] == str(tmp_path / "var" / "cutover-state.json")
    assert effective["environments"]["blue"]["servers"][0] == {"address": "127.0.0.1:9001", "weight": 1}


def test_effective_config_without_token_shows_null():
    effective = effective_config(parse(minimal()))
    assert effective["admin"] == {"listen": "127.0.0.1:9901", "token": None, "read_token": None, "auth": "none"}
    json.dumps(effective)


def test_effective_config_fills_in_every_default():
    effective = effective_config(parse(minimal()))
    assert effective["health_check"] == {"path": "/healthz", "interval": 1.0, "timeout": 1.0,
                                         "healthy_after": 2, "unhealthy_after": 2}
    assert effective["limits"] == {"max_header_bytes": 65536, "max_body_bytes": None, "max_connections": 10000,
                                   "max_response_header_bytes": 65536}
    assert effective["hold"] == {"max_wait": 30.0, "max_queued": 10000}
    assert effective["timeouts"] == {"connect": 2.0, "upstream_response": 30.0, "client_header": 10.0,
                                     "keepalive_idle": 60.0, "client_body": 30.0}
    assert effective["forwarded_headers"] == "append"
    assert effective["live"] == "blue"
    assert effective["gates"] == {"smoke": [], "drift": None, "schema": None, "warmup": None}
    assert effective["canary"] is None
    assert effective["preview_listen"] is None


def test_effective_config_is_itself_a_valid_config():
    data = patched({
        "listen": "[::1]:0",
        "preview_listen": "127.0.0.1:0",
        "admin": {"token": "tok", "auth": "token"},
        "environments": {"green": {"servers": [{"address": "10.0.0.1:80", "weight": 4}]}},
        "limits": {"max_body_bytes": "1m"},
        "canary": {"header": "X-Canary"},
        "gates": {"smoke": [{"path": "/", "expect_body_contains": "ok", "method": "HEAD"}],
                  "drift": {"ignore": ["v"]}, "schema": {}, "warmup": {"paths": ["/w"]}},
    })
    cfg = parse(data)
    again = parse(json.loads(json.dumps(effective_config(cfg))))
    assert again == Config(**{**cfg.__dict__, "admin": AdminConfig(cfg.admin.listen, "***", "token")})
