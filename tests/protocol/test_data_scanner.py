"""The DATA scanner: the terminator, dot-unstuffing and bare line ends (RFC 5321 §4.1.1.4, §4.5.2).

Every table input is fed whole, byte by byte and in every split in two, and must give the
same result each time; the smuggling vectors check that only ``CRLF.CRLF`` ends a message.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import NamedTuple

import pytest


class Scan(NamedTuple):
    decoded: bytes
    consumed: int
    done: bool
    size: int
    bare_cr: int
    bare_lf: int


def scan(parser: ModuleType, chunks: Iterable[bytes], normalize: bool) -> Scan:
    """Feed ``chunks`` in order (also after the end, as a server would) and sum up."""
    scanner = parser.DataScanner(normalize)
    decoded = []
    consumed = 0
    for chunk in chunks:
        out, used = scanner.feed(chunk)
        assert type(out) is bytes
        assert 0 <= used <= len(chunk)
        assert used == len(chunk) or scanner.done
        decoded.append(out)
        consumed += used
    result = b"".join(decoded)
    assert scanner.size == len(result)
    return Scan(result, consumed, scanner.done, scanner.size, scanner.bare_cr, scanner.bare_lf)


def scan_every_way(parser: ModuleType, data: bytes, normalize: bool) -> Scan:
    """Scan ``data`` whole, byte by byte and split in two at every offset; all must agree."""
    whole = scan(parser, [data], normalize)
    assert scan(parser, [data[i : i + 1] for i in range(len(data))], normalize) == whole
    for cut in range(len(data) + 1):
        assert scan(parser, [data[:cut], data[cut:]], normalize) == whole, cut
    return whole


# (id, input, decoded when passed through, decoded when normalized, consumed, bare CR, bare LF)
TABLE = [
    ("plain", b"Subject: x\r\n\r\nbody\r\n.\r\n", b"Subject: x\r\n\r\nbody\r\n", None, 23, 0, 0),
    ("unstuff", b"..leading\r\n.\r\n", b".leading\r\n", None, 14, 0, 0),
    ("unstuff-dot-line", b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n", None, 10, 0, 0),
    ("unstuff-once", b"a\r\n...b\r\n.\r\n", b"a\r\n..b\r\n", None, 12, 0, 0),
    ("dot-then-space", b". \r\n.\r\n", b" \r\n", None, 7, 0, 0),
    ("dot-inside-line", b"a.b\r\n.a\r\n.\r\n", b"a.b\r\na\r\n", None, 12, 0, 0),
    ("empty-message", b".\r\n", b"", None, 3, 0, 0),
    ("terminator-then-command", b".\r\nQUIT\r\n", b"", None, 3, 0, 0),
    ("bytes-after-terminator", b"x\r\n.\r\nMAIL FROM:<a@b>\r\n", b"x\r\n", None, 6, 0, 0),
    ("pipelined-second-message", b"x\r\n.\r\ny\r\n.\r\n", b"x\r\n", None, 6, 0, 0),
    ("empty-lines", b"\r\n\r\n.\r\n", b"\r\n\r\n", None, 7, 0, 0),
    ("no-terminator", b"line\r\n", b"line\r\n", None, 6, 0, 0),
    ("partial-terminator", b"line\r\n.\r", b"line\r\n", None, 8, 0, 0),
    ("trailing-cr-withheld", b"line\r", b"line", None, 5, 0, 0),
    ("long-line", b"x" * 5000 + b"\r\n.\r\n", b"x" * 5000 + b"\r\n", None, 5005, 0, 0),
    (
        "8bit",
        bytes(range(0x80, 0x100)) + b"\r\n.\r\n",
        bytes(range(0x80, 0x100)) + b"\r\n",
        None,
        133,
        0,
        0,
    ),
    ("nul", b"a\x00b\r\n\x00.\r\n.\r\n", b"a\x00b\r\n\x00.\r\n", None, 12, 0, 0),
    ("bare-lf", b"a\nb\r\n.\r\n", b"a\nb\r\n", b"a\r\nb\r\n", 8, 0, 1),
    ("bare-cr", b"a\rb\r\n.\r\n", b"a\rb\r\n", b"a\r\nb\r\n", 8, 1, 0),
    ("cr-cr-lf", b"a\r\r\n.\r\n", b"a\r\r\n", b"a\r\n\r\n", 7, 1, 0),
    ("lf-cr", b"a\n\rb\r\n.\r\n", b"a\n\rb\r\n", b"a\r\n\r\nb\r\n", 9, 1, 1),
    ("dot-bare-cr", b".\rx\r\n.\r\n", b"\rx\r\n", b"\r\nx\r\n", 8, 1, 0),
    ("dot-bare-lf", b".\nx\r\n.\r\n", b"\nx\r\n", b"\r\nx\r\n", 8, 0, 1),
    ("dot-cr-cr-lf", b".\r\r\n.\r\n", b"\r\r\n", b"\r\n\r\n", 7, 1, 0),
    (
        "many-bare",  # the dot follows a bare LF: not a line start, not the end
        b"\r\r\r\n\n\n.\r\n\r\n.\r\n",
        b"\r\r\r\n\n\n.\r\n\r\n",
        b"\r\n\r\n\r\n\r\n\r\n.\r\n\r\n",
        14,
        2,
        2,
    ),
]


@pytest.mark.parametrize("normalize", [False, True], ids=["pass", "normalize"])
@pytest.mark.parametrize(
    ("data", "plain", "normalized", "consumed", "bare_cr", "bare_lf"),
    [pytest.param(*case[1:], id=case[0]) for case in TABLE],
)
def test_table(
    parser: ModuleType,
    normalize: bool,
    data: bytes,
    plain: bytes,
    normalized: bytes | None,
    consumed: int,
    bare_cr: int,
    bare_lf: int,
) -> None:
    decoded = normalized if normalize and normalized is not None else plain
    done = data.startswith(b".\r\n") or b"\r\n.\r\n" in data
    expected = Scan(decoded, consumed, done, len(decoded), bare_cr, bare_lf)
    assert scan_every_way(parser, data, normalize) == expected


def test_feed_after_done_uses_nothing(parser: ModuleType) -> None:
    scanner = parser.DataScanner()
    assert scanner.feed(b"a\r\n.\r\nQUIT\r\n") == (b"a\r\n", 6)
    assert scanner.feed(b"more\r\n.\r\n") == (b"", 0)
    assert (scanner.done, scanner.size) == (True, 3)


def test_empty_chunks(parser: ModuleType) -> None:
    scanner = parser.DataScanner()
    assert scanner.feed(b"") == (b"", 0)
    assert scanner.feed(b"a\r") == (b"a", 2)
    assert scanner.feed(b"") == (b"", 0)
    assert scanner.feed(b"\n.\r\n") == (b"\r\n", 4)
    assert scanner.done


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_buffer_types(parser: ModuleType, kind: type) -> None:
    """The server feeds its bytearray; a memoryview must work without copying first."""
    data = b"..a\rb\nc\r\n.\r\nNEXT"
    for normalize in (False, True):
        scanner = parser.DataScanner(normalize)
        out, used = scanner.feed(kind(data))
        assert type(out) is bytes
        assert (out, used) == scan(parser, [data], normalize)[:2]


def test_non_contiguous_memoryview(parser: ModuleType) -> None:
    data = memoryview(b"aXbX\rX\nX.X\rX\nX")[::2]  # b"ab\r\n.\r\n"
    assert parser.DataScanner().feed(data) == (b"ab\r\n", 7)


def test_not_a_buffer(parser: ModuleType) -> None:
    with pytest.raises(TypeError):
        parser.DataScanner().feed("text\r\n.\r\n")


def test_attributes_are_read_only(parser: ModuleType) -> None:
    scanner = parser.DataScanner(1)
    assert scanner.normalize is True
    assert (scanner.done, scanner.size, scanner.bare_cr, scanner.bare_lf) == (False, 0, 0, 0)
    for name in ("normalize", "done", "size", "bare_cr", "bare_lf"):
        with pytest.raises(AttributeError):
            setattr(scanner, name, 1)


def test_default_passes_bare_line_ends(parser: ModuleType) -> None:
    assert parser.DataScanner().normalize is False


# ----- SMTP smuggling ------------------------------------------------------------------
# A "message" that hides a second transaction behind a line end that some other MTA takes
# for the end of the data.  Here it must stay text inside the first message.

FIRST = b"From: a@example.com\r\nSubject: first\r\n\r\nhello"
SMUGGLED = (
    b"MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n"
    b"From: ceo@example.net\r\nSubject: smuggled\r\n\r\nevil"
)
END = b"\r\n.\r\n"
AFTER = b"QUIT\r\n"

# (vector, whether it relies on bare line ends)
VECTORS = [
    (b"\n.\n", True),
    (b"\r.\r", True),
    (b"\r.\n", True),
    (b"\n.\r", True),
    (b"\n.\r\n", True),
    (b"\r.\r\n", True),
    (b"\r\n.\r", True),
    (b"\r\n.\n", True),
    (b"\r\n.\r\r\n", True),
    (b"\r\r\n.\r\r\n", True),
    (b"\n\n.\r\n", True),
    (b"\r\n\n.\r\n", True),
    (b"\r\n\r.\r\n", True),
    (b"\r\n.\n\r\n", True),
    (b"\n.\n\r\n", True),
    (b"\r\n\x00.\r\n", False),
    (b"\r\n.\x00\r\n", False),
    (b"\r\n .\r\n", False),
]


def smuggling_message(vector: bytes, at_start: bool = False) -> bytes:
    head = b"" if at_start else FIRST
    return head + vector + SMUGGLED + END + AFTER


@pytest.mark.parametrize("normalize", [False, True], ids=["pass", "normalize"])
@pytest.mark.parametrize(("vector", "bare"), VECTORS, ids=[repr(v) for v, _ in VECTORS])
def test_smuggling(parser: ModuleType, normalize: bool, vector: bytes, bare: bool) -> None:
    data = smuggling_message(vector)
    assert_one_message(parser, data, normalize, bare)


@pytest.mark.parametrize("normalize", [False, True], ids=["pass", "normalize"])
@pytest.mark.parametrize("vector", [b".\n", b".\r", b".\r\r\n", b"\n.\r\n", b"\r.\r\n"])
def test_smuggling_at_start(parser: ModuleType, normalize: bool, vector: bytes) -> None:
    data = smuggling_message(vector, at_start=True)
    assert_one_message(parser, data, normalize, bare=True)


def assert_one_message(parser: ModuleType, data: bytes, normalize: bool, bare: bool) -> None:
    real_end = len(data) - len(AFTER)
    result = scan_every_way(parser, data, normalize)
    assert result.done
    assert result.consumed == real_end  # nothing ended before the real CRLF.CRLF
    for line in SMUGGLED.split(b"\r\n"):
        assert line in result.decoded  # the smuggled transaction is text of this message
    assert result.decoded.endswith(b"evil\r\n")
    assert (result.bare_cr + result.bare_lf > 0) is bare
    # Byte by byte, "done" turns true exactly with the last octet of the real terminator.
    scanner = parser.DataScanner(normalize)
    for i in range(len(data)):
        scanner.feed(data[i : i + 1])
        assert scanner.done is (i + 1 >= real_end), i
