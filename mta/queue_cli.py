"""``mta queue list|show|flush|hold|release|delete|requeue`` and ``mta send``."""

from __future__ import annotations

import argparse
import json
import smtplib
import sys
import time
from collections.abc import Callable

from mta.config import Config, parse_hostport
from mta.queue.admin import AdminError, QueueAdmin

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:  # type: ignore[type-arg]
    queue = sub.add_parser("queue", help="inspect and change the queue")
    qsub = queue.add_subparsers(required=True, metavar="ACTION")
    listing = qsub.add_parser("list", help="every queued message")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    listing.set_defaults(handler=_list)
    show = qsub.add_parser("show", help="envelope and headers of one message")
    show.add_argument("queue_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_show)
    flush = qsub.add_parser("flush", help="retry deferred messages now")
    flush.set_defaults(handler=_flush)
    actions = [flush]
    for name, what in (
        ("hold", "keep messages from delivery"),
        ("release", "let held messages go"),
        ("delete", "remove messages for good"),
        ("requeue", "move messages back to incoming/ to try them now"),
    ):
        action = qsub.add_parser(name, help=what)
        target = action.add_mutually_exclusive_group(required=True)
        target.add_argument("queue_id", nargs="?")
        target.add_argument("--all", action="store_true")
        action.set_defaults(handler=_change, action=name)
        actions.append(action)
    send = sub.add_parser("send", help="submit a test message to the running relay")
    send.add_argument("--from", dest="sender", default="")
    send.add_argument("--to", dest="recipients", action="append", required=True)
    send.add_argument("--subject", default="mta test message")
    send.add_argument("--body", default="This is a test message sent by 'mta send'.")
    send.set_defaults(handler=_send)
    return [queue, listing, show, *actions, send]  # each takes --config after its name


def _admin(config: Config) -> QueueAdmin | None:
    """The queue of ``config``, or None (the reason printed) if there is none."""
    try:
        return QueueAdmin(config.queue.path)
    except AdminError as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return None


def _list(config: Config, args: argparse.Namespace) -> int:
    admin = _admin(config)
    if admin is None:
        return 1
    entries = list(admin.entries())
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=1))
        return 0
    if not entries:
        print("queue is empty")
        return 0
    print(f"{'ID':<20} {'STATE':<9} {'AGE':>8} {'SIZE':>9}  SENDER -> RECIPIENTS")
    for e in entries:
        print(
            f"{e.queue_id:<20} {e.state:<9} {_age(e.age):>8} {e.size:>9}  "
            f"<{e.sender}> -> {', '.join(e.recipients)}"
        )
        if e.next_try is not None:
            print(f"{'':<20} next try in {_age(max(0.0, e.next_try - time.time()))}")
        if e.last_error:
            print(f"{'':<20} ({e.last_error})")
    return 0


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _show(config: Config, args: argparse.Namespace) -> int:
    admin = _admin(config)
    if admin is None:
        return 1
    try:
        message, state = admin.show(args.queue_id)
    except AdminError as exc:
        print(f"mta: {exc}", file=sys.stderr)
        return 1
    import msgspec

    envelope = msgspec.to_builtins(message.envelope)
    if args.json:
        headers = message.read_headers().decode("utf-8", "replace")
        print(json.dumps({"state": state, "envelope": envelope, "headers": headers}, indent=1))
        return 0
    print(f"state: {state}")
    for key, value in envelope.items():
        print(f"{key}: {value}")
    print()
    sys.stdout.write(message.read_headers().decode("utf-8", "replace").replace("\r\n", "\n"))
    return 0


def _flush(config: Config, args: argparse.Namespace) -> int:
    admin = _admin(config)
    if admin is None:
        return 1
    admin.flush()
    return 0


def _change(config: Config, args: argparse.Namespace) -> int:
    admin = _admin(config)
    if admin is None:
        return 1
    action: Callable[[str], None] = getattr(admin, args.action)
    ids = admin.all_ids() if args.all else [args.queue_id]
    failures = 0
    for queue_id in ids:
        try:
            action(queue_id)
        except AdminError as exc:
            if not args.all:
                print(f"mta: {exc}", file=sys.stderr)
                failures += 1
    if args.all:
        print(f"{args.action}: {len(ids)} messages considered")
    return 1 if failures else 0


def _send(config: Config, args: argparse.Namespace) -> int:
    host, port = parse_hostport(config.listen_addresses()[0])
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    body = (
        f"From: <{args.sender}>\r\nTo: {', '.join(f'<{r}>' for r in args.recipients)}\r\n"
        f"Subject: {args.subject}\r\n\r\n{args.body}\r\n"
    )
    try:
        with smtplib.SMTP(host, port, timeout=30) as client:
            client.sendmail(args.sender, args.recipients, body.encode())
    except (OSError, smtplib.SMTPException) as exc:
        print(f"mta: send failed: {exc}", file=sys.stderr)
        return 1
    return 0
