"""Binding the listening sockets, once, before any worker starts (like uvicorn's bind_socket).

Workers inherit the bound sockets.  With ``reuse_port`` every worker binds its own socket
with SO_REUSEPORT instead and the kernel spreads connections by hash; see the master's
docstring for which one we use by default and why.
"""

from __future__ import annotations

import socket

from mta.config import parse_hostport

__all__ = ["bind_listener", "bind_listeners"]

BACKLOG = 4096


def bind_listener(address: str, reuse_port: bool = False) -> socket.socket:
    """A listening, non-blocking TCP socket for ``host:port`` (``[v6]:port`` for IPv6)."""
    host, port = parse_hostport(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def bind_listeners(addresses: tuple[str, ...], reuse_port: bool = False) -> list[socket.socket]:
    sockets: list[socket.socket] = []
    try:
        for address in addresses:
            sockets.append(bind_listener(address, reuse_port))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
