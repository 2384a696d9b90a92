"""The config's TLS sections (admin/tlsconfig.py): both forms, paths relative to the config's
folder, every file checked at load time, every error naming its key path (SPEC §12)."""

from __future__ import annotations

import shutil

import pytest

from admin.config import ConfigError, effective_config, parse_config
from proxy import CertificateFiles, ListenerTLS, UpstreamTLS


def base(**extra) -> dict:
    data = {"listen": "127.0.0.1:0", "admin": {"listen": "127.0.0.1:0", "auth": "none"},
            "environments": {"blue": {"servers": ["127.0.0.1:19001"]}, "green": {"servers": ["127.0.0.1:19002"]}}}
    data.update(extra)
    return data


def error_of(data: dict, folder) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, folder, {})
    return caught.value


def test_one_pair_relative_to_the_config_folder_reaches_the_settings(tls_files, tmp_path):
    shutil.copy(tls_files.shop.cert, tmp_path / "shop.pem")
    shutil.copy(tls_files.shop.key, tmp_path / "shop.key")
    cfg = parse_config(base(tls={"cert": "shop.pem", "key": "shop.key"}), tmp_path, {})
    expected = ListenerTLS(certificates=(CertificateFiles(str(tmp_path / "shop.pem"), str(tmp_path / "shop.key")),))
    assert cfg.tls == expected
    assert cfg.settings().tls == expected


def test_certificates_list_keeps_its_order_and_min_version(tls_files, tmp_path):
    cfg = parse_config(base(tls={"certificates": [tls_files.shop.config(), tls_files.api.config()],
                                 "min_version": "1.3"}), tmp_path, {})
    assert [c.cert for c in cfg.tls.certificates] == [str(tls_files.shop.cert), str(tls_files.api.cert)]
    assert cfg.tls.min_version == "1.3"


def test_without_tls_nothing_changes(tmp_path):
    cfg = parse_config(base(), tmp_path, {})
    assert cfg.tls is None and cfg.admin.tls is None and cfg.settings().tls is None
    assert all(env.tls is None for env in cfg.environments.values())
    effective = effective_config(cfg)
    assert "tls" not in effective and "tls" not in effective["admin"]


def test_effective_config_with_tls_is_itself_a_valid_config(tls_files, tmp_path):
    cfg = parse_config(base(tls=tls_files.shop.config(), admin={"listen": "127.0.0.1:0", "auth": "none",
                                                                 "tls": tls_files.localhost.config()},
                            environments={"blue": {"servers": ["127.0.0.1:19001"],
                                                   "tls": {"ca": str(tls_files.authority.cert)}},
                                          "green": {"servers": ["127.0.0.1:19002"], "tls": {"verify": False}}}),
                       tmp_path, {})
    effective = effective_config(cfg)
    assert effective["tls"] == {"certificates": [tls_files.shop.config()], "min_version": "1.2"}
    assert effective["environments"]["green"]["tls"] == {"ca": None, "verify": False, "server_name": None}
    again = parse_config(effective, tmp_path, {})
    assert (again.tls, again.admin.tls, again.environments) == (cfg.tls, cfg.admin.tls, cfg.environments)


@pytest.mark.parametrize("tls, key", [
    ({"cert": "missing.pem", "key": "missing.key"}, "tls.cert"),
    ({"certificates": [{"cert": "SHOP", "key": "SHOPKEY"}, {"cert": "SHOP", "key": "gone.key"}]},
     "tls.certificates[1].key"),
])
def test_a_missing_file_names_its_key(tls_files, tmp_path, tls, key):
    def fill(entry):
        return {k: {"SHOP": str(tls_files.shop.cert), "SHOPKEY": str(tls_files.shop.key)}.get(v, v)
                for k, v in entry.items()}
    if "certificates" in tls:
        tls = {"certificates": [fill(e) for e in tls["certificates"]]}
    err = error_of(base(tls=tls), tmp_path)
    assert err.key == key
    assert "does not exist" in err.message and str(tmp_path) in err.message


@pytest.mark.parametrize("given, missing", [("cert", "key"), ("key", "cert")])
def test_one_half_of_a_pair_names_the_other(tls_files, tmp_path, given, missing):
    err = error_of(base(tls={given: str(getattr(tls_files.shop, given))}), tmp_path)
    assert (err.key, err.message) == (f"tls.{missing}", f"required with tls.{given}")


