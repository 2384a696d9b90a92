"""Table tests for the `store.etcd` and `fleet` config (admin/config.py, SPEC §9.2).

Every mistake is a ConfigError naming its key path; the effective config hides the etcd
password; the reference config documents every key, and its commented `store` block loads.
"""

from __future__ import annotations

import copy
import json
import re
import socket
from pathlib import Path

import pytest

from tests.support.paths import ROOT
from admin.config import (
    ConfigError, EtcdConfig, EtcdTlsConfig, FleetConfig, StoreConfig, effective_config, load_config, parse_config,
)

REFERENCE = ROOT / "config" / "cutover.yaml"


def minimal(**top) -> dict:
    return {"listen": "127.0.0.1:8080", "admin": {"auth": "none"},
            "environments": {"blue": {"servers": ["127.0.0.1:9001"]}, "green": {"servers": ["127.0.0.1:9101"]}},
            **top}


def with_etcd(**etcd) -> dict:
    body = {"endpoints": ["http://127.0.0.1:2379"], "prefix": "/cutover/shop"}
    body.update(etcd)
    return minimal(store={"etcd": {k: v for k, v in body.items() if v is not DROP}})


DROP = object()


def parse(data: dict, base: Path = Path("/tmp"), environ: dict | None = None):
    return parse_config(copy.deepcopy(data), base, environ or {})


def test_a_store_section_with_defaults_gives_its_etcd_config():
    cfg = parse(with_etcd(endpoints=["http://127.0.0.1:2379/", "https://etcd-2.example:2379"]))
    assert cfg.store == StoreConfig(etcd=EtcdConfig(
        endpoints=("http://127.0.0.1:2379", "https://etcd-2.example:2379"), prefix="/cutover/shop",
        username=None, password=None, tls=None, lease_ttl=5, request_timeout=2.0))


def test_without_a_store_section_there_is_no_store():
    assert parse(minimal()).store is None
    assert parse(minimal(store=None)).store is None


def test_every_key_given_is_kept():
    cfg = parse(with_etcd(endpoints=["http://[::1]:2379"], prefix="/a/b-c_d.e", username="cutover",
                          password="s3cret", lease_ttl="10s", request_timeout="500ms"))
    etcd = cfg.store.etcd
    assert (etcd.endpoints, etcd.prefix, etcd.username, etcd.password, etcd.lease_ttl, etcd.request_timeout) == (
        ("http://[::1]:2379",), "/a/b-c_d.e", "cutover", "s3cret", 10, 0.5)


