"""BDAT's bookkeeping (RFC 3030): the command's argument, and the chunk being read.

The session (session.py) consumes every chunk's octets before it answers the chunk,
whatever the answer, so a refused chunk never leaves octets to be read as commands; a
:class:`Chunk` says how many are still to come and what becomes of them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BDAT_COUNT_DIGITS", "Chunk", "parse_bdat"]

BDAT_COUNT_DIGITS = 18  # octets in a chunk: more than any size limit, fits in 64 bits


@dataclass(slots=True)
class Chunk:
    """The BDAT chunk being read: octets still to come, whether it is the last one, and
    whether its octets are kept (part of the message) or consumed and dropped, to be
    answered with ``refusal`` once they are in."""

    size: int
    last: bool
    keep: bool = True
    refusal: bytes | None = None
    remaining: int = -1  # octets still to come (the size, at first)

    def __post_init__(self) -> None:
        if self.remaining < 0:
            self.remaining = self.size


def parse_bdat(argument: bytes) -> tuple[int, bool] | None:
    """``count [LAST]`` (RFC 3030 §3: ``bdat-cmd ::= "BDAT" SP chunk-size [ SP end-marker ]``)
    as (count, last); None when it is not that."""
    words = argument.split(b" ")
    if not 1 <= len(words) <= 2:
        return None
    count = words[0]
    if not count.isdigit() or len(count) > BDAT_COUNT_DIGITS:
        return None
    if len(words) == 2 and words[1].upper() != b"LAST":
        return None
    return int(count), len(words) == 2