def test_a_key_of_another_certificate_names_the_entry(tls_files, tmp_path):
    entries = [tls_files.shop.config(), {"cert": str(tls_files.api.cert), "key": str(tls_files.shop.key)}]
    err = error_of(base(tls={"certificates": entries}), tmp_path)
    assert err.key == "tls.certificates[1]"
    assert "is not the key of the certificate" in err.message


def test_files_that_are_not_pem_name_their_key(tls_files, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    err = error_of(base(tls={"cert": str(junk), "key": str(tls_files.shop.key)}), tmp_path)
    assert err.key == "tls.cert" and "not a valid PEM certificate" in err.message
    err = error_of(base(tls={"cert": str(tls_files.shop.cert), "key": str(tls_files.shop.cert)}), tmp_path)
    assert err.key == "tls.key" and "no PEM private key" in err.message
    broken = tmp_path / "broken.key"
    broken.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    err = error_of(base(tls={"cert": str(tls_files.shop.cert), "key": str(broken)}), tmp_path)
    assert err.key == "tls.key" and "not a valid private key" in err.message


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(tls_files, tmp_path):
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n")
    err = error_of(base(tls={"cert": str(tls_files.shop.cert), "key": str(encrypted)}), tmp_path)
    assert err.key == "tls.key" and "encrypted" in err.message


def test_section_shape_errors(tls_files, tmp_path):
    assert error_of(base(tls={}), tmp_path).key == "tls.cert"
    assert error_of(base(tls={"certificates": []}), tmp_path).key == "tls.certificates"
    both = {"certificates": [tls_files.shop.config()], "cert": str(tls_files.shop.cert)}
    assert error_of(base(tls=both), tmp_path).key == "tls.cert"
    err = error_of(base(tls={**tls_files.shop.config(), "min_version": 1.2}), tmp_path)
    assert err.key == "tls.min_version" and "quoted" in err.message
    assert error_of(base(tls={**tls_files.shop.config(), "ciphers": "x"}), tmp_path).key == "tls.ciphers"


def test_admin_tls_errors_name_admin_tls(tls_files, tmp_path):
    admin = {"listen": "127.0.0.1:0", "auth": "none", "tls": {"cert": str(tls_files.shop.cert)}}
    err = error_of(base(admin=admin), tmp_path)
    assert (err.key, err.message) == ("admin.tls.key", "required with admin.tls.cert")
    admin["tls"] = tls_files.localhost.config()
    assert parse_config(base(admin=admin), tmp_path, {}).admin.tls.certificates[0].cert == str(tls_files.localhost.cert)


def test_upstream_tls_of_an_environment(tls_files, tmp_path):
    envs = {"blue": {"servers": ["127.0.0.1:19001"]},
            "green": {"servers": ["127.0.0.1:19002"],
                      "tls": {"ca": str(tls_files.authority.cert), "server_name": "Shop.Test"}}}
    cfg = parse_config(base(environments=envs), tmp_path, {})
    assert cfg.environments["blue"].tls is None
    assert cfg.environments["green"].tls == UpstreamTLS(ca=str(tls_files.authority.cert), server_name="shop.test")
    assert cfg.settings().environments[1].tls == cfg.environments["green"].tls
    envs["green"]["tls"] = {}
    assert parse_config(base(environments=envs), tmp_path, {}).environments["green"].tls == UpstreamTLS()


@pytest.mark.parametrize("tls, key, words", [
    ({"ca": "nowhere.pem"}, "environments.green.tls.ca", "does not exist"),
    ({"ca": "KEY"}, "environments.green.tls.ca", "no valid PEM certificate"),
    ({"verify": "no"}, "environments.green.tls.verify", "true or false"),
    ({"server_name": "not a name"}, "environments.green.tls.server_name", "host name"),
    ({"sni": "x"}, "environments.green.tls.sni", "unknown key"),
])
def test_upstream_tls_errors_name_their_key(tls_files, tmp_path, tls, key, words):
    tls = {k: str(tls_files.shop.key) if v == "KEY" else v for k, v in tls.items()}
    envs = {"blue": {"servers": ["127.0.0.1:19001"]}, "green": {"servers": ["127.0.0.1:19002"], "tls": tls}}
    err = error_of(base(environments=envs), tmp_path)
    assert err.key == key and words in err.message
