"""The ``cutover`` command line: serve, check-config, demo and the admin commands.

The admin commands (status, flip, rollback, hold, resume, lock, unlock,
canary, promote, abort, history) call the admin API through AdminClient
(admin/client.py). Their options --admin, --token, --json and --timeout may
stand before or after the subcommand (SPEC §2).

Exit codes follow SPEC §2: 0 on success; 2 when the switch refused (a gate,
the lock or a generation conflict: HTTP 409, 412) or on a usage error; 1 on
any other failure. A failure prints one line on stderr,
``cutover: <message> (<code>)``, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import sys
from typing import Callable

from proxy.config import ConfigError, effective_config, load_config
from proxy.server import new_event_loop

from .client import DEFAULT_TIMEOUT, DEFAULT_URL, AdminClient, AdminError
from .state import StateError


def _run(coro) -> int:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve
    config = load_config(args.config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return _run(serve(config))


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    print(json.dumps(effective_config(config), indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return _run(run_demo(json_output=args.json, keep_running=args.keep_running,
                         duration=args.duration, objective_ms=args.objective_ms))


def cmd_schema_check(args: argparse.Namespace) -> int:
    from . import schema_check
    return schema_check.run(args)


def cmd_drill(args: argparse.Namespace) -> int:
    from . import drill
    args.admin = client_option(args, "admin", None) or os.environ.get("CUTOVER_ADMIN_URL") or DEFAULT_URL
    args.token = client_option(args, "token", None) or os.environ.get("CUTOVER_TOKEN") or None
    args.json = client_option(args, "json", False)
    if "://" not in args.admin:
        args.admin = "http://" + args.admin
    return _run(drill.run(args))


# ----------------------------------------------------------- admin commands

# The options every admin command takes, before or after its name. The main
# parser stores them as pre_<name>, each subparser as <name>; both default to
# SUPPRESS so that only a given option sets an attribute and the one after the
# subcommand wins.
CLIENT_OPTIONS = ("admin", "token", "json", "timeout")


def seconds(text: str) -> float:
    """seconds: an argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text!r}")
    return value


def percent(text: str) -> int:
    """percent: an argparse type: an integer from 0 to 100."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be from 0 to 100, got {value}")
    return value


def positive_int(text: str) -> int:
    """positive_int: an argparse type: an integer above 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_client_options(parser: argparse.ArgumentParser, prefix: str, timeout: bool = True) -> None:
    """add_client_options: --admin, --token, --json and --timeout, stored as ``prefix + name``."""
    group = parser.add_argument_group("admin API options (before or after the command)")
    group.add_argument("--admin", dest=prefix + "admin", metavar="URL", default=argparse.SUPPRESS,
                       help=f"admin API base URL (env CUTOVER_ADMIN_URL; default {DEFAULT_URL})")
    group.add_argument("--token", dest=prefix + "token", metavar="TOKEN", default=argparse.SUPPRESS,
                       help="bearer token (env CUTOVER_TOKEN, which keeps it out of the process list)")
    group.add_argument("--json", dest=prefix + "json", action="store_true", default=argparse.SUPPRESS,
                       help="print the API's JSON document instead of text")
    if timeout:
        group.add_argument("--timeout", dest=prefix + "timeout", metavar="SECONDS", type=seconds,
                           default=argparse.SUPPRESS,
                           help=f"give up on the admin API after this long (default {DEFAULT_TIMEOUT:g})")


def client_option(args: argparse.Namespace, name: str, default):
    """client_option: the option given after the subcommand, else before it, else ``default``."""
    return getattr(args, name, getattr(args, "pre_" + name, default))


