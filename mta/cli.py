"""The ``mta`` command line: serve, check-config, queue ..., send.

Exit codes: 0 success, 1 a problem the user can act on (the message says which), 2 usage.
"""

from __future__ import annotations

import argparse
import sys

from mta.config import Config, ConfigError, load_config
from mta.logs import setup_logging

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"mta: configuration error: {exc}", file=sys.stderr)
        return 1
    handler = args.handler
    return int(handler(config, args) or 0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mta", description="mail transfer agent")
    p.add_argument("--config", "-c", metavar="FILE", help="TOML configuration file")
    sub = p.add_subparsers(required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the relay (master, smtpd and delivery)")
    serve.set_defaults(handler=_serve)
    check = sub.add_parser("check-config", help="print the effective settings or the errors")
    check.set_defaults(handler=_check_config)
    from mta.queue_cli import add_commands

    for command in (serve, check, *add_commands(sub)):
        command.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS)
    return p


def _serve(config: Config, args: argparse.Namespace) -> int:
    setup_logging(config.log.level, config.log.format)
    from mta.master import metrics_dir

    metrics_dir.prepare()  # before anything imports prometheus_client
    from mta.master.arbiter import run_master

    return run_master(config, config_path=args.config)


def _check_config(config: Config, args: argparse.Namespace) -> int:
    import msgspec

    from mta.server.tls import check_certificates

    try:
        check_certificates(config)
    except ConfigError as exc:
        print(f"mta: configuration error: {exc}", file=sys.stderr)
        return 1

    # The listeners as served: smtp.listen and [listeners] with every default filled in.
    settings = msgspec.to_builtins(config)
    settings["listeners"] = {
        listener.name: msgspec.to_builtins(listener) for listener in config.resolved_listeners()
    }
    print(msgspec.json.format(msgspec.json.encode(settings), indent=2).decode())
    return 0
