"""Next-hop routing: which transport and destination each recipient goes to.

In order (like Postfix's transport_maps, then relayhost, then MX):
1. a ``[routes]`` entry for the recipient's domain: ``smtp:[host]:port``, ``lmtp:host:port``,
   ``maildir:/path/{domain}/{user}`` or ``discard``;
2. ``delivery.relayhost``: everything else goes to that one host;
3. the domain's MX hosts (dnspython), on ``delivery.smtp_port``.

``[host]`` in brackets means "this host, no MX lookup", as in Postfix; a plain host name in
an ``smtp:`` route or relayhost is also used directly (looked up by address, not MX).
Recipients with the same next hop are delivered in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from mta.config import Config, parse_hostport, parse_route

__all__ = ["NextHop", "Router"]


@dataclass(frozen=True, slots=True)
class NextHop:
    kind: str  # smtp | lmtp | maildir | discard
    target: str  # host (or domain when mx), or the maildir path template
    port: int = 0
    mx: bool = False  # look up the MX records of ``target``

    @property
    def key(self) -> str:
        """Names the destination for grouping, concurrency limits and logs."""
        if self.kind in ("smtp", "lmtp"):
            return f"{self.kind}:{self.target}:{self.port}" + (":mx" if self.mx else "")
        return f"{self.kind}:{self.target}"


def _domain(address: str) -> str:
    at = address.rfind("@")
    return address[at + 1 :].lower().rstrip(".") if at >= 0 else ""


class Router:
    def __init__(self, config: Config) -> None:
        self.smtp_port = config.delivery.smtp_port
        self.routes = {d.lower().rstrip("."): self._parse(r) for d, r in config.routes.items()}
        relay = config.delivery.relayhost
        self.relayhost: NextHop | None = None
        if relay:
            host, port = parse_hostport(relay, 25)
            self.relayhost = NextHop("smtp", host, port)

    @staticmethod
    def _parse(route: str) -> NextHop:
        kind, target = parse_route(route)
        if kind in ("smtp", "lmtp"):
            host, port = parse_hostport(target, 25 if kind == "smtp" else 24)
            return NextHop(kind, host, port)
        return NextHop(kind, target)

    def nexthop(self, recipient: str) -> NextHop:
        domain = _domain(recipient) or "localhost"
        route = self.routes.get(domain)
        if route is not None:
            return route
        if self.relayhost is not None:
            return self.relayhost
        return NextHop("smtp", domain, self.smtp_port, mx=True)

    def group(self, recipients: list[str]) -> dict[NextHop, list[str]]:
        groups: dict[NextHop, list[str]] = {}
        for recipient in recipients:
            groups.setdefault(self.nexthop(recipient), []).append(recipient)
        return groups