async def call_admin(client: AdminClient, args: argparse.Namespace) -> dict:
    """call_admin: the one API call an admin command stands for."""
    match args.command:
        case "status":
            return await client.status()
        case "flip":
            return await client.flip(args.env, args.reason, args.force, args.if_generation, args.wait)
        case "rollback":
            return await client.rollback(args.reason, args.force, args.if_generation)
        case "hold":
            return await client.hold(args.hold_timeout, args.reason)
        case "resume":
            return await client.resume()
        case "lock":
            return await client.lock(args.reason)
        case "unlock":
            return await client.unlock()
        case "canary":
            return await client.canary(args.weight, args.reason, args.force)
        case "promote":
            return await client.promote(args.reason, args.force, args.wait)
        case "abort":
            return await client.abort()
        case "history":
            doc = await client.history()
            if args.limit is not None:
                doc["events"] = doc.get("events", [])[-args.limit:]
            return doc
    raise AssertionError(f"no admin call for {args.command}")


async def run_admin(args: argparse.Namespace) -> int:
    """run_admin: call the API, print the answer (text or JSON); the exit status per SPEC §2."""
    url = client_option(args, "admin", None) or os.environ.get("CUTOVER_ADMIN_URL") or DEFAULT_URL
    token = client_option(args, "token", None) or os.environ.get("CUTOVER_TOKEN") or None
    as_json = client_option(args, "json", False)
    # --wait blocks for the post-flip analysis window, so it waits as long as that takes.
    timeout = client_option(args, "timeout", 3600.0 if getattr(args, "wait", False) else DEFAULT_TIMEOUT)
    try:
        async with AdminClient(url, token, timeout) as client:
            doc = await call_admin(client, args)
    except AdminError as exc:
        if as_json and exc.body is not None:
            print(json.dumps(exc.body, indent=2))
        message = exc.message
        if exc.status == 401 and not token:
            message += "; give --token or set CUTOVER_TOKEN"
        print(f"cutover: {one_line(message)} ({exc.code})", file=sys.stderr)
        return 2 if exc.refused else 1
    print(json.dumps(doc, indent=2) if as_json else RENDER[args.command](doc, args))
    analysis = doc.get("analysis") if getattr(args, "wait", False) else None
    if analysis and analysis.get("state") != "passed":
        # --wait succeeds only when the flip stood through its analysis window.
        what = {"rolled_back": "rolled back by post-flip analysis",
                "cancelled": "post-flip analysis cancelled, the flip did not stand",
                "failed": "post-flip analysis failed"}.get(analysis.get("state"), "post-flip analysis")
        code = "auto_rollback" if analysis.get("state") == "rolled_back" else "analysis_" + str(analysis.get("state"))
        print(f"cutover: {what}: {one_line(analysis.get('reason') or '')} ({code})", file=sys.stderr)
        return 1
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    return _run(run_admin(args))


def one_line(text: str) -> str:
    return " ".join(str(text).split())


# ------------------------------------------------------------- text output

def render_status(doc: dict, args: argparse.Namespace) -> str:
    """render_status: the route, hold and lock, then one line per environment and per server."""
    live = doc.get("live")
    weights = doc.get("weights") or {}
    held = "no"
    if doc.get("held"):
        held = f"yes, {doc.get('held_requests', 0)} requests waiting"
        if doc.get("hold_until"):
            held += f", until {doc['hold_until']}"
    locked = "no"
    if doc.get("locked"):
        locked = f"yes ({doc['lock_reason']})" if doc.get("lock_reason") else "yes"
    lines = [
        f"live:        {live}",
        f"previous:    {doc.get('previous') or '-'}",
        f"generation:  {doc.get('generation')}",
        f"held:        {held}",
        f"locked:      {locked}",
        f"weights:     {', '.join(f'{env} {w}%' for env, w in weights.items())}",
    ]
    for env, drain in (doc.get("draining") or {}).items():
        lines.append(f"draining:    {env} (generation {drain.get('generation')}, "
                     f"{drain.get('remaining', 0)} in flight)")
    envs = doc.get("environments") or {}
    lines.append("environments:")
    name_width = max((len(name) for name in envs), default=0)
    addr_width = max((len(s.get("address", "")) for e in envs.values() for s in e.get("servers", [])),
                     default=0)
    for name, env in envs.items():
        role = "live" if name == live else "canary" if weights.get(name) else "idle"
        lines.append(f"  {name:<{name_width}}  {role:<6}  {figures(env)}")
        for server in env.get("servers", []):
            lines.append(f"    {server.get('address', ''):<{addr_width}}  {figures(server)}")
    return "\n".join(lines)


