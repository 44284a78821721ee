"""Client addresses and networks, as every edge check compares them: a zone suffix is
dropped, an IPv4-mapped IPv6 address counts as its IPv4 address, and something that is no IP
address (a UNIX socket, a test) is in no network."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

__all__ = ["Address", "Network", "client_address", "in_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(client_ip: str) -> Address | None:
    """The client as an address (a zone suffix dropped, IPv4-mapped made IPv4), or None."""
    try:
        address = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def in_networks(client_ip: str, networks: Iterable[Network]) -> bool:
    """Is ``client_ip`` in one of ``networks``?"""
    address = client_address(client_ip)
    return address is not None and any(address in network for network in networks)
