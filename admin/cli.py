"""The ``cutover`` command line: serve, check-config, demo and the admin commands.

The admin commands (status, flip, rollback, hold, resume, lock, unlock,
canary, promote, abort, history) call the admin API through AdminClient
(admin/client.py). Their options --admin, --token, --json, --timeout (also
spelled --request-timeout) and --idempotency-key may stand before or after the
subcommand (SPEC §2); after ``hold``, --timeout is the hold's length (its old
spelling; --for is its name) and the request timeout is --request-timeout.

Every mutation sends an ``Idempotency-Key`` header: --idempotency-key K, or a
fresh random key per invocation; the client's one retry (when no answer came)
reuses it, so the API applies the call at most once.

Exit codes follow SPEC §2: 0 on success; 2 when the switch refused (a gate,
the lock or a generation conflict: HTTP 409, 412); 1 on any other failure,
usage errors included. A failure prints one line on stderr,
``cutover: <message> (<code>)`` (a usage error: ``cutover: <command>:
<message> (see cutover <command> --help)``), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import uuid
from typing import Callable, NoReturn

from proxy import configure_logging, new_event_loop

from .config import ConfigError, effective_config, load_config, parse_duration

from .client import DEFAULT_TIMEOUT, DEFAULT_URL, AdminClient, AdminError
from .early_signals import EARLY_SIGNALS
from .state import StateError


def _run(coro) -> int:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coro)


def cmd_serve(args: argparse.Namespace) -> int:
    # From here a SIGHUP, SIGUSR1 or SIGUSR2 is noted, not the end of the process: serve handles
    # what came once it serves (admin/early_signals.py).
    noted: list[int] = []
    for signum in EARLY_SIGNALS:
        signal.signal(signum, lambda number, _frame: noted.append(number))
    from .serve import StartError, serve
    config = load_config(args.config)
    configure_logging(config.log.format, config.log.level)
    try:
        return _run(serve(config, noted))
    except StartError as exc:    # a listener that cannot bind, named by its config key
        print(f"cutover: {exc}", file=sys.stderr)
        return 1


def cmd_check_config(args: argparse.Namespace) -> int:
    """cmd_check_config: validate, run serve's start-up checks that need no port, print the config.

    stdout is the effective config, as before (itself a valid config); the state file read goes
    to stderr, one line, so scripts that parse stdout are not disturbed.
    """
    from .serve import check_start
    config = load_config(args.file)
    plan = check_start(config)
    print(json.dumps(effective_config(config), indent=2))
    state = plan.state
    if plan.saved:
        found = f"live {state.live}, previous {state.previous or '-'}, generation {state.generation}"
    else:
        found = f"not there yet; serve starts with live {state.live} (config live), generation {state.generation}"
    print(f"cutover check-config: state file {plan.store.path}: {found}", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .story.demo import run_demo
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return _run(run_demo(json_output=args.json, keep_running=args.keep_running,
                         duration=args.duration, objective_ms=args.objective_ms))


def cmd_schema_check(args: argparse.Namespace) -> int:
    from .story import schema_check
    return schema_check.run(args)


def cmd_drill(args: argparse.Namespace) -> int:
    from .story import drill
    if client_option(args, "idempotency_key", None) is not None:
        raise UsageError("cutover drill", "--idempotency-key applies to one admin call; "
                         "the drill makes several, each with its own")
    args.admin, args.token, args.ca = admin_target(args)
    args.json = client_option(args, "json", False)
    args.timeout = client_option(args, "timeout", drill.ADMIN_TIMEOUT)
    if "://" not in args.admin:
        args.admin = "http://" + args.admin
    return _run(drill.run(args))


# ----------------------------------------------------------- admin commands

# The options every admin command takes, before or after its name. The main
# parser stores them as pre_<name>, each subparser as <name>; both default to
# SUPPRESS so that only a given option sets an attribute and the one after the
# subcommand wins.
CLIENT_OPTIONS = ("admin", "token", "json", "timeout", "idempotency_key", "ca")

# The request timeout when none is given: a plain call; a switch, whose gates may take
# minutes (the schema command alone may run SCHEMA_TIMEOUT, 120 s); a --wait, which also
# blocks for the post-flip analysis window.
SWITCH_TIMEOUT = 300.0
WAIT_TIMEOUT = 3600.0
GATED = ("flip", "rollback", "canary", "promote")


def duration(text: str) -> float:
    """duration: an argparse type: a duration as the config writes one ("250ms", "2s", "1m", 5), above 0."""
    try:
        value = parse_duration(text, "")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text!r}")
    return value


def idempotency_key(text: str) -> str:
    """idempotency_key: an argparse type: a key the API accepts (1 to 255 visible ASCII, no quote or backslash)."""
    if not 1 <= len(text) <= 255 or not all("!" <= c <= "~" and c not in '"\\' for c in text):
        raise argparse.ArgumentTypeError("must be 1 to 255 visible ASCII characters without spaces, "
                                         f"quotes or backslashes, got {text!r}")
    return text


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


def add_client_options(parser: argparse.ArgumentParser, prefix: str, timeout: bool = True,
                       keyed: bool = True) -> None:
    """add_client_options: the admin API options, stored as ``prefix + name``.

    ``timeout`` False leaves the --timeout spelling out (after `hold` it is the hold's length);
    --request-timeout is always there. ``keyed`` False leaves --idempotency-key out (drill).
    """
    from .story import drill
    group = parser.add_argument_group("admin API options (before or after the command)")
    group.add_argument("--admin", dest=prefix + "admin", metavar="URL", default=argparse.SUPPRESS,
                       help=f"admin API base URL (env CUTOVER_ADMIN_URL; default {DEFAULT_URL})")
    group.add_argument("--ca", dest=prefix + "ca", metavar="FILE", default=argparse.SUPPRESS,
                       help="PEM certificates that an https admin URL (and for drill a TLS listener) is "
                            "verified against (env CUTOVER_CA; default the system's store)")
    group.add_argument("--token", dest=prefix + "token", metavar="TOKEN", default=argparse.SUPPRESS,
                       help="bearer token (env CUTOVER_TOKEN, which keeps it out of the process list)")
    group.add_argument("--json", dest=prefix + "json", action="store_true", default=argparse.SUPPRESS,
                       help="print the API's JSON document instead of text")
    # Two spellings of one option (one dest: the last given wins), each its own argument so
    # that an error names the spelling that was written.
    group.add_argument("--request-timeout", dest=prefix + "timeout", metavar="DURATION", type=duration,
                       default=argparse.SUPPRESS,
                       help=f"give up on the admin API after this long (default {DEFAULT_TIMEOUT:g}s; "
                            f"{SWITCH_TIMEOUT:g}s for flip, rollback, canary and promote; "
                            f"{WAIT_TIMEOUT:g}s with --wait; for drill, each of its calls: {drill.ADMIN_TIMEOUT:g}s)")
    if timeout:
        group.add_argument("--timeout", dest=prefix + "timeout", metavar="DURATION", type=duration,
                           default=argparse.SUPPRESS, help="the same as --request-timeout")
    if keyed:
        group.add_argument("--idempotency-key", dest=prefix + "idempotency_key", metavar="KEY",
                           type=idempotency_key, default=argparse.SUPPRESS,
                           help="the Idempotency-Key of this call (default: a fresh random one); "
                                "a CI retry that passes the same key is applied at most once")


def client_option(args: argparse.Namespace, name: str, default):
    """client_option: the option given after the subcommand, else before it, else ``default``."""
    return getattr(args, name, getattr(args, "pre_" + name, default))


def admin_target(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    """admin_target: the admin URL, token and CA file of a command: its options, else CUTOVER_ADMIN_URL,
    CUTOVER_TOKEN and CUTOVER_CA, else the default URL, no token and the system's store."""
    url = client_option(args, "admin", None) or os.environ.get("CUTOVER_ADMIN_URL") or DEFAULT_URL
    token = client_option(args, "token", None) or os.environ.get("CUTOVER_TOKEN") or None
    ca = client_option(args, "ca", None) or os.environ.get("CUTOVER_CA") or None
    return url, token, ca


def request_timeout(args: argparse.Namespace) -> float:
    """request_timeout: the admin call's timeout: the one given, else long enough for the call.

    A --wait blocks for the gates and the post-flip analysis window, a switch for its gates.
    """
    if getattr(args, "wait", False):
        default = WAIT_TIMEOUT
    elif args.command in GATED:
        default = SWITCH_TIMEOUT
    else:
        default = DEFAULT_TIMEOUT
    return client_option(args, "timeout", default)


async def call_admin(client: AdminClient, args: argparse.Namespace) -> dict:
    """call_admin: the one API call an admin command stands for; a mutation carries ``key``."""
    key = args.key
    match args.command:
        case "status":
            return await client.status()
        case "flip":
            return await client.flip(args.env, args.reason, args.force, args.if_generation, args.wait,
                                     idempotency_key=key)
        case "rollback":
            return await client.rollback(args.reason, args.force, args.if_generation, idempotency_key=key)
        case "hold":
            return await client.hold(args.hold_for, args.reason, idempotency_key=key)
        case "resume":
            return await client.resume(idempotency_key=key)
        case "lock":
            return await client.lock(args.reason, idempotency_key=key)
        case "unlock":
            return await client.unlock(idempotency_key=key)
        case "reload":
            return await client.reload(args.reason, idempotency_key=key)
        case "canary":
            return await client.canary(args.weight, args.reason, args.force, idempotency_key=key)
        case "promote":
            return await client.promote(args.reason, args.force, args.wait, idempotency_key=key)
        case "abort":
            return await client.abort(idempotency_key=key)
        case "servers":
            if args.reset:
                doc = await client.reset_servers(args.env, args.reason, idempotency_key=key)
            else:
                doc = await client.servers(args.env, args.addresses, args.reason, idempotency_key=key)
            if args.wait_healthy is not None:
                doc = await wait_healthy(client, args.env, doc, args.wait_healthy)
            return doc
        case "history":
            doc = await client.history()
            if args.limit is not None:
                doc["events"] = doc.get("events", [])[-args.limit:]
            return doc
    raise AssertionError(f"no admin call for {args.command}")


async def run_admin(args: argparse.Namespace) -> int:
    """run_admin: call the API, print the answer (text or JSON); the exit status per SPEC §2."""
    url, token, ca = admin_target(args)
    as_json = client_option(args, "json", False)
    # One key per invocation: the client's own retry reuses it, and so may a CI retry (--idempotency-key).
    args.key = client_option(args, "idempotency_key", None) or str(uuid.uuid4())
    try:
        async with AdminClient(url, token, request_timeout(args), ca) as client:
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
    ack = doc.get("ack")
    if isinstance(ack, dict) and ack.get("complete") is False:
        # 202 (SPEC §9): committed, but not every worker or replica confirmed it in time.
        pending = ", ".join(str(p) for p in ack.get("pending") or []) or "?"
        print(f"cutover: the change is committed but not confirmed everywhere; pending: {pending} "
              "(not_confirmed)", file=sys.stderr)
        return 1
    return wait_outcome(doc) if getattr(args, "wait", False) else 0


async def wait_healthy(client: AdminClient, env: str, doc: dict, within: float) -> dict:
    """wait_healthy: ``servers --wait-healthy``: poll status until every server of ``env``'s list is
    healthy (the removed ones may still drain); the status then. AdminError not_healthy after ``within``."""
    deadline = time.monotonic() + within
    while True:
        servers = ((doc.get("environments") or {}).get(env) or {}).get("servers") or []
        if servers and all(s.get("healthy") for s in servers):
            return doc
        if time.monotonic() >= deadline:
            down = ", ".join(s.get("address", "?") for s in servers if not s.get("healthy")) or "none listed"
            raise AdminError(0, "not_healthy", f"servers of {env} not all healthy within {within:g}s: "
                             f"unhealthy {down}", doc)
        await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        doc = await client.status()


def wait_outcome(doc: dict) -> int:
    """wait_outcome: --wait's exit status: 0 unless the analysis of this call's own change did not pass.

    Only the analysis of the generation this call created counts (``change``); a no-op, or a
    change no analysis watches, exits 0 whatever an older switch's analysis said.
    """
    change = doc.get("change") if doc.get("changed") else None
    analysis = doc.get("analysis")
    if not change or not isinstance(analysis, dict) or analysis.get("generation") != change.get("generation"):
        return 0
    state = analysis.get("state")
    if state == "passed":
        return 0
    what = {"rolled_back": "rolled back by post-flip analysis",
            "cancelled": "post-flip analysis cancelled, the flip did not stand",
            "failed": "post-flip analysis failed"}.get(state, "post-flip analysis")
    code = "auto_rollback" if state == "rolled_back" else f"analysis_{state}"
    now = f"live is {doc.get('live')}{' again' if state == 'rolled_back' else ''} (generation {doc.get('generation')})"
    print(f"cutover: {what}: {one_line(analysis.get('reason') or '')}; {now} ({code})", file=sys.stderr)
    return 1


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
    lines += listener_lines(doc)
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
        if env.get("servers_source") == "registered":
            lines[-1] += "  servers registered"
        for server in env.get("servers", []):
            lines.append(f"    {server.get('address', ''):<{addr_width}}  {figures(server)}")
        for server in env.get("retired_servers", []):
            lines.append(f"    {server.get('address', ''):<{addr_width}}  {figures(server)}  removed, draining")
    return "\n".join(lines)


def listener_lines(doc: dict) -> list[str]:
    """listener_lines: render_status's lines of the listeners and whether each speaks TLS
    (``listen_tls``, ``preview_listen_tls``, ``admin_tls``; a router that does not say gets
    the address alone)."""
    def over(tls: object) -> str:
        return "TLS" if tls else "plain HTTP"
    lines = []
    for label, key in (("listen:", "listen"), ("preview:", "preview_listen")):
        if doc.get(key):
            tls = doc.get(key + "_tls")
            lines.append(f"{label:<12} {doc[key]}" + (f", {over(tls)}" if tls is not None else ""))
    if doc.get("admin_tls") is not None:
        lines.append(f"admin API:   {over(doc['admin_tls'])}")
    return lines


def figures(item: dict) -> str:
    health = "healthy" if item.get("healthy") else "unhealthy"
    return f"{health:<9}  inflight {item.get('inflight', 0)}  connections {item.get('connections', 0)}"


def render_switch(verb: str) -> Callable[[dict, argparse.Namespace], str]:
    """render_switch: ``<verb> blue -> green (generation 3)`` for flip, rollback and promote.

    It tells what this call did (the answer's ``change``), not the status around it, which
    after a --wait may already show the auto-rollback.
    """
    def render(doc: dict, args: argparse.Namespace) -> str:
        if doc.get("changed") is False:
            return f"already live: {doc.get('live')} (generation {doc.get('generation')}, nothing changed)"
        change = doc.get("change") or {"from": doc.get("previous"), "to": doc.get("live"),
                                       "generation": doc.get("generation")}
        forced = ", forced" if getattr(args, "force", False) else ""
        if change["from"] == change["to"]:
            # a flip to the live environment during a canary: only the weights changed
            return f"canary stopped: all traffic to {change['to']} (generation {change['generation']}{forced})"
        return f"{verb} {change['from']} -> {change['to']} (generation {change['generation']}{forced})"
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
    "abort": lambda doc, args: (f"canary aborted: all traffic to {doc.get('live')} "
                                f"(generation {doc.get('generation')})" if doc.get("changed") is not False else
                                f"no canary running: all traffic to {doc.get('live')} "
                                f"(generation {doc.get('generation')}, nothing changed)"),
    "hold": render_hold,
    "resume": lambda doc, args: (f"resumed: released {doc.get('released', 0)} held requests"
                                 if doc.get("changed") is not False else "not held: nothing to resume"),
    "lock": lambda doc, args: ("switching locked" + (f" ({doc['lock_reason']})" if doc.get("lock_reason") else "")
                               + ": flip, rollback, canary and promote refused until unlock"),
    "unlock": lambda doc, args: ("switching unlocked" if doc.get("changed") is not False
                                 else "switching was not locked: nothing changed"),
    "reload": lambda doc, args: ("reloaded: " + ", ".join(doc.get("reloaded") or []) if doc.get("changed")
                                 else "the config file is unchanged: nothing reloaded"),
    "history": render_history,
    "servers": lambda doc, args: render_servers(doc, args),
}


