"""Property tests: the twins agree on random input, and the DATA scanner on every split.

The inputs are random but biased towards what matters: CR, LF, NUL and dots for the scanner;
brackets, quotes, ``@`` and parameter syntax for the command parser.  The scanner is also
checked against a model written with regular expressions, independent of both twins.
With ``MTA_NO_EXTENSIONS=1`` only the pure-Python twin takes part (split against whole).
"""

from __future__ import annotations

import itertools
import re
from types import ModuleType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta.protocol.errors import CommandSyntaxError

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# ----- DATA ----------------------------------------------------------------------------

DATA_TOKENS = [b"\r", b"\n", b".", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"a", b"\x00", b"\xff", b" "]
# octets below CR that are not line ends: the compiled scanner's first test finds them too
DATA_TOKENS += [b"\t", b"\x0b\x0c\x01", b"a" * 17, b"\t" * 16]
data_bytes = st.one_of(
    st.lists(st.sampled_from(DATA_TOKENS), max_size=40).map(b"".join),
    st.binary(max_size=60).map(lambda b: bytes(b"\r\n.a\x00"[x % 5] for x in b)),
    st.binary(max_size=60),
)
KINDS = [bytes, bytearray, memoryview]


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` split at ``points`` (taken modulo its length + 1)."""
    offsets = sorted({p % (len(data) + 1) for p in points})
    edges = [0, *offsets, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def scan(
    parser: ModuleType, chunks: list[Any], normalize: bool, strip: bool = False
) -> tuple[Any, ...]:
    scanner = parser.DataScanner(normalize, strip)
    decoded = []
    consumed = 0
    for chunk in chunks:
        out, used = scanner.feed(chunk)
        decoded.append(out)
        consumed += used
    result = b"".join(decoded)
    assert scanner.size == len(result)
    return (
        result,
        consumed,
        scanner.done,
        scanner.size,
        scanner.bare_cr,
        scanner.bare_lf,
        scanner.nul,
    )


@SETTINGS
@given(
    data=data_bytes,
    points=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    normalize=st.booleans(),
    strip=st.booleans(),
    kind=st.sampled_from(KINDS),
)
def test_scanner_twins_agree_on_any_split(
    backends: list[ModuleType],
    data: bytes,
    points: list[int],
    normalize: bool,
    strip: bool,
    kind: type,
) -> None:
    reference = scan(backends[0], [data], normalize, strip)
    chunks = cut(data, points)
    for parser in backends:
        assert scan(parser, [data], normalize, strip) == reference
        assert scan(parser, [kind(c) for c in chunks], normalize, strip) == reference


@SETTINGS
@given(data=data_bytes, normalize=st.booleans(), strip=st.booleans())
def test_scanner_byte_by_byte(
    backends: list[ModuleType], data: bytes, normalize: bool, strip: bool
) -> None:
    reference = scan(backends[0], [data], normalize, strip)
    by_byte = [data[i : i + 1] for i in range(len(data))]
    for parser in backends:
        assert scan(parser, by_byte, normalize, strip) == reference


_LINE_START_DOT = re.compile(rb"(?:\A|(?<=\r\n))\.")
_BARE_CR = re.compile(rb"\r(?!\n)")
_BARE_LF = re.compile(rb"(?<!\r)\n")


def model(data: bytes, normalize: bool, strip: bool = False) -> tuple[Any, ...]:
    """What the scanner must do, said with regular expressions instead of a state machine.

    The data ends at the first CRLF "." CRLF, counting the start as a line start; a dot at
    a real line start goes; a CR at the very end waits for the next chunk; a NUL is text
    (it never makes a line start) and goes only when stripped.
    """
    end = (b"\r\n" + data).find(b"\r\n.\r\n")
    if end >= 0:
        body, consumed = data[:end], end + 3
    else:
        body = data[:-1] if data.endswith(b"\r") else data
        consumed = len(data)
    bare_cr, bare_lf = len(_BARE_CR.findall(body)), len(_BARE_LF.findall(body))
    decoded = _LINE_START_DOT.sub(b"", body)
    if normalize:
        decoded = _BARE_LF.sub(b"\r\n", _BARE_CR.sub(b"\r\n", decoded))
    if strip:
        decoded = decoded.replace(b"\x00", b"")
    nul = body.count(b"\x00")
    return decoded, consumed, end >= 0, len(decoded), bare_cr, bare_lf, nul


@SETTINGS
@given(data=data_bytes, normalize=st.booleans(), strip=st.booleans())
def test_scanner_matches_model(
    backends: list[ModuleType], data: bytes, normalize: bool, strip: bool
) -> None:
    for parser in backends:
        assert scan(parser, [data], normalize, strip) == model(data, normalize, strip)


# ----- BDAT chunks (the scanner with chunked=True) ---------------------------------------


def scan_chunked(
    parser: ModuleType, chunks: list[Any], normalize: bool, strip: bool
) -> tuple[Any, ...]:
    scanner = parser.DataScanner(normalize, strip, True)
    decoded = []
    for chunk in chunks:
        out, used = scanner.feed(chunk)
        assert used == len(chunk)  # a chunk is consumed whole: nothing in it ends the data
        decoded.append(out)
    assert not scanner.done
    decoded.append(scanner.finish())
    assert scanner.done and scanner.finish() == b""
    result = b"".join(decoded)
    assert scanner.size == len(result)
    return result, scanner.bare_cr, scanner.bare_lf, scanner.nul


def model_chunked(data: bytes, normalize: bool, strip: bool) -> tuple[Any, ...]:
    """BDAT: every octet is message text; no dot goes, nothing ends it, a CR last is bare."""
    bare_cr, bare_lf = len(_BARE_CR.findall(data)), len(_BARE_LF.findall(data))
    decoded = data
    if normalize:
        decoded = _BARE_LF.sub(b"\r\n", _BARE_CR.sub(b"\r\n", decoded))
    if strip:
        decoded = decoded.replace(b"\x00", b"")
    return decoded, bare_cr, bare_lf, data.count(b"\x00")


@SETTINGS
@given(
    data=data_bytes,
    points=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
    normalize=st.booleans(),
    strip=st.booleans(),
    kind=st.sampled_from(KINDS),
)
def test_chunked_scanner_matches_model_on_any_split(
    backends: list[ModuleType],
    data: bytes,
    points: list[int],
    normalize: bool,
    strip: bool,
    kind: type,
) -> None:
    expected = model_chunked(data, normalize, strip)
    for parser in backends:
        assert scan_chunked(parser, [data], normalize, strip) == expected
        chunks = [kind(c) for c in cut(data, points)]
        assert scan_chunked(parser, chunks, normalize, strip) == expected


def test_chunked_scanner_keeps_dots_and_the_data_terminator(backends: list[ModuleType]) -> None:
    data = b".a\r\n..b\r\n.\r\nMAIL FROM:<x@y>\r\n"
    for parser in backends:
        assert scan_chunked(parser, [data], False, False) == (data, 0, 0, 0)
        # a DATA scanner over the same octets stops at the terminator and unstuffs
        assert parser.DataScanner(False, False).feed(data) == (b"a\r\n.b\r\n", 12)


# ----- commands ------------------------------------------------------------------------

COMMAND_TOKENS = [bytes([c]) for c in b':<>@"\\ \t.[],=-aZ9_\xff\x00\x7f\r'] + [
    b"FROM",
    b"TO",
    b"from",
    b"<>",
    b"..",
    b"SIZE=1",
    b" BODY",
    b"postmaster",
    b"\xc3\xa9",
    b"x" * 60,
]
command_bytes = st.one_of(
    st.lists(st.sampled_from(COMMAND_TOKENS), max_size=30).map(b"".join),
    st.binary(max_size=40),
)
LOCAL_TOKENS = [b"a", b"b.c", b".", b'"', b"\\", b" ", b"\xce\xb4", b"\xff", b"\x01", b"@", b"("]
LOCAL_TOKENS += [b'"x y"', b'\\"', b"\\\x00", b"postmaster"]
DOMAIN_TOKENS = [b"ex", b".", b"com", b"[", b"]", b"1.2.3.4", b"IPv6:", b"\\", b" ", b"\x7f", b","]
PARAM_TOKENS = [b" SIZE=1", b" BODY=8BITMIME", b" SMTPUTF8", b" size=2", b" X-Y", b" -A", b" ="]
PARAM_TOKENS += [b"  ", b" A=\xff", b" a=b=c", b"\t", b"x", b" A_B"]


def joined(tokens: list[bytes], max_size: int) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(tokens), max_size=max_size).map(b"".join)


path_arguments = st.one_of(
    command_bytes,
    st.tuples(
        st.sampled_from([b"FROM:<", b"TO:<", b"from: <"]),
        st.sampled_from([b"", b"@r.example:", b"@r,@s:", b"@:", b"@r"]),
        joined(LOCAL_TOKENS, 3),
        st.sampled_from([b"@", b""]),
        joined(DOMAIN_TOKENS, 3),
        st.sampled_from([b">", b""]),
        joined(PARAM_TOKENS, 3),
    ).map(b"".join),
)


def outcome(call: Any, *args: bytes) -> tuple[Any, ...]:
    try:
        return ("ok", call(*args))
    except CommandSyntaxError as exc:
        return ("error", exc.code, exc.text)


@SETTINGS
@given(line=command_bytes)
def test_split_command_twins_agree(backends: list[ModuleType], line: bytes) -> None:
    results = {repr(outcome(parser.split_command, line)) for parser in backends}
    assert len(results) == 1


@SETTINGS
@given(argument=path_arguments, keyword=st.sampled_from([b"FROM", b"TO", b"from", b""]))
def test_parse_path_argument_twins_agree(
    backends: list[ModuleType], argument: bytes, keyword: bytes
) -> None:
    results = [outcome(parser.parse_path_argument, argument, keyword) for parser in backends]
    assert all(r == results[0] for r in results)
    if results[0][0] == "ok":
        address, params = results[0][1]
        assert type(address) is str
        assert all(type(k) is str and (v is None or type(v) is str) for k, v in params.items())
