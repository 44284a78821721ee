"""Per-client counters: the pure counting logic of Postfix's anvil, with no I/O.

For each client address it keeps the connections open now and, per kind (``conn``,
``mail``, ``rcpt``, ``auth``), how many happened in the current rate window.  A window is
fixed and per client, as anvil's: it starts with the client's first event and lasts
``window`` seconds (Postfix's ``anvil_rate_time_unit``, 60 s); the next event after it
starts a new one at zero.  Time is an argument (``now``), so tests need no clock.

Invariants:

* memory is bounded: a client with no open connection and an expired window is forgotten
  (:meth:`ClientCounters.sweep`, and lazily when it is seen again), and at most
  ``max_clients`` are tracked; past that the least recently seen client is forgotten
  (it starts again at zero: under a flood of addresses the limit errs lenient, never strict);
* an open-connection count never goes below zero (a disconnect for a forgotten client, or
  one counted twice, is ignored).

The same class counts in the anvil daemon (for the node) and in an smtpd worker that
cannot reach anvil (for itself: the fallback).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

__all__ = ["KINDS", "ClientCounters", "Kind"]

Kind = Literal["conn", "mail", "rcpt", "auth"]
KINDS: tuple[Kind, ...] = ("conn", "mail", "rcpt", "auth")

WINDOW = 60.0  # seconds: Postfix's anvil_rate_time_unit
MAX_CLIENTS = 100_000  # a client costs ~300 octets: ~30 MB at the cap


class _Client:
    __slots__ = ("open", "rates", "window_start")

    def __init__(self, now: float) -> None:
        self.open = 0
        self.window_start = now
        self.rates: dict[str, int] = {}


class ClientCounters:
    """Counters per client address; every method takes the time (``now``, seconds)."""

    def __init__(self, window: float = WINDOW, max_clients: int = MAX_CLIENTS) -> None:
        self.window = window
        self.max_clients = max_clients
        self._clients: OrderedDict[str, _Client] = OrderedDict()  # least recently seen first

    def __len__(self) -> int:
        return len(self._clients)

    def connect(self, client: str, now: float) -> tuple[int, int]:
        """Count a new connection: (open connections, connections in the window), both
        including this one."""
        entry = self._touch(client, now)
        entry.open += 1
        rate = entry.rates["conn"] = entry.rates.get("conn", 0) + 1
        return entry.open, rate

    def disconnect(self, client: str, count: int = 1) -> None:
        """``count`` connections of ``client`` closed."""
        entry = self._clients.get(client)
        if entry is not None:
            entry.open = max(0, entry.open - count)

    def add(self, kind: Kind, client: str, amount: int, now: float) -> int:
        """Count ``amount`` events of ``kind``; the window's count, including them."""
        entry = self._touch(client, now)
        count = entry.rates[kind] = entry.rates.get(kind, 0) + amount
        return count

    def add_open(self, client: str, count: int, now: float) -> None:
        """Count connections already open (a worker that comes back after anvil restarted
        says which it holds); not a new connection for the rate."""
        self._touch(client, now).open += count

    def open(self, client: str) -> int:
        entry = self._clients.get(client)
        return entry.open if entry is not None else 0

    def open_counts(self) -> dict[str, int]:
        """Every client with open connections, and how many."""
        return {client: e.open for client, e in self._clients.items() if e.open}

    def sweep(self, now: float) -> int:
        """Forget the clients with nothing open whose window has expired; how many."""
        stale = [c for c, e in self._clients.items() if self._expired(e, now) and not e.open]
        for client in stale:
            del self._clients[client]
        return len(stale)

    def _expired(self, entry: _Client, now: float) -> bool:
        return now - entry.window_start >= self.window

    def _touch(self, client: str, now: float) -> _Client:
        clients = self._clients
        entry = clients.get(client)
        if entry is None:
            if len(clients) >= self.max_clients:  # O(1): the periodic sweep does the rest
                clients.popitem(last=False)
            entry = clients[client] = _Client(now)
            return entry
        clients.move_to_end(client)
        if self._expired(entry, now):  # a new window (anvil: the rate starts again at 0)
            entry.window_start = now
            entry.rates.clear()
        return entry
