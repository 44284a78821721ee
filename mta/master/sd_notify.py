"""systemd's readiness protocol (sd_notify(3)), spoken by the master without libsystemd.

A unit of ``Type=notify`` sets ``$NOTIFY_SOCKET`` to an AF_UNIX datagram socket (a path,
or ``@name`` in the abstract namespace); each state change is one datagram of
newline-separated ``KEY=value`` lines.  The master says ``READY=1`` once every child has
started and beaten (the listeners were bound before), ``RELOADING=1`` with
``MONOTONIC_USEC=`` (CLOCK_MONOTONIC in µs: systemd 253 checks it against the reload it
asked for) when a HUP is taken, then ``READY=1`` once the reload is through, and
``STOPPING=1`` on TERM; ``STATUS=`` says it in words for ``systemctl status``.

Without ``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op.  A send that fails
(systemd gone, a socket not there) is logged once and otherwise ignored: readiness
reporting must never stop the relay.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["monotonic_usec", "notify"]

log = logging.getLogger("mta.master")

_warned = False


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one datagram; whether it went."""
    global _warned
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # the abstract namespace: a leading NUL instead
        address = "\0" + address[1:]
    elif not address.startswith("/"):  # vsock:... and the like: not for a local relay
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        if not _warned:
            _warned = True
            log.warning("cannot notify systemd at %s: %s", address.lstrip("\0"), exc)
        return False
    return True


def monotonic_usec() -> str:
    """``MONOTONIC_USEC=`` for a ``RELOADING=1`` message: CLOCK_MONOTONIC in microseconds."""
    return f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
