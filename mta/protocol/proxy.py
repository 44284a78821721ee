"""The PROXY protocol header (haproxy's ``doc/proxy-protocol.txt``, versions 1 and 2), sans I/O.

A TCP load balancer that hides the client's address puts one header in front of the
client's bytes; :func:`parse` reads it from the start of what the connection has received
so far and says which of three things is the case:

* ``None``: not enough bytes yet (the caller reads more, within its own deadline);
* a :class:`ProxyHeader`: the header is complete, ``length`` octets long; whatever follows
  it is the client's (SMTP commands or a TLS ClientHello) and must be kept;
* :class:`ProxyError`: the bytes are not a valid header (its ``reason`` says why); the
  spec asks the receiver to drop the connection.

Version 1 is a text line ``PROXY TCP4|TCP6|UNKNOWN ...\\r\\n`` of at most 107 octets
(spec §2.1): addresses in canonical form (IPv4: four decimal numbers without leading
zeros; IPv6: hex groups and at most one ``::``), ports 0-65535 without leading zeros,
single spaces, and CRLF only (a lone CR or LF is an error).  ``UNKNOWN`` ignores the rest
of the line.  Version 2 (spec §2.2) is binary: a 12-octet signature, version 2 with the
command LOCAL or PROXY, the family and transport, and a length; the address block of
AF_INET/AF_INET6 over STREAM gives the addresses and ports, and what follows it in the
block (TLVs, spec §2.2.x) is checked for framing and skipped.

A header with no address to use, LOCAL (a balancer's health check: the endpoints are the
connection's own), ``UNKNOWN``, and the valid v2 combinations we do not serve (UDP,
AF_UNIX, AF_UNSPEC) comes back with ``source is None``: the caller keeps the socket's
address, as the spec says.

This module never reads a socket: the bytes are the caller's, and so is the clock.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["MAX_V1_LENGTH", "V2_SIGNATURE", "ProxyError", "ProxyHeader", "parse"]

V1_PREFIX = b"PROXY "
MAX_V1_LENGTH = 107  # octets with the CRLF: "PROXY UNKNOWN <v6> <v6> 65535 65535\r\n" (§2.1)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16  # signature, version/command, family/transport, length

_LOCAL, _PROXY = 0x0, 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_UNSPEC, _STREAM, _DGRAM = 0x0, 0x1, 0x2
# octets of addresses and ports by family (§2.2): what the length must at least cover
_ADDRESS_BLOCK = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}

_HEX = frozenset("0123456789abcdefABCDEF:")

Address = tuple[str, int]  # (IP address, port)


class ProxyError(ValueError):
    """The bytes are not a valid PROXY header; ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A complete header: ``length`` octets, and the client's endpoints when it gives them."""

    version: int  # 1 or 2
    command: str  # "PROXY" or "LOCAL" (v2 health checks)
    family: str  # "TCP4", "TCP6" or "UNKNOWN" (v1's words; v2 maps onto them)
    source: Address | None  # None: keep the connection's own address
    destination: Address | None
    length: int


def parse(data: bytes | bytearray | memoryview) -> ProxyHeader | None:
    """The header at the start of ``data``, None if more bytes are needed; ProxyError if
    ``data`` does not start with one (decided as early as the bytes allow)."""
    if not data:
        return None
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(memoryview(data))
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(bytes(data[:MAX_V1_LENGTH]))
    raise ProxyError("no PROXY header (neither v1 nor v2 signature)")


# ----- version 1 (text) -------------------------------------------------------------------


def _parse_v1(data: bytes) -> ProxyHeader | None:
    prefix = data[: len(V1_PREFIX)]
    if prefix != V1_PREFIX[: len(prefix)]:
        raise ProxyError("no PROXY header (neither v1 nor v2 signature)")
    end = data.find(b"\r\n")
    if _stray_line_end(data, end):
        raise ProxyError("v1 header line not ended by CRLF")
    if end < 0:
        if len(data) >= MAX_V1_LENGTH:
            raise ProxyError(f"v1 header longer than {MAX_V1_LENGTH} octets")
        return None
    line = data[len(V1_PREFIX) : end]
    length = end + 2
    if line == b"UNKNOWN" or line.startswith(b"UNKNOWN "):
        return ProxyHeader(1, "PROXY", "UNKNOWN", None, None, length)  # rest ignored (§2.1)
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyError("v1 header is not ASCII") from None
    fields = text.split(" ")
    if len(fields) != 5:
        raise ProxyError("v1 header needs protocol, 2 addresses and 2 ports")
    family, src, dst, sport, dport = fields
    if family not in ("TCP4", "TCP6"):
        raise ProxyError(f"v1 protocol {family!r} is not TCP4, TCP6 or UNKNOWN")
    source = (_v1_address(family, src), _v1_port(sport))
    destination = (_v1_address(family, dst), _v1_port(dport))
    return ProxyHeader(1, "PROXY", family, source, destination, length)


