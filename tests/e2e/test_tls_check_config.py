"""`cutover check-config` reports a bad TLS file as every other config error: exit 1, one line
naming the file and the key path; a good TLS config passes with the certificates listed."""

from __future__ import annotations

import json

from tests.support.cli import cutover
from tests.support.stack import write_config


async def test_check_config_names_the_tls_key_of_a_missing_file(tmp_path, tls_files):
    config = write_config(tmp_path, tls=f'{{certificates: [{{cert: "{tls_files.shop.cert}", key: "{tls_files.shop.key}"}}, '
                                         '{cert: certs/api.pem, key: certs/api.key}]}')
    result = await cutover("check-config", str(config))
    assert result.rc == 1
    assert result.err == (f"cutover: config error: {config}: tls.certificates[1].cert: "
                          f"{tmp_path / 'certs' / 'api.pem'} does not exist\n")


async def test_check_config_passes_a_good_tls_config(tmp_path, tls_files):
    config = write_config(tmp_path, tls=f'{{cert: "{tls_files.shop.cert}", key: "{tls_files.shop.key}"}}')
    result = await cutover("check-config", str(config))
    assert result.rc == 0, result.err
    assert json.loads(result.out)["tls"] == {"certificates": [tls_files.shop.config()], "min_version": "1.2"}
