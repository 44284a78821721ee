"""Every table the edge decides with, loaded together from the configuration.

:func:`load_tables` reads the ``[access]`` tables and ``relay.recipients`` and returns one
immutable :class:`PolicyTables`.  An smtpd worker loads them once at start (a HUP replaces
the workers, so a reload re-reads them); the master loads them too before it starts or
reloads, so that a bad table is refused as a configuration error (naming the key, the file
and the line) before anything serves with it, and a reload with one keeps the running
configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mta.config import Config, ConfigError
from mta.policy.access import AccessTable, TableError, load_table
from mta.policy.recipients import RecipientTable, load_recipients

__all__ = ["PolicyTables", "load_tables"]


@dataclass(frozen=True)
class PolicyTables:
    client: AccessTable = field(default_factory=AccessTable)
    helo: AccessTable = field(default_factory=AccessTable)
    sender: AccessTable = field(default_factory=AccessTable)
    recipient: AccessTable = field(default_factory=AccessTable)
    accepted_domains: frozenset[str] = frozenset()
    recipients: RecipientTable = field(default_factory=RecipientTable.accepting_any)
    has_access: bool = field(init=False)  # any access table has entries

    def __post_init__(self) -> None:
        tables = (self.client, self.helo, self.sender, self.recipient)
        object.__setattr__(self, "has_access", any(tables))  # frozen: set once, here


def load_tables(config: Config) -> PolicyTables:
    """Read every table the configuration names; ConfigError (``key: file, line N: ...``)
    if one cannot be read or has a bad line."""
    access = config.access

    def table(key: str, path: str, client: bool = False) -> AccessTable:
        if not path:
            return AccessTable()
        try:
            return load_table(path, client)
        except TableError as exc:
            raise ConfigError(f"access.{key}: {exc}") from None

    recipients = RecipientTable.accepting_any()
    if config.relay.recipients:
        try:
            recipients = load_recipients(config.relay.recipients)
        except TableError as exc:
            raise ConfigError(f"relay.recipients: {exc}") from None
    return PolicyTables(
        client=table("client", access.client, client=True),
        helo=table("helo", access.helo),
        sender=table("sender", access.sender),
        recipient=table("recipient", access.recipient),
        accepted_domains=config.accepted_domains(),
        recipients=recipients,
    )
