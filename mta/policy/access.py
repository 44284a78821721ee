"""Access tables in the shape of Postfix's access(5): one format for client, HELO, sender
and recipient checks, with the same actions everywhere.

A table file has one ``key action`` per line; ``#`` starts a comment line; blank lines and
leading whitespace are ignored.  Keys are case-insensitive and a trailing dot is ignored.

* client tables: an IPv4 or IPv6 address, or a network (``192.0.2.0/24``,
  ``2001:db8::/32``); the first entry (in file order) that contains the client wins, as in
  a Postfix ``cidr:`` table.  An IPv4-mapped IPv6 client (``::ffff:192.0.2.1``) is looked
  up as its IPv4 address.
* HELO tables: ``host.example`` matches that name; ``.example`` matches every name below
  it (Postfix with ``parent_domain_matches_subdomains`` not listing smtpd_access_maps).
* address tables (sender, recipient): looked up as ``user@domain``, then ``domain``, then
  the parent domains as ``.parent``, then ``user@`` (access(5)'s order).  ``<>`` is the key
  of the null sender (Postfix's smtpd_null_access_lookup_key).

Actions: ``OK``, ``REJECT [text]``, ``DEFER [text]``, ``HOLD [text]``, ``DISCARD [text]``,
and ``4NN text`` / ``5NN text`` (the code given; an enhanced status code at the start of the
text is kept, else 4.7.1 / 5.7.1 is used, as Postfix does).

A line that is not one of these is a :class:`TableError` naming the file, the line number
and the key: tables are read before serving, so a typo stops the start (or a reload), it
is never discovered by a client.  A table is immutable once loaded; a reload builds new
ones and swaps them whole.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass

from mta.policy.networks import Network, client_address

__all__ = [
    "AccessTable",
    "Action",
    "Kind",
    "TableError",
    "address_keys",
    "client_address",
    "domain_keys",
    "load_table",
    "parse_table",
]


_ENHANCED = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}(?: |$)")
_CLIENT_CACHE_MAX = 10_000  # client lookups remembered per table


class TableError(ValueError):
    """A table file that cannot be used; the text names the file, line and key."""


class Kind(enum.Enum):
    OK = "ok"
    REJECT = "reject"  # REJECT, or 5NN text
    DEFER = "defer"  # DEFER, or 4NN text
    HOLD = "hold"
    DISCARD = "discard"


@dataclass(frozen=True, slots=True)
class Action:
    """What a table says about a key: its kind and, for refusals, the reply's parts."""

    kind: Kind
    text: str = ""  # the operator's text, "" for the default
    code: int = 0  # 4NN / 5NN for refusals
    status: str = ""  # the enhanced status code of a refusal

    def reply_text(self, key: str, what: str) -> str:
        """``554 5.7.1 <key>: Recipient address rejected: Access denied`` without CRLF, as
        Postfix words it (``what`` is "Client host", "Helo command", "Sender address", ...)."""
        return f"{self.code} {self.status} <{key}>: {what} rejected: {self.text or 'Access denied'}"


def parse_action(value: str) -> Action:
    """An access(5) action; ValueError if it is none."""
    word, _, text = value.partition(" ")
    text = text.strip()
    upper = word.upper()
    if upper == "OK" and not text:
        return Action(Kind.OK)
    if upper == "REJECT":
        return Action(Kind.REJECT, text, 554, "5.7.1")
    if upper == "DEFER":
        return Action(Kind.DEFER, text, 450, "4.7.1")
    if upper in ("HOLD", "DISCARD"):
        return Action(Kind[upper], text)
    if len(word) == 3 and word.isdigit() and word[0] in "45":
        if not text:
            raise ValueError(f"{word} needs a text")
        status = f"{word[0]}.7.1"
        found = _ENHANCED.match(text)
        if found is not None:
            if found.group(1) != word[0]:
                raise ValueError(f"enhanced status code in {value!r} does not match {word}")
            status, _, text = text.partition(" ")
        kind = Kind.DEFER if word[0] == "4" else Kind.REJECT
        return Action(kind, text.strip(), int(word), status)
    raise ValueError(f"{value!r} is not OK, REJECT, DEFER, HOLD, DISCARD or 4NN/5NN text")