def render_servers(doc: dict, args: argparse.Namespace) -> str:
    """render_servers: what `cutover servers` left: the environment's list and where it comes from."""
    env = (doc.get("environments") or {}).get(args.env) or {}
    listed = ", ".join(f"{s.get('address')} ({'healthy' if s.get('healthy') else 'unhealthy'})"
                       for s in env.get("servers", [])) or "-"
    source = env.get("servers_source", "?")
    if doc.get("changed") is False:
        return f"servers of {args.env} unchanged ({source}): {listed}"
    what = "back to the config's list" if args.reset else "registered"
    return f"servers of {args.env} {what}: {listed} (generation {doc.get('generation')} unchanged)"


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
    # After `hold`, --timeout is the hold's length (its old spelling, kept); the request timeout
    # is --request-timeout there, or --timeout before `hold`.
    p = command("hold", "make new requests wait until resume (or for DURATION)", timeout=False)
    p.add_argument("--for", dest="hold_for", metavar="DURATION", type=duration,
                   help='release by itself after this long: "250ms", "30s", "5m" or seconds '
                        "(default hold.max_wait)")
    p.add_argument("--timeout", dest="hold_timeout", metavar="DURATION", type=duration,
                   help="the old spelling of --for (after `hold` only); for the request timeout "
                        "write --request-timeout, or `cutover --timeout S hold`")
    reason(p)
    command("resume", "release every held request")
    p = command("lock", "refuse flip, rollback, canary and promote until unlock (abort still works)")
    reason(p)
    command("unlock", "allow switching again")
    p = command("reload", "read the config file again and apply what changed (serve's SIGHUP)")
    reason(p)
    p = command("canary", "send N percent of new requests to the idle environment (0 stops)")
    p.add_argument("weight", metavar="N", type=percent, help="percent of new requests, 0..100")
    reason(p), force(p)
    p = command("promote", "make the canary environment live")
    reason(p), force(p), wait(p)
    command("abort", "stop the canary: every request goes to live again")
    p = command("servers", "replace ENV's servers at runtime (a registration from CI), or --reset to the config's")
    p.add_argument("env", metavar="ENV", help="the environment")
    p.add_argument("addresses", metavar="ADDR", nargs="*", help='its new servers, "host:port", in order')
    p.add_argument("--reset", action="store_true", help="drop the registration: serve the config's list again")
    p.add_argument("--wait-healthy", metavar="DURATION", type=duration,
                   help="then wait up to DURATION until every server of the list is healthy (else exit 1)")
    reason(p)
    p = command("history", "list the switch history, oldest first")
    p.add_argument("--limit", metavar="N", type=positive_int, help="only the last N events")
    from .story import drill
    p = sub.add_parser("drill", help="flip to the other environment and back under probes; "
                       "report recovery times", description="rollback drill against a running router")
    add_client_options(p, "", keyed=False)
    drill.add_arguments(p)
    p.set_defaults(func=cmd_drill)


