"""The DATA payload of an outbound message: dot-stuffing (RFC 5321 §4.5.2) and the end line.

A client sends a message after ``354`` as lines; any line that begins with ``.`` gets one
more ``.`` in front (the server takes it off again), and the message ends with a line
holding ``.`` alone.  A message that does not end in CRLF is given one first, so that the
``.`` is a line of its own.  Only CRLF ends a line here, as it does for the server's end of
data (DESIGN.md §2): a ``.`` after a bare LF is not at a line start and is sent as it is.

Two ways to make the same bytes:

* :func:`dot_stuff` turns a whole message held in memory into its payload (one call; the
  fast path for the small messages that make most mail).
* :class:`DotStuffer` does it a chunk at a time for a message sent from disk, so that no
  more than one chunk is held.  Its invariant: for every way of cutting a message into
  chunks, ``b"".join(feed(c) for c in chunks) + end()`` equals ``dot_stuff(message)``.  The
  only state it carries across a cut is where the previous chunk left off: at a line start
  (nothing sent yet, or CRLF last), after a CR (a CRLF may straddle the cut), or elsewhere.

Sans-I/O: bytes in, bytes out, nothing else.
"""

from __future__ import annotations

__all__ = ["DotStuffer", "dot_stuff"]

END_LINE = b".\r\n"


def dot_stuff(message: bytes) -> bytes:
    """The DATA payload for ``message``: dot-stuffed (RFC 5321 §4.5.2), CRLF-terminated,
    followed by the ``.`` line."""
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + END_LINE


# Where the bytes fed so far left off.
_LINE_START = 0  # nothing fed yet, or the last two octets were CRLF
_AFTER_CR = 1  # the last octet was CR: an LF first in the next chunk completes a CRLF
_MID_LINE = 2  # anything else

_DOT = 0x2E


class DotStuffer:
    """Dot-stuffs one message fed in chunks; see the module docstring for its invariant."""

    __slots__ = ("_where",)

    def __init__(self) -> None:
        self._where = _LINE_START

    def feed(self, chunk: bytes) -> bytes:
        """The payload for the next ``chunk`` of the message (possibly longer by the dots
        added; empty for an empty chunk)."""
        if not chunk:
            return b""
        stuffed = chunk.replace(b"\r\n.", b"\r\n..")  # the line starts inside the chunk
        where = self._where
        if where == _LINE_START and chunk[0] == _DOT:
            stuffed = b"." + stuffed
        elif where == _AFTER_CR and chunk[:2] == b"\n.":  # a CRLF cut in two, then a dot
            stuffed = b"\n." + stuffed[1:]
        self._where = self._left_off(chunk, where)
        return stuffed

    def end(self) -> bytes:
        """What ends the payload: CRLF unless the message ended with one (or was empty),
        then the ``.`` line.  The stuffer is then back at the start of a new message."""
        where, self._where = self._where, _LINE_START
        return END_LINE if where == _LINE_START else b"\r\n" + END_LINE

    @staticmethod
    def _left_off(chunk: bytes, before: int) -> int:
        if chunk.endswith(b"\r\n") or (chunk == b"\n" and before == _AFTER_CR):
            return _LINE_START
        if chunk.endswith(b"\r"):
            return _AFTER_CR
        return _MID_LINE
