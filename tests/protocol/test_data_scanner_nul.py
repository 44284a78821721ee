"""The DATA scanner and NUL octets: counted always, dropped only when asked.

A NUL is line text for the scanner: ``CRLF NUL . CRLF`` never ends the data, whatever is
done with the NUL (a next hop that drops NULs would take it for the end: SMTP smuggling,
so the session refuses such a message by default).  Every input is fed whole, byte by
byte and split in two at every offset, and must give the same result each way.
"""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

import pytest


class NulScan(NamedTuple):
    decoded: bytes
    consumed: int
    done: bool
    nul: int
    bare: int


def scan(parser: ModuleType, chunks: list[bytes], strip: bool, normalize: bool) -> NulScan:
    scanner = parser.DataScanner(normalize, strip)
    decoded, consumed = [], 0
    for chunk in chunks:
        out, used = scanner.feed(chunk)
        assert type(out) is bytes
        decoded.append(out)
        consumed += used
    result = b"".join(decoded)
    assert scanner.size == len(result)
    bare = scanner.bare_cr + scanner.bare_lf
    return NulScan(result, consumed, scanner.done, scanner.nul, bare)


def scan_every_way(parser: ModuleType, data: bytes, strip: bool, normalize: bool) -> NulScan:
    whole = scan(parser, [data], strip, normalize)
    by_byte = [data[i : i + 1] for i in range(len(data))]
    assert scan(parser, by_byte, strip, normalize) == whole
    for cut in range(len(data) + 1):
        assert scan(parser, [data[:cut], data[cut:]], strip, normalize) == whole, cut
    return whole


# (id, input, decoded with NULs kept, decoded with NULs stripped, consumed, NULs)
TABLE = [
    ("none", b"ab\r\n.\r\n", b"ab\r\n", b"ab\r\n", 7, 0),
    ("mid-line", b"a\x00b\r\n.\r\n", b"a\x00b\r\n", b"ab\r\n", 8, 1),
    ("line-start", b"\x00a\r\n.\r\n", b"\x00a\r\n", b"a\r\n", 7, 1),
    ("only-nuls", b"\x00\x00\x00", b"\x00\x00\x00", b"", 3, 3),
    ("before-dot", b"a\r\n\x00.\r\n.\r\n", b"a\r\n\x00.\r\n", b"a\r\n.\r\n", 10, 1),
    ("after-dot", b"a\r\n.\x00\r\n.\r\n", b"a\r\n\x00\r\n", b"a\r\n\r\n", 10, 1),
    ("dot-nul-dot", b"\x00.\x00.\r\n.\r\n", b"\x00.\x00.\r\n", b"..\r\n", 9, 2),
    # bare CR, NUL, bare LF: no real line start, so ".\r\n" is text and the data goes on
    ("after-cr", b"a\r\x00\n.\r\n", b"a\r\x00\n.\r\n", b"a\r\n.\r\n", 7, 1),
    ("after-terminator", b"a\r\n.\r\n\x00", b"a\r\n", b"a\r\n", 6, 0),
    ("long", b"x" * 40 + b"\x00" + b"y" * 40 + b"\r\n.\r\n", None, None, 86, 1),
    # TAB and other octets below CR share the compiled scanner's first test with NUL
    ("low-octets", b"\t" * 20 + b"\x0c\x01\x00" + b"\t" * 20 + b"\r\n.\r\n", None, None, 48, 1),
]


@pytest.mark.parametrize("strip", [False, True], ids=["keep", "strip"])
@pytest.mark.parametrize(
    ("data", "kept", "stripped", "consumed", "nul"),
    [pytest.param(*case[1:], id=case[0]) for case in TABLE],
)
def test_nul_table(
    parser: ModuleType,
    strip: bool,
    data: bytes,
    kept: bytes | None,
    stripped: bytes | None,
    consumed: int,
    nul: int,
) -> None:
    result = scan_every_way(parser, data, strip, normalize=False)
    assert result.nul == nul
    assert result.consumed == consumed
    expected = stripped if strip else kept
    if expected is None:  # the long case: the same as the input without its end
        body = data[: -len(b".\r\n")]
        expected = body.replace(b"\x00", b"") if strip else body
    assert result.decoded == expected


@pytest.mark.parametrize("strip", [False, True])
def test_nul_never_ends_the_data(parser: ModuleType, strip: bool) -> None:
    """The probe: CRLF NUL . CRLF then a second transaction, then the real end."""
    data = b"hello\r\n\x00.\r\nMAIL FROM:<admin@bank.test>\r\nRCPT TO:<v@x>\r\nDATA\r\nevil\r\n"
    result = scan_every_way(parser, data + b".\r\nQUIT\r\n", strip, normalize=False)
    assert result.done and result.consumed == len(data) + 3
    assert b"MAIL FROM:<admin@bank.test>\r\n" in result.decoded
    assert result.nul == 1


def test_nul_with_normalize(parser: ModuleType) -> None:
    result = scan_every_way(parser, b"a\x00\nb\r\x00c\r\n.\r\n", strip=True, normalize=True)
    assert (result.decoded, result.nul, result.bare) == (b"a\r\nb\r\nc\r\n", 2, 2)


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_nul_in_other_buffers(parser: ModuleType, kind: type) -> None:
    data = b"\x00a\x00\r\n.\r\nNEXT"
    for strip in (False, True):
        scanner = parser.DataScanner(False, strip)
        expected = scan(parser, [data], strip, normalize=False)
        assert (*scanner.feed(kind(data)), scanner.nul) == (*expected[:2], 2)


def test_nul_attributes(parser: ModuleType) -> None:
    assert parser.DataScanner().strip_nul is False
    assert parser.DataScanner(False, True).strip_nul is True
    scanner = parser.DataScanner()
    assert scanner.nul == 0
    for name in ("nul", "strip_nul"):
        with pytest.raises(AttributeError):
            setattr(scanner, name, 1)
