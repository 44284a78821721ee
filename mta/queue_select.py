"""Which queued messages an operator command means (postsuper's habits).

Explicit queue IDs (``-`` reads more from stdin, one or more per line, a trailing ``*``
or ``!`` from mailq's listing dropped), ``--all``, or a selection: ``--state``,
``--sender`` (``<>`` for the null sender), ``--recipient-domain``, ``--older-than`` and
``--younger-than`` (durations such as ``90s``, ``15m``, ``2h``, ``3d``, ``1w``).  Given
together, IDs and a selection mean the IDs that match it.  A bad duration or state is a
usage error (argparse's exit 2).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable

from mta.queue.admin import LISTED_STATES, QueueEntry

__all__ = ["add_selection", "has_selection", "matches", "parse_duration", "read_ids"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")


def parse_duration(text: str) -> float:
    """Seconds in ``2h``, ``90s``, ``1.5d`` or ``300`` (seconds)."""
    match = _DURATION.match(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration such as 90s, 15m, 2h, 3d, 1w")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def add_selection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("selection")
    group.add_argument("--state", action="append", choices=LISTED_STATES)
    group.add_argument("--sender", metavar="ADDRESS", help="exact envelope sender; <> = null")
    group.add_argument("--recipient-domain", metavar="DOMAIN")
    group.add_argument("--older-than", metavar="AGE", type=parse_duration)
    group.add_argument("--younger-than", metavar="AGE", type=parse_duration)


def has_selection(args: argparse.Namespace) -> bool:
    return any(
        getattr(args, name, None) is not None
        for name in ("state", "sender", "recipient_domain", "older_than", "younger_than")
    )


def matches(entry: QueueEntry, args: argparse.Namespace) -> bool:
    if args.state and entry.state not in args.state:
        return False
    if args.sender is not None:
        wanted = args.sender.strip().removeprefix("<").removesuffix(">")
        if entry.sender.lower() != wanted.lower():
            return False
    if args.recipient_domain is not None:
        domain = args.recipient_domain.lower().lstrip("@").rstrip(".")
        if not any(r.rpartition("@")[2].lower() == domain for r in entry.recipients):
            return False
    if args.older_than is not None and entry.age < args.older_than:
        return False
    return args.younger_than is None or entry.age <= args.younger_than


def read_ids(given: Iterable[str]) -> list[str]:
    """The IDs on the command line, ``-`` replaced by those on stdin; in order, once each."""
    ids: list[str] = []
    for word in given:
        words = sys.stdin.read().split() if word == "-" else [word]
        ids.extend(w.rstrip("*!") for w in words)
    return list(dict.fromkeys(i for i in ids if i))
