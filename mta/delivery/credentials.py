"""The smarthost's credentials (``delivery.smtp_auth_file``): Postfix's smtp_sasl_password_maps.

    # comments and blank lines are ignored
    [smtp.example.com]:587    relay@example.org:app-password
    [email-smtp.eu-west-1.amazonaws.com]:465  AKIA...:secret
    smtp.example.net          user:pa:ss      (the password is all after the first ':')

The key is the next hop as routing names it: the relayhost or an ``smtp:`` route.  A next hop
``[host]:port`` finds ``[host]:port``, then ``[host]``, then ``host``.  Only configured next
hops (relayhost, routes) are looked up, never MX destinations: a password for a smarthost
must not go to whichever exchanger a recipient's domain names.

Invariants and failures (all :class:`~mta.config.ConfigError` naming the key and the file,
and the line when one is wrong, raised by :func:`load_credentials` at start — ``serve``,
``check-config`` — and on HUP before the running configuration is replaced):

* the file must not be readable or writable by group or others (as ssh refuses a private
  key): ``chmod 600`` it, owned by the account the delivery processes run as;
* a line is ``key whitespace username:password`` with a non-empty username and password;
  a key listed twice is an error.
* Passwords never reach a log: :class:`~mta.protocol.client_auth.Credentials` hides its
  password from ``repr`` and errors quote the key and line number only.
"""

from __future__ import annotations

import stat

from mta.config import Config, ConfigError, parse_hostport
from mta.delivery.routing import NextHop
from mta.private_file import read_private_text
from mta.protocol.client_auth import Credentials

__all__ = ["CredentialTable", "load_credentials"]

KEY = "delivery.smtp_auth_file"


class CredentialTable:
    """Credentials by next hop (keys lower-cased, as written: ``[host]:port``, ``host``)."""

    def __init__(self, entries: dict[str, Credentials]) -> None:
        self.entries = entries

    def lookup(self, nexthop: NextHop) -> Credentials | None:
        """The credentials for a relayhost or ``smtp:`` route; None for anything else."""
        if nexthop.mx or nexthop.kind != "smtp":
            return None
        host = nexthop.target.lower().rstrip(".")
        entries = self.entries
        for key in (f"[{host}]:{nexthop.port}", f"[{host}]", host):
            found = entries.get(key)
            if found is not None:
                return found
        return None

    def __contains__(self, nexthop: NextHop) -> bool:
        return self.lookup(nexthop) is not None


def load_credentials(config: Config) -> CredentialTable | None:
    """The table ``delivery.smtp_auth_file`` names (None when unset); ConfigError if it
    cannot be used."""
    path = config.delivery.smtp_auth_file
    if not path:
        return None
    return CredentialTable(
        dict(_entries(path, read_private_text(path, KEY, stat.S_IRWXG | stat.S_IRWXO, "600")))
    )


def _entries(path: str, text: str) -> list[tuple[str, Credentials]]:
    entries: dict[str, Credentials] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{KEY}: {path} line {number}"
        key, *rest = line.split(None, 1)
        username, colon, password = "".join(rest).partition(":")
        if not colon or not username or not password:
            raise ConfigError(f"{where}: expected [host]:port username:password")
        key = _key(key.lower(), where)
        if key in entries:
            raise ConfigError(f"{where}: {key} listed twice")
        entries[key] = Credentials(username, password)
    return list(entries.items())


def _key(key: str, where: str) -> str:
    """``[host]:port``, ``[host]`` or ``host``, checked; trailing dots dropped."""
    try:
        if key.startswith("[") and not key.endswith("]"):
            host, port = parse_hostport(key)
            return f"[{host.rstrip('.')}]:{port}"
        bracketed = key.startswith("[")
        host = key[1:-1] if bracketed else key
        if not host or any(c in "[]@/" or (c == ":" and not bracketed) for c in host):
            raise ValueError(f"{key!r} is not a host")
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    host = host.rstrip(".")
    return f"[{host}]" if key.startswith("[") else host