@pytest.mark.parametrize("data, key, message", [
    (minimal(store="etcd"), "store", "expected a mapping"),
    (minimal(store={}), "store.etcd", "required"),
    (minimal(store={"etcd": None}), "store.etcd", "required"),
    (minimal(store={"etcd": {"endpoints": ["http://h:1"], "prefix": "/p"}, "consul": {}}), "store.consul",
     "unknown key"),
    (with_etcd(lease_tll="5s"), "store.etcd.lease_tll", "did you mean 'lease_ttl'?"),
    (with_etcd(endpoints=DROP), "store.etcd.endpoints", "required"),
    (with_etcd(endpoints=[]), "store.etcd.endpoints", "at least one"),
    (with_etcd(endpoints="http://127.0.0.1:2379"), "store.etcd.endpoints", "expected a list"),
    (with_etcd(endpoints=["127.0.0.1:2379"]), "store.etcd.endpoints[0]", "etcd client URL"),
    (with_etcd(endpoints=["http://h:1", "ftp://h:2"]), "store.etcd.endpoints[1]", "etcd client URL"),
    (with_etcd(endpoints=["http://h"]), "store.etcd.endpoints[0]", '"http://host:port"'),
    (with_etcd(endpoints=["http://h:1/v3"]), "store.etcd.endpoints[0]", "etcd client URL"),
    (with_etcd(endpoints=["http://h:1?x=1"]), "store.etcd.endpoints[0]", "etcd client URL"),
    (with_etcd(endpoints=["http://h:99999"]), "store.etcd.endpoints[0]", "etcd client URL"),
    (with_etcd(endpoints=["http://h:0"]), "store.etcd.endpoints[0]", "etcd client URL"),
    (with_etcd(endpoints=["http://root:pw@h:1"]), "store.etcd.endpoints[0]", "etcd client URL"),
    (with_etcd(endpoints=[2379]), "store.etcd.endpoints[0]", "got 2379"),
    (with_etcd(endpoints=["http://h:1", "http://h:1/"]), "store.etcd.endpoints[1]",
     "already listed as endpoints[0]"),
    (with_etcd(prefix=DROP), "store.etcd.prefix", "required"),
    (with_etcd(prefix="cutover/shop"), "store.etcd.prefix", 'starting with "/"'),
    (with_etcd(prefix="/cutover/shop/"), "store.etcd.prefix", 'no trailing "/"'),
    (with_etcd(prefix="/"), "store.etcd.prefix", "key prefix"),
    (with_etcd(prefix="/a//b"), "store.etcd.prefix", "no empty segment"),
    (with_etcd(prefix="/a b"), "store.etcd.prefix", "without spaces"),
    (with_etcd(prefix=5), "store.etcd.prefix", "expected a string"),
    (with_etcd(username="cutover"), "store.etcd.password", "required with store.etcd.username"),
    (with_etcd(username="cutover", password=""), "store.etcd.password", "required with store.etcd.username"),
    (with_etcd(password="s3cret"), "store.etcd.username", "required with store.etcd.password"),
    (with_etcd(username=7, password="x"), "store.etcd.username", "expected a string"),
    (with_etcd(tls="on"), "store.etcd.tls", "expected a mapping"),
    (with_etcd(tls={"ca_file": "x"}), "store.etcd.tls.ca_file", "unknown key"),
    (with_etcd(endpoints=["https://h:1"], tls={"ca": "/no/such/ca.pem"}), "store.etcd.tls.ca",
     "/no/such/ca.pem does not exist"),
    (with_etcd(endpoints=["https://h:1"], tls={"ca": "/tmp"}), "store.etcd.tls.ca", "is not a file"),
    (with_etcd(endpoints=["https://h:1"], tls={"ca": ""}), "store.etcd.tls.ca", "must not be empty"),
    (with_etcd(lease_ttl=0), "store.etcd.lease_ttl", "whole number of seconds from 1s"),
    (with_etcd(lease_ttl="500ms"), "store.etcd.lease_ttl", "whole number of seconds"),
    (with_etcd(lease_ttl="1.5s"), "store.etcd.lease_ttl", "whole number of seconds"),
    (with_etcd(lease_ttl="10000000000s"), "store.etcd.lease_ttl", "whole number of seconds"),
    (with_etcd(lease_ttl="soon"), "store.etcd.lease_ttl", "expected a duration"),
    (with_etcd(request_timeout=0), "store.etcd.request_timeout", "greater than 0"),
    (with_etcd(request_timeout="61s"), "store.etcd.request_timeout", "at most 60s"),
    (with_etcd(request_timeout=True), "store.etcd.request_timeout", "expected a duration"),
    (minimal(fleet={"replica_id": ""}), "fleet.replica_id", "printable ASCII"),
    (minimal(fleet={"replica_id": "web/1"}), "fleet.replica_id", 'without spaces or "/"'),
    (minimal(fleet={"replica_id": "web 1"}), "fleet.replica_id", "without spaces"),
    (minimal(fleet={"replica_id": "ü"}), "fleet.replica_id", "printable ASCII"),
    (minimal(fleet={"replica_id": "x" * 129}), "fleet.replica_id", "1 to 128"),
    (minimal(fleet={"replica_id": 7}), "fleet.replica_id", "got 7"),
    (minimal(fleet={"replica": "a"}), "fleet.replica", "did you mean 'replica_id'?"),
])
def test_each_mistake_is_an_error_naming_its_key(data, key, message):
    with pytest.raises(ConfigError) as raised:
        parse(data)
    assert raised.value.key == key, str(raised.value)
    assert message in raised.value.message, str(raised.value)


def test_tls_files_are_found_relative_to_the_config_folder_and_from_home(tmp_path):
    (tmp_path / "etcd").mkdir()
    for name in ("ca.pem", "client.pem", "client-key.pem"):
        (tmp_path / "etcd" / name).write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = parse(with_etcd(endpoints=["https://etcd:2379"],
                          tls={"ca": "etcd/ca.pem", "cert": "~/etcd/client.pem",
                               "key": str(tmp_path / "etcd/client-key.pem")}),
                tmp_path, {"HOME": str(tmp_path)})
    assert cfg.store.etcd.tls == EtcdTlsConfig(ca=tmp_path / "etcd/ca.pem", cert=tmp_path / "etcd/client.pem",
                                               key=tmp_path / "etcd/client-key.pem")


@pytest.mark.parametrize("tls, key, message", [
    ({"cert": "client.pem"}, "store.etcd.tls.key", "required with store.etcd.tls.cert"),
    ({"key": "client.pem"}, "store.etcd.tls.cert", "required with store.etcd.tls.key"),
])
def test_a_client_certificate_needs_its_key_and_the_key_its_certificate(tmp_path, tls, key, message):
    (tmp_path / "client.pem").write_text("pem\n")
    with pytest.raises(ConfigError) as raised:
        parse(with_etcd(endpoints=["https://etcd:2379"], tls=tls), tmp_path)
    assert (raised.value.key, raised.value.message) == (key, message)


