"""``mailq`` output in Postfix's format (postqueue -p), for the scripts that read it.

One block per message: the queue ID followed by ``*`` when it is being delivered (active)
or ``!`` when it is on hold, its size, arrival time and sender (``MAILER-DAEMON`` for the
null sender); then the last delivery error in parentheses, if any, and one line per
recipient still to be delivered; a blank line.  Then ``-- N Kbytes in M Requests.``, or
``Mail queue is empty`` alone.  Queue IDs are longer than Postfix's short ones, so the ID
column is as wide as the longest ID, like Postfix's long queue IDs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TextIO

from mta.queue.admin import QueueEntry

__all__ = ["format_mailq", "print_mailq"]

HEADER = "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
MARKS = {"active": "*", "hold": "!"}  # Postfix's status characters
REASON_WIDTH = 78  # Postfix wraps the reason; we cut it at the terminal's usual width


def format_mailq(entries: Iterable[QueueEntry], now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    found = list(entries)
    if not found:
        return ["Mail queue is empty"]
    width = max(10, *(len(e.queue_id) for e in found))
    indent = " " * (width + 1 + 1 + 8 + 1 + 19 + 2)  # under the sender column
    lines = [HEADER]
    for entry in found:
        mark = MARKS.get(entry.state, " ")
        arrival = time.strftime("%a %b %e %H:%M:%S", time.localtime(now - entry.age))
        sender = entry.sender or "MAILER-DAEMON"
        lines.append(f"{entry.queue_id:<{width}}{mark} {entry.size:>8} {arrival}  {sender}")
        if entry.last_error:
            lines.append(f"{indent}({_one_line(entry.last_error)})")
        lines.extend(f"{indent}{recipient}" for recipient in entry.recipients)
        lines.append("")
    kbytes = (sum(e.size for e in found) + 1023) // 1024
    plural = "s" if len(found) != 1 else ""
    lines.append(f"-- {kbytes} Kbytes in {len(found)} Request{plural}.")
    return lines


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= REASON_WIDTH else flat[: REASON_WIDTH - 3] + "..."


def print_mailq(entries: Iterable[QueueEntry], out: TextIO) -> None:
    for line in format_mailq(entries):
        out.write(line + "\n")
    out.flush()
