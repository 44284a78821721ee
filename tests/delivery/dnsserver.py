"""DnsServer: a small authoritative DNS server on loopback, for the delivery tests.

The relay resolves MX, A and AAAA records for real (dnspython, over sockets), so the tests
give it a real server whose zone they write with ``add_*`` and whose failures they pick:
SERVFAIL, silence, or truncated UDP answers that force the client onto TCP.

Rules it keeps (RFC 1034 §4.3.2, RFC 2308):

- Names are case-insensitive; every answer carries AA and the configured TTL.
- A name with no record at all is NXDOMAIN; a name with records but none of the asked
  type is NODATA (NOERROR, empty answer). Both carry an SOA in authority, so negative
  answers are cacheable like real ones. Empty non-terminals are not modelled: a parent of
  a known name is NXDOMAIN unless it has records of its own.
- UDP and TCP are served on the same port; a UDP answer too big for the client's buffer
  (512 octets, or its EDNS size) is sent truncated, as is every UDP answer while
  :meth:`DnsServer.truncate_udp` is on.
- It stands in for a validating resolver too: an answer (records or denial) for a name
  marked :meth:`DnsServer.authenticated` carries the AD bit, when the query asked for it
  with AD or DO (RFC 6840 §5.7, RFC 4035 §3.2.3); by default no answer has it.

It runs in a thread and event loop of its own, started and stopped as every test server
is (loop_server.py).
"""

from __future__ import annotations

import asyncio
import struct
import threading
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.delivery.loop_server import LoopServer

Rdatas = dict[dns.rdatatype.RdataType, list[dns.rdata.Rdata]]


def _key(name: str) -> str:
    return name.rstrip(".").lower()


def _rdata(rdtype: dns.rdatatype.RdataType, text: str) -> dns.rdata.Rdata:
    # Names are absolute whether or not they end with a dot: relative ones cannot go on
    # the wire.
    return dns.rdata.from_text(
        dns.rdataclass.IN, rdtype, text, origin=dns.name.root, relativize=False
    )