def _stray_line_end(data: bytes, end: int) -> bool:
    """A CR or LF before the first CRLF (at ``end``, -1 if none yet); without a CRLF, a
    CR as the last octet received may still be the start of one."""
    before = data[:end] if end >= 0 else data[:-1] if data.endswith(b"\r") else data
    return b"\r" in before or b"\n" in before


def _v1_address(family: str, text: str) -> str:
    try:
        if family == "TCP4":
            return str(ipaddress.IPv4Address(text))  # rejects leading zeros (§2.1)
        if not text or not set(text) <= _HEX:  # no zone id, no embedded IPv4 (§2.1)
            raise ValueError("not hex groups")
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ProxyError(f"v1 {family} address {text!r} is not canonical") from None


def _v1_port(text: str) -> int:
    if not text.isdigit() or not text.isascii() or (text != "0" and text[0] == "0"):
        raise ProxyError(f"v1 port {text!r} is not a number without leading zeros")
    port = int(text)
    if port > 65535:
        raise ProxyError(f"v1 port {port} is out of range")
    return port


# ----- version 2 (binary) -----------------------------------------------------------------


def _parse_v2(data: memoryview) -> ProxyHeader | None:
    head = bytes(data[: len(V2_SIGNATURE)])
    if head != V2_SIGNATURE[: len(head)]:
        raise ProxyError("no PROXY header (neither v1 nor v2 signature)")
    if len(data) < _V2_FIXED:
        if len(data) > 12 and data[12] >> 4 != 2:
            raise ProxyError(f"v2 signature with version {data[12] >> 4}")
        return None
    version, command = data[12] >> 4, data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    block = int.from_bytes(data[14:16], "big")
    if version != 2:
        raise ProxyError(f"v2 signature with version {version}")
    if command not in (_LOCAL, _PROXY):
        raise ProxyError(f"v2 command {command:#x} is neither LOCAL nor PROXY")
    if family not in _ADDRESS_BLOCK or transport not in (_UNSPEC, _STREAM, _DGRAM):
        raise ProxyError(f"v2 family/transport {data[13]:#04x} is not defined")
    if command == _PROXY and block < _ADDRESS_BLOCK[family]:
        raise ProxyError(f"v2 length {block} is too short for its address family")
    length = _V2_FIXED + block
    if len(data) < length:
        return None
    body = data[_V2_FIXED:length]
    if command == _LOCAL:  # the endpoints are the connection's own; the block is ignored
        return ProxyHeader(2, "LOCAL", "UNKNOWN", None, None, length)
    if transport != _STREAM or family not in (_AF_INET, _AF_INET6):
        # valid, but nothing we could use: the spec's fallback is the connection's own
        # endpoints (UNSPEC behaviour), like v1's UNKNOWN
        return ProxyHeader(2, "PROXY", "UNKNOWN", None, None, length)
    size = 4 if family == _AF_INET else 16
    _check_tlvs(body[2 * size + 4 :])
    make = ipaddress.IPv4Address if family == _AF_INET else ipaddress.IPv6Address
    source = (str(make(bytes(body[:size]))), int.from_bytes(body[2 * size : 2 * size + 2], "big"))
    destination = (
        str(make(bytes(body[size : 2 * size]))),
        int.from_bytes(body[2 * size + 2 : 2 * size + 4], "big"),
    )
    return ProxyHeader(2, "PROXY", "TCP4" if size == 4 else "TCP6", source, destination, length)


def _check_tlvs(tlvs: memoryview) -> None:
    """TLVs (type, 2-octet length, value) must fill what is left of the block exactly; their
    contents (ALPN, authority, SSL facts, ...) are not used."""
    at = 0
    while at < len(tlvs):
        if len(tlvs) - at < 3:
            raise ProxyError("v2 TLV header cut short")
        size = int.from_bytes(tlvs[at + 1 : at + 3], "big")
        at += 3 + size
        if at > len(tlvs):
            raise ProxyError("v2 TLV longer than the header")
