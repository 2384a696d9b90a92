"""check-config runs every start-up check that needs no port; a listener that cannot bind names its key.

check-config prints the effective config on stdout (unchanged, itself a valid config) and one
line on stderr naming the state file it read. A config that serve would refuse fails it too.
The start-up checks that need no port at all are tests/admin/test_start_up_checks_that_need_no_port.py.
"""

from __future__ import annotations

import json
import socket

import pytest

from admin.serve import StartError, start
from admin.config import effective_config, load_config, parse_config
from tests.support.cli import cutover
from tests.support.ports import free_port
from tests.support.stack import save_state, write_config


async def test_a_state_naming_a_renamed_environment_fails_check_config_as_serve_does(tmp_path):
    save_state(tmp_path, "green", "blue", 2)
    config = write_config(tmp_path, environments=("blue", "teal"))      # green was renamed teal
    checked = await cutover("check-config", str(config))
    assert (checked.rc, checked.out) == (1, ""), checked
    assert checked.err.count("\n") == 1 and "Traceback" not in checked.err
    assert str(tmp_path / "state.json") in checked.err and 'environment "green"' in checked.err

    served = await cutover("serve", "--config", str(config), timeout=20)
    assert served.rc == 1
    assert served.err.splitlines()[-1] == checked.err.rstrip("\n")   # the very same refusal


async def test_check_config_names_the_state_file_it_read_on_stderr(tmp_path):
    state = save_state(tmp_path, "green", "blue", 4)
    config = write_config(tmp_path)
    result = await cutover("check-config", str(config))
    assert result.rc == 0, result
    assert json.loads(result.out) == effective_config(load_config(config))   # stdout as before
    assert result.err == f"cutover check-config: state file {state}: live green, previous blue, generation 4\n"


async def test_check_config_without_a_state_file_says_where_serve_would_start(tmp_path):
    config = write_config(tmp_path, live="green")
    result = await cutover("check-config", str(config))
    assert result.rc == 0, result
    assert result.err == (f"cutover check-config: state file {tmp_path / 'state.json'}: not there yet; "
                          "serve starts with live green (config live), generation 1\n")
    assert not (tmp_path / "state.json").exists()       # check-config writes no state


async def test_check_config_refuses_a_corrupt_state_file(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    result = await cutover("check-config", str(write_config(tmp_path)))
    assert result.rc == 1 and result.out == ""
    assert "not valid JSON" in result.err and result.err.count("\n") == 1


# ---------------------------------------------------------------- listeners in use

@pytest.fixture
def busy_port():
    """busy_port: a loopback port some other socket listens on for the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def can_bind(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.mark.parametrize("key", ["listen", "preview_listen", "admin.listen"])
async def test_a_listener_in_use_at_start_names_its_config_key(tmp_path, busy_port, key):
    ports = {"listen": free_port(), "preview_listen": free_port(), "admin.listen": free_port()}
    ports[key] = busy_port
    config = parse_config({
        "listen": f"127.0.0.1:{ports['listen']}",
        "preview_listen": f"127.0.0.1:{ports['preview_listen']}",
        "admin": {"listen": f"127.0.0.1:{ports['admin.listen']}", "auth": "none"},
        "environments": {"blue": {"servers": ["127.0.0.1:19001"]}, "green": {"servers": ["127.0.0.1:19002"]}},
        "state_file": str(tmp_path / "state.json"),
    }, tmp_path, {})
    with pytest.raises(StartError) as failed:
        await start(config)
    assert str(failed.value) == f"{key}: 127.0.0.1:{busy_port} is in use"
    # what did start was closed again
    assert all(can_bind(port) for name, port in ports.items() if name != key)


async def test_serve_with_its_listen_port_in_use_exits_1_with_one_line(tmp_path, busy_port):
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace('listen: "127.0.0.1:0"', f'listen: "127.0.0.1:{busy_port}"', 1))
    result = await cutover("serve", "--config", str(config), timeout=20)
    assert result.rc == 1 and "Traceback" not in result.err
    assert result.err.splitlines() == [f"cutover: listen: 127.0.0.1:{busy_port} is in use"]
