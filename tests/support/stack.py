"""stack: configs for the test backends, and the settings tests give a proxy or a stack.

proxy_config builds the Config that the make_proxy and make_stack fixtures (plugin.py) start
from; tests call it directly for a Config they start or inspect themselves. write_config and
save_state write the files check-config and serve read, for the start-up checks.
"""

from __future__ import annotations

from pathlib import Path

from admin.config import parse_config
from admin.state import FileStateStore, State

# Health checks that do not run again during a test (one initial probe at start): a server is
# then marked down only by the passive check, or by the test.
QUIET_HEALTH = {"interval": "10s", "timeout": "500ms"}


def proxy_config(tmp_path: Path, backends: dict, **overrides):
    """proxy_config: a Config for the test backends; keyword arguments override top-level keys.

    ``backends`` maps an environment name to something with an ``address`` (a Backend, a
    RawBackend, a Refused) or to a list of them; auth is off, the state file is
    tmp_path/state.json.
    """
    data = {
        "listen": "127.0.0.1:0",
        "admin": {"listen": "127.0.0.1:0", "auth": "none"},
        "environments": {
            name: {"servers": [b.address for b in (group if isinstance(group, list) else [group])]}
            for name, group in backends.items()
        },
        "live": "blue",
        "state_file": str(tmp_path / "state.json"),
        "health_check": {"interval": "100ms", "timeout": "500ms"},
        "drain_timeout": "5s",
    }
    data.update(overrides)
    return parse_config(data, tmp_path, {})


async def make_unhealthy(running, env: str) -> None:
    """make_unhealthy: stop the health checks so nothing heals it, then mark env's servers down."""
    await running.proxy.health.stop()
    for server in running.proxy.router.environments[env].servers:
        server.set_healthy(False)


def write_config(tmp_path: Path, environments=("blue", "green"), **extra: str) -> Path:
    """write_config: a loopback config with the given environment names, state file state.json."""
    lines = ['listen: "127.0.0.1:0"', 'admin: {listen: "127.0.0.1:0", auth: none}', "environments:"]
    for n, name in enumerate(environments):
        lines.append(f'  {name}: {{servers: ["127.0.0.1:{19001 + n}"]}}')
    lines.append("state_file: state.json")
    lines += [f"{key}: {value}" for key, value in extra.items()]
    path = tmp_path / "cutover.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def save_state(tmp_path: Path, live: str, previous: str | None, generation: int) -> Path:
    """save_state: tmp_path/state.json saved by the file store with that route."""
    path = tmp_path / "state.json"
    FileStateStore(path).save(State(live=live, previous=previous, generation=generation))
    return path
