"""Fuzz harness ``data``: the DATA scanner of both twins, fed in chunks the fuzzer chose.

Input layout (so that a seed is a header and then plain DATA text)::

    flags  ncuts  len_1 .. len_ncuts  body...

``flags`` bit 0 ``normalize``, bit 1 ``strip_nul``, bits 2-3 the chunk type (bytes,
bytearray, memoryview); ``ncuts % 8`` chunk lengths follow, the rest of the body is the
last chunk.  Checked:

* every backend returns the same ``(decoded, consumed)`` for every chunk and ends with the
  same counters and ``done``; feeding the body whole gives the same output as in chunks;
* the data ends exactly at the first ``CRLF.CRLF`` (or ``.CRLF`` at the very start), only
  there, and nothing after it is consumed, now or by a later ``feed``;
* the counters match a model of the raw input (bare CR, bare LF, NUL before the end);
* a message the session would accept (no bare line end unless normalized, no NUL unless
  stripped) holds no bare CR, bare LF or NUL, and dot-stuffed again for the next hop
  (``mta.protocol.dot_stuff``) it reads back as itself, ending only at its own end line.
  That is the smuggling property: no accepted message hides an end of data from a next hop.
  The streaming ``DotStuffer`` (messages sent from disk) makes the same payload from the
  message cut as the input was.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mta.protocol._parser_py import DataScanner as ReferenceScanner
from mta.protocol.dot_stuff import DotStuffer, dot_stuff
from tests.fuzz.registry import backends, harness

BACKENDS = backends()
KINDS = (bytes, bytearray, memoryview, bytes)
CRLF = b"\r\n"


def seeds() -> Iterator[bytes]:
    """The scanner tables of tests/protocol (plain, NUL, smuggling vectors), each with a
    few flag and chunking headers."""
    from tests.protocol import test_data_scanner as plain
    from tests.protocol import test_data_scanner_nul as nul

    bodies = [row[1] for row in plain.TABLE] + [row[1] for row in nul.TABLE]
    bodies += [plain.FIRST + v + plain.SMUGGLED + plain.END + plain.AFTER for v, _ in plain.VECTORS]
    headers = [b"\x00\x00", b"\x01\x00", b"\x02\x00", b"\x07\x02\x01\x03", b"\x0b\x03\x05\x02\x07"]
    for index, body in enumerate(bodies):
        yield headers[index % len(headers)] + body


def split(data: bytes) -> tuple[int, list[bytes], bytes]:
    """The flags, the chunks and the whole body encoded in ``data``."""
    flags = data[0] if data else 0
    ncuts = data[1] % 8 if len(data) > 1 else 0
    lengths = data[2 : 2 + ncuts]
    body = data[2 + ncuts :]
    chunks, start = [], 0
    for length in lengths:
        chunks.append(body[start : start + length])
        start += length
    chunks.append(body[start:])
    return flags, chunks, body


def scan(parser: Any, flags: int, chunks: list[bytes]) -> tuple[Any, ...]:
    """Feed ``chunks``, then one more chunk after the end; what the scanner said."""
    scanner = parser.DataScanner(bool(flags & 1), bool(flags & 2))
    kind = KINDS[(flags >> 2) & 3]
    fed = [scanner.feed(kind(chunk)) for chunk in chunks]
    done = scanner.done
    after = scanner.feed(b".\r\n") if done else None
    counters = (scanner.size, scanner.bare_cr, scanner.bare_lf, scanner.nul)
    assert (scanner.normalize, scanner.strip_nul) == (bool(flags & 1), bool(flags & 2))
    return fed, done, after, counters


def end_of_data(body: bytes) -> int | None:
    """Where the data ends: just past the first ``CRLF.CRLF`` (the start of the data counts
    as a line start); None without one."""
    if body.startswith(b".\r\n"):
        return 3
    found = body.find(b"\r\n.\r\n")
    return None if found < 0 else found + 5


def model_counters(text: bytes) -> tuple[int, int, int]:
    """Bare CRs, bare LFs and NULs in ``text`` (the input before the end of data); a CR
    last in an unfinished input is not yet known to be bare."""
    bare_cr = sum(1 for i, c in enumerate(text[:-1]) if c == 13 and text[i + 1] != 10)
    bare_lf = sum(1 for i, c in enumerate(text) if c == 10 and (i == 0 or text[i - 1] != 13))
    return bare_cr, bare_lf, text.count(b"\x00")


def has_bare_line_end(text: bytes) -> bool:
    rest = text.replace(CRLF, b"")
    return b"\r" in rest or b"\n" in rest


def check_model(flags: int, body: bytes, result: tuple[Any, ...]) -> bytes:
    """The invariants of one backend's result; returns the decoded output."""
    fed, done, after, (size, bare_cr, bare_lf, nul) = result
    decoded = b"".join(out for out, _ in fed)
    consumed = sum(used for _, used in fed)
    assert all(type(out) is bytes for out, _ in fed)
    assert size == len(decoded)
    end = end_of_data(body)
    assert done == (end is not None), (body, done)
    assert consumed == (len(body) if end is None else end), (body, consumed, end)
    assert after in (None, (b"", 0)), after  # nothing consumed once done
    assert (bare_cr, bare_lf, nul) == model_counters(body[:consumed]), body
    if flags & 1:
        assert not has_bare_line_end(decoded), decoded
    if flags & 2:
        assert b"\x00" not in decoded, decoded
    return decoded


def check_next_hop(flags: int, decoded: bytes, result: tuple[Any, ...]) -> None:
    """A message the session would accept is safe to pass on (see the module docstring)."""
    fed, done, _, (_, bare_cr, bare_lf, nul) = result
    accepted = done and (not (bare_cr or bare_lf) or flags & 1) and (not nul or flags & 2)
    if not accepted:
        return
    assert b"\x00" not in decoded and not has_bare_line_end(decoded), decoded
    assert decoded == b"" or decoded.endswith(CRLF), decoded
    payload = dot_stuff(decoded)
    again = ReferenceScanner(False, False)
    out, used = again.feed(payload)
    assert (out, used, again.done) == (decoded, len(payload), True), (decoded, payload)
    assert (again.bare_cr, again.bare_lf, again.nul) == (0, 0, 0)
    stuffer = DotStuffer()
    streamed = b"".join(stuffer.feed(out) for out, _ in fed) + stuffer.end()
    assert streamed == payload, (decoded, [out for out, _ in fed], streamed)


@harness("data", seeds, max_len=4096, dictionary=(b"\r\n", b"\r\n.", b"\r\n.\r\n", b"\x00"))
def one_input(data: bytes) -> None:
    flags, chunks, body = split(data)
    reference, *others = [scan(parser, flags, chunks) for parser in BACKENDS]
    for parser, result in zip(BACKENDS[1:], others, strict=True):
        assert result == reference, (parser.__name__, data, reference, result)
    decoded = check_model(flags, body, reference)
    whole = scan(BACKENDS[-1], flags, [body])
    assert b"".join(out for out, _ in whole[0]) == decoded, (body, decoded)
    assert whole[1:] == reference[1:], (body, whole, reference)
    check_next_hop(flags, decoded, reference)
