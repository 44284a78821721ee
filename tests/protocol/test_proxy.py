"""The PROXY protocol header parser (haproxy's doc/proxy-protocol.txt), without sockets:
valid v1 and v2 headers whole, byte by byte and with the client's bytes behind them, and
every kind of malformation."""

from __future__ import annotations

import struct

import pytest

from mta.protocol.proxy import MAX_V1_LENGTH, V2_SIGNATURE, ProxyError, ProxyHeader, parse

FOLLOW = b"EHLO client.test\r\n"


def v2(
    command: int = 0x1,
    family: int = 0x11,
    addresses: bytes = b"",
    tlvs: bytes = b"",
    version: int = 2,
    length: int | None = None,
) -> bytes:
    body = addresses + tlvs
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", size) + body


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        bytes(map(int, src.split(".")))
        + bytes(map(int, dst.split(".")))
        + struct.pack("!HH", sport, dport)
    )


def inet6(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    return src + dst + struct.pack("!HH", sport, dport)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


LOOP6 = bytes(15) + b"\x01"  # ::1
DOC6 = bytes.fromhex("20010db8000000000000000000000001")  # 2001:db8::1

VALID: list[tuple[bytes, ProxyHeader]] = [
    (
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\n",
        ProxyHeader(1, "PROXY", "TCP4", ("192.0.2.7", 56324), ("198.51.100.1", 25), 44),
    ),
    (
        b"PROXY TCP6 2001:db8::1 ::1 0 65535\r\n",
        ProxyHeader(1, "PROXY", "TCP6", ("2001:db8::1", 0), ("::1", 65535), 36),
    ),
    (
        b"PROXY TCP6 2001:DB8:0:0:0:0:0:1 FFFF::1 1 2\r\n",
        ProxyHeader(1, "PROXY", "TCP6", ("2001:db8::1", 1), ("ffff::1", 2), 45),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, "PROXY", "UNKNOWN", None, None, 15)),
    (
        b"PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n",
        ProxyHeader(1, "PROXY", "UNKNOWN", None, None, 47),
    ),
    (
        v2(addresses=inet("192.0.2.7", "198.51.100.1", 40000, 587)),
        ProxyHeader(2, "PROXY", "TCP4", ("192.0.2.7", 40000), ("198.51.100.1", 587), 28),
    ),
    (
        v2(family=0x21, addresses=inet6(DOC6, LOOP6, 1, 465)),
        ProxyHeader(2, "PROXY", "TCP6", ("2001:db8::1", 1), ("::1", 465), 52),
    ),
    (  # TLVs (ALPN, authority, a NOOP for alignment) are skipped
        v2(
            addresses=inet("192.0.2.7", "198.51.100.1", 1, 25),
            tlvs=tlv(0x01, b"smtp") + tlv(0x02, b"mx.example") + tlv(0x04, b""),
        ),
        ProxyHeader(2, "PROXY", "TCP4", ("192.0.2.7", 1), ("198.51.100.1", 25), 51),
    ),
    (v2(command=0x0, family=0x00), ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, 16)),
    (  # LOCAL with addresses anyway: they are skipped, not used
        v2(command=0x0, addresses=inet("192.0.2.7", "198.51.100.1", 1, 25)),
        ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, 28),
    ),
    (v2(family=0x00), ProxyHeader(2, "PROXY", "UNKNOWN", None, None, 16)),  # AF_UNSPEC
    (  # UDP: valid, nothing to use, so the connection's own address
        v2(family=0x12, addresses=inet("192.0.2.7", "198.51.100.1", 1, 25)),
        ProxyHeader(2, "PROXY", "UNKNOWN", None, None, 28),
    ),
    (  # AF_UNIX stream
        v2(family=0x31, addresses=bytes(216)),
        ProxyHeader(2, "PROXY", "UNKNOWN", None, None, 232),
    ),
]


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_a_valid_header_whole(data: bytes, expected: ProxyHeader) -> None:
    assert parse(data) == expected
    assert expected.length == len(data)


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_what_follows_the_header_is_left_to_the_caller(data: bytes, expected: ProxyHeader) -> None:
    buffer = data + FOLLOW
    header = parse(buffer)
    assert header == expected
    assert buffer[header.length :] == FOLLOW


@pytest.mark.parametrize(("data", "expected"), VALID)
def test_byte_by_byte_needs_more_until_the_last_octet(data: bytes, expected: ProxyHeader) -> None:
    for end in range(len(data)):
        assert parse(data[:end]) is None, data[:end]
    assert parse(data) == expected


def test_the_longest_v1_line_is_accepted() -> None:
    six = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY UNKNOWN {six} {six} 65535 65535\r\n".encode()
    assert len(line) == MAX_V1_LENGTH
    header = parse(line)
    assert header is not None and header.length == MAX_V1_LENGTH
    tcp6 = f"PROXY TCP6 {six} {six} 65535 65535\r\n".encode()
    assert parse(tcp6) == ProxyHeader(1, "PROXY", "TCP6", (six, 65535), (six, 65535), 104)


