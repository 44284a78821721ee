"""Fuzz harness ``proxy``: the PROXY protocol header parser (mta/protocol/proxy.py).

The input is what a connection received first.  ``parse`` must return None (more bytes
needed), a header, or raise :class:`ProxyError` -- nothing else.  What smtpd relies on:
a header is no longer than the input and, for v1, than 107 octets; its addresses are IP
addresses of its family and its ports 0-65535; every prefix of a complete header is
"more needed" (so reading byte by byte finds the same header at the same length), and the
header parses the same with anything appended (the client's first bytes are never part of
it); an input that fails keeps failing when more arrives (never "more needed" again).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from mta.protocol.proxy import MAX_V1_LENGTH, V2_SIGNATURE, ProxyError, ProxyHeader, parse
from tests.fuzz.registry import harness

V1 = [
    b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 25\r\n",
    b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 587\r\nEHLO x\r\n",
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n",
]
V2 = [
    V2_SIGNATURE
    + b"\x21\x11\x00\x0c"
    + bytes([192, 0, 2, 1, 198, 51, 100, 2])
    + b"\x1f\x40\x00\x19",
    V2_SIGNATURE + b"\x20\x00\x00\x00",  # LOCAL
    V2_SIGNATURE + b"\x21\x21\x00\x27" + bytes(range(32)) + b"\x00\x01\x00\x02" + b"\x04\x00\x00",
    V2_SIGNATURE + b"\x21\x11\x00\x0f" + bytes(12) + b"\x01\x00\x00",  # a TLV of length 0
]


def seeds() -> Iterator[bytes]:
    from tests.protocol.test_proxy import VALID

    yield from (data for data, _ in VALID)
    yield from V1
    yield from V2
    yield b"PROXY TCP4 1.2.3.4"
    yield b"EHLO client.test\r\n"


def outcome(data: bytes) -> ProxyHeader | str | None:
    try:
        return parse(data)
    except ProxyError as exc:
        return f"error: {exc.reason}"


def check_header(header: ProxyHeader, data: bytes) -> None:
    assert 0 < header.length <= len(data), header
    if header.version == 1:
        assert header.length <= MAX_V1_LENGTH and data[: header.length].endswith(b"\r\n")
    for end in (header.source, header.destination):
        if end is None:
            continue
        address, port = end
        ip = ipaddress.ip_address(address)
        assert ip.version == (6 if header.family == "TCP6" else 4), header
        assert 0 <= port <= 65535, header
    assert (header.source is None) == (header.destination is None), header


@harness("proxy", seeds, max_len=600)
def one_input(data: bytes) -> None:
    result = outcome(data)
    if isinstance(result, ProxyHeader):
        check_header(result, data)
        whole = data[: result.length]
        assert outcome(whole) == result
        assert outcome(whole + b"\r\nEHLO x\r\n") == result
        for cut in (1, result.length // 2, result.length - 1):
            assert outcome(whole[:cut]) is None, (cut, data)
    elif result is None:
        assert outcome(data[:-1]) is None if data else True  # a prefix of "more" is "more"
    else:
        assert isinstance(outcome(data + b"\r\n\r\n" + bytes(200)), str), data