def figures(item: dict) -> str:
    health = "healthy" if item.get("healthy") else "unhealthy"
    return f"{health:<9}  inflight {item.get('inflight', 0)}  connections {item.get('connections', 0)}"


def render_switch(verb: str) -> Callable[[dict, argparse.Namespace], str]:
    """render_switch: ``<verb> blue -> green (generation 3)`` for flip, rollback and promote."""
    def render(doc: dict, args: argparse.Namespace) -> str:
        generation = doc.get("generation")
        if doc.get("changed") is False:
            return f"already live: {doc.get('live')} (generation {generation}, nothing changed)"
        forced = ", forced" if getattr(args, "force", False) else ""
        return f"{verb} {doc.get('previous')} -> {doc.get('live')} (generation {generation}{forced})"
    return render


def render_canary(doc: dict, args: argparse.Namespace) -> str:
    live, generation = doc.get("live"), doc.get("generation")
    if doc.get("changed") is False:
        return f"canary already at {args.weight}% (generation {generation}, nothing changed)"
    if args.weight == 0:
        return f"canary stopped: all traffic to {live} (generation {generation})"
    weights = doc.get("weights") or {}
    canary = next((env for env, w in weights.items() if env != live and w), "?")
    return (f"canary {canary} at {weights.get(canary, args.weight)}%, "
            f"live {live} at {weights.get(live, 100 - args.weight)}% (generation {generation})")


def render_hold(doc: dict, args: argparse.Namespace) -> str:
    until = f" or {doc['hold_until']}" if doc.get("hold_until") else ""
    return f"holding new requests until resume{until}"


def render_history(doc: dict, args: argparse.Namespace) -> str:
    """render_history: one line per event: time, action, from -> to, generation, details, reason."""
    events = doc.get("events") or []
    if not events:
        return "no events"
    width = max(len(str(e.get("action", ""))) for e in events)
    return "\n".join(history_line(event, width) for event in events)


def history_line(event: dict, width: int) -> str:
    source, target = event.get("from"), event.get("to")
    route = f"{source} -> {target}" if source != target else str(target)
    parts = [str(event.get("at", "")), f"{event.get('action', ''):<{width}}", route,
             f"generation {event.get('generation')}"]
    if event.get("forced"):
        parts.append("forced")
    if "weight" in event:
        parts.append(f"weight {event['weight']}%")
    if "timeout" in event:
        parts.append(f"timeout {event['timeout']:g}s")
    if "released" in event:
        parts.append(f"released {event['released']}")
    if "drained" in event:
        parts.append(f"drained {event['drained']}, forced_closed {event.get('forced_closed', 0)}, "
                     f"dropped {event.get('dropped', 0)}")
    if event.get("recovery_ms") is not None:
        parts.append(f"recovery {event['recovery_ms']:g}ms")
    if event.get("reason"):
        parts.append(f"reason: {one_line(event['reason'])}")
    return "  ".join(parts)


RENDER: dict[str, Callable[[dict, argparse.Namespace], str]] = {
    "status": render_status,
    "flip": render_switch("flipped"),
    "rollback": render_switch("rolled back"),
    "promote": render_switch("promoted"),
    "canary": render_canary,
    "abort": lambda doc, args: f"canary aborted: all traffic to {doc.get('live')} "
                               f"(generation {doc.get('generation')})",
    "hold": render_hold,
    "resume": lambda doc, args: f"resumed: released {doc.get('released', 0)} held requests",
    "lock": lambda doc, args: ("switching locked" + (f" ({doc['lock_reason']})" if doc.get("lock_reason") else "")
                               + ": flip, rollback, canary and promote refused until unlock"),
    "unlock": lambda doc, args: "switching unlocked",
    "history": render_history,
}