MALFORMED: list[tuple[str, bytes]] = [
    ("smtp", b"EHLO client.test\r\n"),
    ("lowercase", b"proxy TCP4 192.0.2.7 198.51.100.1 1 25\r\n"),
    ("no space", b"PROXYTCP4 192.0.2.7 198.51.100.1 1 25\r\n"),
    ("udp4", b"PROXY UDP4 192.0.2.7 198.51.100.1 1 25\r\n"),
    ("family mismatch", b"PROXY TCP4 ::1 ::1 1 25\r\n"),
    ("v4 in tcp6", b"PROXY TCP6 192.0.2.7 198.51.100.1 1 25\r\n"),
    ("leading zero", b"PROXY TCP4 192.0.2.07 198.51.100.1 1 25\r\n"),
    ("short v4", b"PROXY TCP4 192.0.2 198.51.100.1 1 25\r\n"),
    ("octet > 255", b"PROXY TCP4 192.0.2.256 198.51.100.1 1 25\r\n"),
    ("zone id", b"PROXY TCP6 fe80::1%eth0 ::1 1 25\r\n"),
    ("embedded v4", b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 25\r\n"),
    ("two ::", b"PROXY TCP6 1::2::3 ::1 1 25\r\n"),
    ("port leading zero", b"PROXY TCP4 192.0.2.7 198.51.100.1 01 25\r\n"),
    ("port too big", b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n"),
    ("port sign", b"PROXY TCP4 192.0.2.7 198.51.100.1 +1 25\r\n"),
    ("port unicode digit", "PROXY TCP4 192.0.2.7 198.51.100.1 \u0661 25\r\n".encode()),
    ("missing port", b"PROXY TCP4 192.0.2.7 198.51.100.1 1\r\n"),
    ("extra field", b"PROXY TCP4 192.0.2.7 198.51.100.1 1 25 x\r\n"),
    ("double space", b"PROXY TCP4  192.0.2.7 198.51.100.1 1 25\r\n"),
    ("trailing space", b"PROXY TCP4 192.0.2.7 198.51.100.1 1 25 \r\n"),
    ("bare LF", b"PROXY TCP4 192.0.2.7 198.51.100.1 1 25\n"),
    ("bare CR", b"PROXY TCP4 192.0.2.7 198.51.100.1 1 25\rX\r\n"),
    ("CR CR LF", b"PROXY TCP4 192.0.2.7 198.51.100.1 1 25\r\r\n"),
    ("too long", b"PROXY UNKNOWN " + b"x" * 100),
    ("not ascii", b"PROXY TCP4 192.0.2.7 198.51.100.\xff 1 25\r\n"),
    ("empty line", b"PROXY \r\n"),
    ("v2 signature broken", V2_SIGNATURE[:-1] + b"X" + bytes(4)),
    ("v2 version 1", v2(version=1)),
    ("v2 version 3", v2(version=3)),
    ("v2 command 2", v2(command=0x2, family=0x00)),
    ("v2 family 4", v2(family=0x41, addresses=bytes(12))),
    ("v2 transport 3", v2(family=0x13, addresses=bytes(12))),
    ("v2 inet too short", v2(addresses=bytes(11))),
    ("v2 inet6 too short", v2(family=0x21, addresses=bytes(35))),
    ("v2 unix too short", v2(family=0x31, addresses=bytes(215))),
    ("v2 TLV cut", v2(addresses=inet("192.0.2.7", "198.51.100.1", 1, 25), tlvs=b"\x01\x00")),
    (
        "v2 TLV too long",
        v2(addresses=inet("192.0.2.7", "198.51.100.1", 1, 25), tlvs=b"\x01\x00\x05abc"),
    ),
]


@pytest.mark.parametrize(("name", "data"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_header_is_an_error(name: str, data: bytes) -> None:
    with pytest.raises(ProxyError) as caught:
        parse(data + FOLLOW)
    assert caught.value.reason


@pytest.mark.parametrize(
    "data",
    [b"E", b"\x16\x03\x01", b"GET ", b"PROXX", b"\r\n\r\n\x01", V2_SIGNATURE + b"\x10"],
)
def test_a_wrong_start_is_refused_as_early_as_the_bytes_allow(data: bytes) -> None:
    with pytest.raises(ProxyError):
        parse(data)


def test_an_incomplete_v2_header_waits_for_its_length() -> None:
    header = v2(addresses=inet("192.0.2.7", "198.51.100.1", 1, 25), tlvs=tlv(0x20, bytes(500)))
    assert parse(header[:-1]) is None
    assert parse(header) is not None


def test_nothing_yet_needs_more() -> None:
    assert parse(b"") is None
