"""``mta queue list|show|flush|hold|release|delete|requeue`` and ``mta send``.

The changing commands follow postsuper: several IDs, ``-`` for IDs on stdin, ``--all`` or
a selection (queue_select.py); each change is logged (``QID: placed on hold by root``)
through the relay's logging setup, so it lands where the relay's lines land; the exit
status is 1 when any message could not be changed.  Output to a closed pipe
(``mta queue list --json | head -1``) ends quietly (:func:`pipe_safe`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import smtplib
import sys
import time
from collections.abc import Callable

from mta.config import Config, parse_hostport
from mta.queue.admin import AdminError, QueueAdmin
from mta.queue_select import add_selection, has_selection, matches, read_ids

__all__ = ["add_commands", "pipe_safe"]

log = logging.getLogger("mta.postsuper")

# What each change says in the log (Postfix's postsuper words) and the states it moves
# messages from when they are chosen by --all or a selection rather than by ID.
CHANGES = {
    "hold": ("placed on hold", ("incoming", "deferred")),
    "release": ("released from hold", ("hold",)),
    "delete": ("removed", ("incoming", "deferred", "hold", "corrupt")),
    "requeue": ("requeued", ("deferred", "hold", "corrupt")),
}


def pipe_safe(run: Callable[[], int]) -> int:
    """Run ``run``; if the reader of stdout went away, exit quietly (the Python
    documentation's recipe for SIGPIPE: point stdout at devnull so that the flush at
    exit does not raise again).  The status is 141 (128 + SIGPIPE), as a shell's is."""
    try:
        status = run()
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return status


def add_commands(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:  # type: ignore[type-arg]
    queue = sub.add_parser("queue", help="inspect and change the queue")
    qsub = queue.add_subparsers(required=True, metavar="ACTION")
    listing = qsub.add_parser("list", help="every queued message (or a selection)")
    listing.add_argument("--json", action="store_true", help="one JSON array")
    add_selection(listing)
    listing.set_defaults(handler=_list)
    show = qsub.add_parser("show", help="envelope and headers of one message")
    show.add_argument("queue_id")
    show.add_argument("--json", action="store_true")
    show.add_argument("--body", action="store_true", help="the whole message, body too")
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
        action.add_argument("queue_ids", nargs="*", metavar="ID", help="'-': IDs from stdin")
        action.add_argument("--all", action="store_true")
        add_selection(action)
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
    entries = [e for e in admin.entries() if matches(e, args)]
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
    if args.body:
        sys.stdout.flush()
        sys.stdout.buffer.write(message.read_message().replace(b"\r\n", b"\n"))
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
    from mta.logs import setup_logging

    setup_logging(config.log.level, config.log.format)
    log.info("deferred mail flushed by %s", _operator())
    return 0


def _change(config: Config, args: argparse.Namespace) -> int:
    """hold/release/delete/requeue: 1 if any message could not be changed, 2 (usage) if
    nothing was named."""
    if not (args.queue_ids or args.all or has_selection(args)):
        print(f"mta queue {args.action}: name IDs, '-', --all or a selection", file=sys.stderr)
        return 2
    admin = _admin(config)
    if admin is None:
        return 1
    from mta.logs import setup_logging

    setup_logging(config.log.level, config.log.format)
    ids = _targets(admin, args)
    done = CHANGES[args.action][0]
    action: Callable[[str], None] = getattr(admin, args.action)
    user = _operator()
    failures = 0
    for queue_id in ids:
        try:
            action(queue_id)
        except AdminError as exc:
            print(f"mta: {exc}", file=sys.stderr)
            failures += 1
            continue
        log.info("%s: %s by %s", queue_id, done, user)
    if args.all or has_selection(args):
        print(f"{args.action}: {len(ids)} messages considered, {failures} failed")
    return 1 if failures else 0


def _targets(admin: QueueAdmin, args: argparse.Namespace) -> list[str]:
    ids = read_ids(args.queue_ids)
    if not (args.all or has_selection(args)):
        return ids
    _, sources = CHANGES[args.action]
    chosen = [
        e.queue_id
        for e in admin.entries()
        if (e.state in sources or args.state) and matches(e, args)
    ]
    if ids:  # IDs and a selection: the IDs that match it
        return [i for i in ids if i in set(chosen)]
    return chosen


def _operator() -> str:
    """Who made the change: the Unix user (and the one behind sudo)."""
    import pwd

    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = f"uid {os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    return f"{name} (sudo by {sudo})" if sudo and sudo != name else name


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