def version_line() -> str:
    """version_line: ``cutover <version> (data plane: <build>)``, for `cutover version` and --version."""
    import importlib.metadata

    import proxy
    try:
        version = importlib.metadata.version("cutover")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"cutover {version} (data plane: {proxy.build()})"


def cmd_version(args) -> int:
    """cmd_version: `cutover version`; the bench records it with its figures."""
    print(version_line())
    return 0


class UsageError(Exception):
    """UsageError: a command line the parser refused; main prints it as one line and exits 1.

    ``prog`` is the parser's ("cutover" or "cutover canary"), so the line names the command.
    """

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.message = message

    def __str__(self) -> str:
        command = self.prog.removeprefix("cutover").strip()
        where = f"{command}: " if command else ""
        return f"{where}{one_line(self.message)} (see {self.prog} --help)"


class Parser(argparse.ArgumentParser):
    """Parser: an ArgumentParser whose errors raise UsageError instead of printing usage and exiting 2.

    SPEC §2 gives exit 2 to refusals (gate, lock, conflict); a usage error is "any other
    failure": exit 1, one line. add_subparsers makes every subparser of this class too.
    --help and --version still print and exit 0 through argparse's own exit.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


class VersionAction(argparse.Action):
    """VersionAction: `cutover --version` prints what `cutover version` prints and exits 0."""

    def __init__(self, option_strings, dest, **kwargs) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="print the version and how the data plane is built, then exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_line())
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    """build_parser: the argument parser of every subcommand."""
    parser = Parser(prog="cutover", description="A blue-green traffic switch.")
    parser.add_argument("--version", action=VersionAction)
    add_client_options(parser, "pre_")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the router in the foreground")
    p.add_argument("--config", "-c", default="config/cutover.yaml", help="config file (YAML)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("version", help="print the version and how the data plane is built")
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("check-config", help="validate a config, run serve's start-up checks that need no "
                       "port (the state file too) and print the effective config")
    p.add_argument("file", help="config file (YAML)")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("demo", help="start blue, green and the router on loopback and switch under load")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep-running", action="store_true", help="leave everything up afterwards")
    p.add_argument("--duration", type=float, default=6.0, help="seconds of synthetic load")
    p.add_argument("--objective-ms", type=float, default=100.0,
                   help="rollback recovery-time objective of the drill (default 100)")
    p.set_defaults(func=cmd_demo)

    from .story import schema_check
    p = sub.add_parser("schema-check", help="flag migration statements that break the version still serving")
    schema_check.add_arguments(p)
    p.set_defaults(func=cmd_schema_check)

    add_admin_commands(sub)
    return parser


def parse(argv: list[str] | None) -> argparse.Namespace:
    """parse: the command line as a Namespace, or UsageError naming the command it concerns."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        raise UsageError(f"cutover {args.command}", f"unrecognized arguments: {' '.join(extra)}")
    if args.func not in (cmd_admin, cmd_drill):
        given = [f"--{name.replace('_', '-')}" for name in CLIENT_OPTIONS if hasattr(args, "pre_" + name)]
        if given:
            raise UsageError("cutover", f"{given[0]} applies to the admin commands, not to {args.command}")
    if args.command == "hold":
        if args.hold_for is not None and args.hold_timeout is not None:
            raise UsageError("cutover hold", "give the hold's length once: --for "
                             "(or its old spelling --timeout after hold)")
        args.hold_for = args.hold_for if args.hold_for is not None else args.hold_timeout
    if args.command == "servers":
        if args.reset and args.addresses:
            raise UsageError("cutover servers", "give either ADDR... or --reset, not both")
        if not args.reset and not args.addresses:
            raise UsageError("cutover servers", "give the new servers (ADDR...), or --reset for the config's list")
    return args


def main(argv: list[str] | None = None) -> int:
    """main: the console script's entry point; returns the exit status (SPEC §2)."""
    try:
        args = parse(argv)
    except UsageError as exc:
        print(f"cutover: {exc}", file=sys.stderr)
        return 1
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"cutover: {exc}", file=sys.stderr)
        return 1
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
