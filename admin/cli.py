"""The ``cutover`` command line: serve, check-config and demo.

Exit codes follow SPEC §2: 0 on success, 1 on any failure, with a one-line
error on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from proxy.config import ConfigError, effective_config, load_config
from proxy.server import new_event_loop

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
                         duration=args.duration))


def build_parser() -> argparse.ArgumentParser:
    """build_parser: the argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="cutover", description="A blue-green traffic switch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the router in the foreground")
    p.add_argument("--config", "-c", default="config/cutover.yaml", help="config file (YAML)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", help="validate a config and print the effective config")
    p.add_argument("file", help="config file (YAML)")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("demo", help="start blue, green and the router on loopback and switch under load")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep-running", action="store_true", help="leave everything up afterwards")
    p.add_argument("--duration", type=float, default=6.0, help="seconds of synthetic load")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """main: the console script's entry point."""
    args = build_parser().parse_args(argv)
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