def add_admin_commands(sub) -> None:
    """add_admin_commands: one subparser per admin API call (SPEC §2)."""
    def command(name: str, help: str, timeout: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        add_client_options(p, "", timeout=timeout)
        p.set_defaults(func=cmd_admin)
        return p

    def reason(p: argparse.ArgumentParser) -> None:
        p.add_argument("--reason", metavar="R", help="why, recorded in the history")

    def force(p: argparse.ArgumentParser) -> None:
        p.add_argument("--force", action="store_true", help="skip the gates (a lock still refuses)")

    def if_generation(p: argparse.ArgumentParser) -> None:
        p.add_argument("--if-generation", metavar="N", type=int,
                       help="only if the route is still at generation N (else exit 2)")

    command("status", "show the live route, hold, lock and every environment's servers")
    def wait(p: argparse.ArgumentParser) -> None:
        p.add_argument("--wait", action="store_true",
                       help="block until the post-flip analysis ends; exit 1 if it rolled back")

    p = command("flip", "switch all traffic to ENV (default: the other environment)")
    p.add_argument("env", metavar="ENV", nargs="?", help="the environment to make live")
    reason(p), force(p), if_generation(p), wait(p)
    p = command("rollback", "switch back to the previous environment")
    reason(p), force(p), if_generation(p)
    # After `hold`, --timeout is the hold's length; the request timeout goes before `hold`.
    p = command("hold", "make new requests wait until resume (or the timeout)", timeout=False)
    p.add_argument("--timeout", dest="hold_timeout", metavar="SECONDS", type=seconds,
                   help="release by itself after this long (default hold.max_wait); "
                        "for the request timeout write `cutover --timeout S hold`")
    reason(p)
    command("resume", "release every held request")
    p = command("lock", "refuse flip, rollback, canary and promote until unlock (abort still works)")
    reason(p)
    command("unlock", "allow switching again")
    p = command("canary", "send N percent of new requests to the idle environment (0 stops)")
    p.add_argument("weight", metavar="N", type=percent, help="percent of new requests, 0..100")
    reason(p), force(p)
    p = command("promote", "make the canary environment live")
    reason(p), force(p), wait(p)
    command("abort", "stop the canary: every request goes to live again")
    p = command("history", "list the switch history, oldest first")
    p.add_argument("--limit", metavar="N", type=positive_int, help="only the last N events")
    from . import drill
    p = sub.add_parser("drill", help="flip to the other environment and back under probes; "
                       "report recovery times", description="rollback drill against a running router")
    add_client_options(p, "")
    drill.add_arguments(p)
    p.set_defaults(func=cmd_drill)


def cmd_version(args) -> int:
    """cmd_version: `cutover version`; the bench records it with its figures."""
    import importlib.metadata

    import proxy
    try:
        version = importlib.metadata.version("cutover")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    print(f"cutover {version} (data plane: {proxy.build()})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """build_parser: the argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="cutover", description="A blue-green traffic switch.")
    add_client_options(parser, "pre_")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the router in the foreground")
    p.add_argument("--config", "-c", default="config/cutover.yaml", help="config file (YAML)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("version", help="print the version and how the data plane is built")
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("check-config", help="validate a config and print the effective config")
    p.add_argument("file", help="config file (YAML)")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("demo", help="start blue, green and the router on loopback and switch under load")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep-running", action="store_true", help="leave everything up afterwards")
    p.add_argument("--duration", type=float, default=6.0, help="seconds of synthetic load")
    p.add_argument("--objective-ms", type=float, default=100.0,
                   help="rollback recovery-time objective of the drill (default 100)")
    p.set_defaults(func=cmd_demo)

    from . import schema_check
    p = sub.add_parser("schema-check", help="flag migration statements that break the version still serving")
    schema_check.add_arguments(p)
    p.set_defaults(func=cmd_schema_check)

    add_admin_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """main: the console script's entry point."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.func not in (cmd_admin, cmd_drill):
        given = [f"--{name}" for name in CLIENT_OPTIONS if hasattr(args, "pre_" + name)]
        if given:
            parser.error(f"{given[0]} applies to the admin commands, not to {args.command}")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"cutover: config error: {exc}", file=sys.stderr)
        return 1
    except StateError as exc:
        print(f"cutover: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"cutover: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
