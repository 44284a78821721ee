"""The Message-ID of a message being received, for the ``QID: message-id=<...>`` log line
that Postfix's cleanup writes and log readers (pflogsumm -e, support staff) follow.

Cheap and bounded: only the first :data:`HEADER_LIMIT` octets of the header section are
kept, and nothing at all once the blank line that ends the header (RFC 5322 §2.1) or the
limit has been seen; a message without the field, or with it past the limit, logs
``message-id=<>`` as Postfix does for a message without one.  The value is client text:
:func:`mta.protocol.printable.for_log` makes it safe before it is logged.
"""

from __future__ import annotations

import re

__all__ = ["HEADER_LIMIT", "MessageIdScanner"]

HEADER_LIMIT = 16 * 1024  # octets of the header section looked at (a few long Received:)

# RFC 5322 §3.6.4: "Message-ID:" msg-id; folded lines (§2.2.3) continue with whitespace.
_FIELD = re.compile(rb"(?im)^message-id[ \t]*:((?:[^\r\n]*)(?:\r?\n[ \t][^\r\n]*)*)")
_ANGLE = re.compile(rb"<([^<>\s]*)>")


class MessageIdScanner:
    """Fed the message as it arrives; :meth:`message_id` is the id without its brackets."""

    __slots__ = ("_done", "_head")

    def __init__(self) -> None:
        self._head = bytearray()
        self._done = False

    def feed(self, data: bytes) -> None:
        if self._done:
            return
        self._head += data[: HEADER_LIMIT - len(self._head)]
        end = self._head.find(b"\n\r\n")
        if end < 0:
            end = self._head.find(b"\n\n")
        if end >= 0:
            del self._head[end + 1 :]
            self._done = True
        elif len(self._head) >= HEADER_LIMIT:
            self._done = True

    def message_id(self) -> str:
        field = _FIELD.search(self._head)
        if field is None:
            return ""
        value = field.group(1)
        angle = _ANGLE.search(value)
        text = angle.group(1) if angle else value.strip()
        return text.decode("utf-8", "replace")[:998]  # RFC 5322 §2.1.1 line limit