def _normal(key: str) -> str:
    return key.strip().lower().rstrip(".")


def domain_keys(domain: str) -> list[str]:
    """``a.b.example`` → ``a.b.example``, ``.b.example``, ``.example`` (the name, then
    every parent as ``.parent``)."""
    domain = _normal(domain)
    keys = [domain]
    rest = domain
    while (dot := rest.find(".")) >= 0:
        rest = rest[dot + 1 :]
        if rest:
            keys.append("." + rest)
    return keys


def address_keys(address: str) -> list[str]:
    """The access(5) lookup order of an address: ``user@domain``, ``domain`` and its
    parents, ``user@``; the null sender is ``<>``; an address without domain is itself."""
    if not address:
        return ["<>"]
    address = _normal(address)
    local, at, domain = address.rpartition("@")
    if not at:
        return [domain]
    return [address, *domain_keys(domain), f"{local}@"]


class AccessTable:
    """One loaded table: names (domains, addresses) or networks (client tables)."""

    def __init__(
        self,
        names: dict[str, Action] | None = None,
        networks: list[tuple[Network, Action]] | None = None,
        source: str = "",
    ) -> None:
        self.names = names or {}
        self.networks = networks or []
        self.source = source
        self._clients: dict[str, Action | None] = {}

    def __bool__(self) -> bool:
        return bool(self.names or self.networks)

    def __len__(self) -> int:
        return len(self.names) + len(self.networks)

    def client(self, client_ip: str) -> Action | None:
        """The first network entry containing ``client_ip`` (remembered per address)."""
        if not self.networks:
            return None
        try:
            return self._clients[client_ip]
        except KeyError:
            pass
        found = None
        address = client_address(client_ip)
        if address is not None:
            for network, action in self.networks:
                if address.version == network.version and address in network:
                    found = action
                    break
        if len(self._clients) < _CLIENT_CACHE_MAX:
            self._clients[client_ip] = found
        return found

    def helo(self, name: str) -> Action | None:
        return self._domain(_normal(name)) if self.names and name else None

    def address(self, address: str) -> Action | None:
        """The first hit in :func:`address_keys` order (the same walk, without the list)."""
        names = self.names
        if not names:
            return None
        if not address:
            return names.get("<>")
        address = _normal(address)
        local, at, domain = address.rpartition("@")
        if not at:
            return names.get(domain)
        found = names.get(address) or self._domain(domain)
        return found if found is not None else names.get(local + "@")

    def _domain(self, domain: str) -> Action | None:
        """The name, then each parent as ``.parent`` (:func:`domain_keys`)."""
        names = self.names
        found = names.get(domain)
        dot = domain.find(".")
        while found is None and dot >= 0:
            found = names.get(domain[dot:]) if dot + 1 < len(domain) else None
            dot = domain.find(".", dot + 1)
        return found


def parse_table(text: str, source: str, client: bool = False) -> AccessTable:
    """Parse a table's text (``source`` names it in errors); TableError on a bad line."""
    names: dict[str, Action] = {}
    networks: list[tuple[Network, Action]] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        key = parts[0]
        where = f"{source}, line {number}: {key!r}"
        if len(parts) < 2:
            raise TableError(f"{where}: no action")
        try:
            action = parse_action(parts[1].strip())
        except ValueError as exc:
            raise TableError(f"{where}: {exc}") from None
        if client:
            try:
                networks.append((ipaddress.ip_network(key, strict=False), action))
            except ValueError:
                raise TableError(f"{where}: not an IP address or network") from None
            continue
        normal = _normal(key)
        if not normal or normal in (".", "@"):
            raise TableError(f"{where}: not a name or address")
        names.setdefault(normal, action)  # the first line for a key wins
    return AccessTable(names, networks, source)


def load_table(path: str, client: bool = False) -> AccessTable:
    """Read a table file; TableError if it cannot be read or has a bad line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise TableError(f"{path}: cannot read: {exc}") from None
    return parse_table(text, path, client)