class DnsServer(LoopServer):
    """Authoritative answers from an in-memory zone, over UDP and TCP, in a background thread.

    Every method may be called from the test thread while the server runs; the zone and
    the query log are guarded by one lock.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, ttl: int = 300) -> None:
        super().__init__(host, port)
        self.ttl = ttl
        # zone and misbehaviour, written by the test thread
        self._lock = threading.Lock()
        self._records: dict[str, Rdatas] = {}
        self._servfail: set[str] = set()
        self._silent: set[str] = set()
        self._truncate = False
        self._authenticated: set[str] = set()
        self._queries: list[tuple[str, str, str]] = []
        # machinery, owned by the loop thread once started
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._clients: set[asyncio.Transport] = set()

    # -- zone ---------------------------------------------------------------------------

    def add_mx(self, domain: str, exchanges: list[tuple[int, str]]) -> None:
        for preference, exchange in exchanges:
            self._add(domain, _rdata(dns.rdatatype.MX, f"{preference} {exchange}"))

    def add_null_mx(self, domain: str) -> None:
        """RFC 7505: the domain accepts no mail. Replaces any MX added before."""
        with self._lock:
            self._records.setdefault(_key(domain), {})[dns.rdatatype.MX] = [
                _rdata(dns.rdatatype.MX, "0 .")
            ]

    def add_a(self, name: str, address: str) -> None:
        self._add(name, _rdata(dns.rdatatype.A, address))

    def add_aaaa(self, name: str, address: str) -> None:
        self._add(name, _rdata(dns.rdatatype.AAAA, address))

    def add_tlsa(self, name: str, usage: int, selector: int, mtype: int, data: bytes) -> None:
        """A TLSA record at ``name`` (``_25._tcp.mx.example.test``), RFC 6698 §2."""
        text = f"{usage} {selector} {mtype} {data.hex()}"
        self._add(name, _rdata(dns.rdatatype.TLSA, text))

    def authenticated(self, name: str, on: bool = True) -> None:
        """Whether answers for ``name`` carry the AD bit (DNSSEC-validated, as a
        validating resolver would say)."""
        with self._lock:
            (self._authenticated.add if on else self._authenticated.discard)(_key(name))

    def set_txt(self, name: str, *texts: str) -> None:
        """The TXT records at ``name``, one per text (each one string), replacing any."""
        rdatas = [_rdata(dns.rdatatype.TXT, '"' + t.replace('"', '\\"') + '"') for t in texts]
        with self._lock:
            self._records.setdefault(_key(name), {})[dns.rdatatype.TXT] = rdatas

    def servfail(self, name: str) -> None:
        with self._lock:
            self._servfail.add(_key(name))

    def timeout(self, name: str) -> None:
        """Never answer queries for ``name`` (they are still logged)."""
        with self._lock:
            self._silent.add(_key(name))

    def truncate_udp(self, on: bool = True) -> None:
        with self._lock:
            self._truncate = on

    @property
    def queries(self) -> list[tuple[str, str, str]]:
        """(lower-cased qname without the final dot, rdtype text, "udp" | "tcp"), in order."""
        with self._lock:
            return list(self._queries)

    def _add(self, name: str, rdata: dns.rdata.Rdata) -> None:
        with self._lock:
            self._records.setdefault(_key(name), {}).setdefault(rdata.rdtype, []).append(rdata)

    # -- lifecycle (loop thread) ----------------------------------------------------------

    async def _listen(self) -> None:
        """Bind TCP, then UDP on the same port; with port 0, retry if UDP's is taken."""
        loop = asyncio.get_running_loop()
        for _ in range(20):
            tcp = await loop.create_server(lambda: _TcpProtocol(self), self.host, self.port)
            port = tcp.sockets[0].getsockname()[1]
            try:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), local_addr=(self.host, port)
                )
            except OSError:
                tcp.close()
                if self.port:
                    raise
                continue
            self._tcp, self._udp, self.port = tcp, udp, port
            return
        raise OSError(f"no port free for both UDP and TCP on {self.host}")

    async def _shutdown(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
        if self._udp is not None:
            self._udp.close()
        await self._abort_all(self._clients)
        await asyncio.sleep(0)

    # -- answering (loop thread) ----------------------------------------------------------

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The reply to one query message, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None  # not worth a FORMERR: no test sends garbage on purpose
        if not query.question:
            return None
        question = query.question[0]
        name = _key(question.name.to_text())
        with self._lock:
            self._queries.append((name, dns.rdatatype.to_text(question.rdtype), transport))
            if name in self._silent:
                return None
            response = self._respond(query, name, question.rdtype, transport == "udp")
        limit = 65535 if transport == "tcp" else max(512, query.payload if query.edns >= 0 else 0)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            return self._truncated(query).to_wire()

    def _respond(
        self, query: dns.message.Message, name: str, rdtype: dns.rdatatype.RdataType, udp: bool
    ) -> dns.message.Message:
        if udp and self._truncate:
            return self._truncated(query)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        asked = query.flags & dns.flags.AD or query.ednsflags & dns.flags.DO
        if name in self._authenticated and asked:
            response.flags |= dns.flags.AD
        qname = query.question[0].name
        if name in self._servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        rdatas = self._records.get(name)
        found = rdatas.get(rdtype) if rdatas else None
        if found:
            response.answer.append(dns.rrset.from_rdata_list(qname, self.ttl, found))
            return response
        if rdatas is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(self._soa(qname))
        return response

    def _truncated(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA | dns.flags.TC
        return response

    def _soa(self, qname: dns.name.Name) -> dns.rrset.RRset:
        # RFC 2308 §3: the SOA owner must be an ancestor of the qname; pretend the zone is
        # the last two labels ("example.test"), which every test name has.
        zone = qname.split(min(3, len(qname)))[1]
        soa = _rdata(dns.rdatatype.SOA, f"ns.{zone} hostmaster.{zone} 1 3600 600 86400 {self.ttl}")
        return dns.rrset.from_rdata(zone, self.ttl, soa)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport = cast(asyncio.DatagramTransport, None)  # set by connection_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        reply = self.server.answer(data, "udp")
        if reply is not None:
            self.transport.sendto(reply, addr)


class _TcpProtocol(asyncio.Protocol):
    """RFC 1035 §4.2.2 / RFC 7766: two-octet length prefix, many queries per connection."""

    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport = cast(asyncio.Transport, None)  # set by connection_made
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server._clients.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._clients.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            (size,) = struct.unpack("!H", self.buffer[:2])
            if len(self.buffer) < 2 + size:
                return
            wire = bytes(self.buffer[2 : 2 + size])
            del self.buffer[: 2 + size]
            reply = self.server.answer(wire, "tcp")
            if reply is not None:
                self.transport.write(struct.pack("!H", len(reply)) + reply)