def test_tls_without_an_https_endpoint_is_an_error(tmp_path):
    (tmp_path / "ca.pem").write_text("pem\n")
    with pytest.raises(ConfigError) as raised:
        parse(with_etcd(tls={"ca": "ca.pem"}), tmp_path)
    assert raised.value.key == "store.etcd.tls" and "no endpoint" in raised.value.message
    assert parse(with_etcd(tls={}), tmp_path).store.etcd.tls is None          # empty: as if absent


def test_empty_credentials_from_unset_variables_count_as_unset(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("admin: {auth: none}\n"
                      "environments: {blue: {servers: ['127.0.0.1:9001']}, green: {servers: ['127.0.0.1:9101']}}\n"
                      "store:\n  etcd:\n    endpoints: ['http://127.0.0.1:2379']\n    prefix: /shop\n"
                      "    username: ${ETCD_USER:-}\n    password: ${ETCD_PASSWORD:-}\n")
    etcd = load_config(config, {}).store.etcd
    assert (etcd.username, etcd.password) == (None, None)
    etcd = load_config(config, {"ETCD_USER": "cutover", "ETCD_PASSWORD": "s3cret"}).store.etcd
    assert (etcd.username, etcd.password) == ("cutover", "s3cret")


def test_the_replica_id_defaults_to_the_host_name_and_the_listen_port():
    assert parse(minimal()).fleet == FleetConfig(ack_timeout=10.0, replica_id=f"{socket.gethostname()}:8080")
    assert parse(minimal(listen="127.0.0.1:18080")).fleet.replica_id == f"{socket.gethostname()}:18080"
    assert parse(minimal(fleet={"replica_id": "web-1", "ack_timeout": "3s"})).fleet == FleetConfig(3.0, "web-1")


def test_the_effective_config_hides_the_password_and_is_itself_a_valid_config():
    cfg = parse(with_etcd(username="cutover", password="s3cret", lease_ttl="7s"))
    effective = effective_config(cfg)
    assert effective["store"] == {"etcd": {
        "endpoints": ["http://127.0.0.1:2379"], "prefix": "/cutover/shop", "username": "cutover",
        "password": "***", "tls": None, "lease_ttl": 7, "request_timeout": 2.0}}
    assert effective["fleet"] == {"ack_timeout": 10.0, "replica_id": f"{socket.gethostname()}:8080"}
    text = json.dumps(effective)
    assert "s3cret" not in text and "s3cret" not in repr(cfg)
    again = parse(json.loads(text))
    assert again.store.etcd == EtcdConfig(("http://127.0.0.1:2379",), "/cutover/shop", "cutover", "***",
                                          None, 7, 2.0)
    assert again.fleet == cfg.fleet
    assert effective_config(parse(minimal()))["store"] is None


def test_the_effective_config_shows_tls_files_as_absolute_paths(tmp_path):
    (tmp_path / "ca.pem").write_text("pem\n")
    effective = effective_config(parse(with_etcd(endpoints=["https://e:2379"], tls={"ca": "ca.pem"}), tmp_path))
    assert effective["store"]["etcd"]["tls"] == {"ca": str(tmp_path / "ca.pem"), "cert": None, "key": None}


def uncommented(text: str, key: str) -> str:
    """uncommented: ``text`` with its commented-out top-level block ``# key:`` made live."""
    lines = text.splitlines()
    start = lines.index(f"# {key}:")
    end = start + 1
    while end < len(lines) and lines[end].startswith("#  "):
        end += 1
    lines[start:end] = [line[2:] for line in lines[start:end]]
    return "\n".join(lines) + "\n"


def test_the_reference_config_documents_every_store_and_fleet_key():
    text = REFERENCE.read_text()
    for key in ("store", "etcd", "endpoints", "prefix", "username", "password", "tls", "ca", "cert", "key",
                "lease_ttl", "request_timeout", "fleet", "ack_timeout", "replica_id"):
        assert re.search(rf"\b{key}:", text), key


def test_the_reference_configs_store_block_loads_with_its_defaults(tmp_path):
    config = tmp_path / "cutover.yaml"
    config.write_text(uncommented(REFERENCE.read_text(), "store"))
    cfg = load_config(config, {"CUTOVER_TOKEN": "t0ken"})
    assert cfg.store == StoreConfig(etcd=EtcdConfig(endpoints=("http://127.0.0.1:2379",), prefix="/cutover/shop"))
