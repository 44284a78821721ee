"""What smtpd decides about SMTP AUTH (RFC 4954): the credentials, the senders a login may
use, and how many failures a client may have.

* :class:`Authenticator` checks an :class:`~mta.protocol.events.AuthRequest` against the
  password file (passwords.py) on a small thread pool of its own, so the event loop never
  runs scrypt and a flood of AUTH attempts queues there instead of taking every thread.
  An authzid other than the username (PLAIN's "act as", RFC 4616 §2) is refused: nobody
  here may act for someone else.  The check costs the same whatever the outcome.
* :class:`SenderLogins` is Postfix's ``smtpd_sender_login_maps`` with
  ``reject_authenticated_sender_login_mismatch``, read from ``auth.sender_logins``::

      # login: the addresses and @domains it may send as
      alice: alice@example.org, @alice.example

  An authenticated client may use only the senders listed for its login (a login not
  listed owns none); the null sender is always allowed (bounces).  Addresses and domains
  compare case-insensitively.  A malformed line is a ConfigError naming the key, the file
  and the line.
* AUTH failures per client are counted by the per-client limits (``limits.auth_failures``,
  mta/policy/limits.py, across the node's workers), through
  ``WorkerContext.auth_failure_limit``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from mta.config import Config, ConfigError
from mta.policy.passwords import PasswordFile
from mta.protocol import replies
from mta.protocol.events import AuthRequest

__all__ = ["Authenticator", "SenderLogins", "load_auth_tables", "sender_refusal"]

_VERIFY_THREADS = 2  # scrypt is CPU and memory bound: more threads only queue elsewhere


def load_auth_tables(config: Config) -> tuple[Authenticator | None, SenderLogins | None]:
    """The AUTH tables ``config`` names (None for a key left empty); ConfigError if one
    cannot be used.  smtpd loads them at start, and a HUP replaces the workers, so a HUP
    re-reads them; the master loads them too, at start and on HUP, to refuse a broken file
    before any worker would."""
    auth = config.auth
    passwords = PasswordFile.load(auth.passwords) if auth.passwords else None
    logins = SenderLogins.load(auth.sender_logins) if auth.sender_logins else None
    return (Authenticator(passwords) if passwords is not None else None), logins


class Authenticator:
    """Verifies credentials off the event loop."""

    def __init__(self, passwords: PasswordFile) -> None:
        self.passwords = passwords
        self._pool: ThreadPoolExecutor | None = None  # made on first use (not in the master)

    async def verify(self, request: AuthRequest) -> bool:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_VERIFY_THREADS, thread_name_prefix="mta-auth")
        loop = asyncio.get_running_loop()
        good = await loop.run_in_executor(
            self._pool, self.passwords.verify, request.username, request.password
        )
        return good and request.authzid in ("", request.username)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class SenderLogins:
    """Which sender addresses (``a@b``) and domains (``@b``) each login may use."""

    KEY = "auth.sender_logins"

    def __init__(self, owned: dict[str, frozenset[str]]) -> None:
        self._owned = owned

    @classmethod
    def load(cls, path: str) -> SenderLogins:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(f"{cls.KEY}: {path}: cannot read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{cls.KEY}: {path}: not UTF-8 text") from None
        owned: dict[str, frozenset[str]] = {}
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                login, senders = cls._parse(line, f"{cls.KEY}: {path} line {number}")
                owned[login] = owned.get(login, frozenset()) | senders
        return cls(owned)

    @staticmethod
    def _parse(line: str, where: str) -> tuple[str, frozenset[str]]:
        login, sep, rest = line.partition(":")
        login = login.strip()
        items = [item.strip().lower() for item in rest.replace(",", " ").split()]
        if not sep or not login or not items:
            raise ConfigError(f"{where}: expected `login: address, @domain, ...`")
        for item in items:
            _, at, domain = item.rpartition("@")
            if not at or not domain.strip("."):
                raise ConfigError(f"{where}: {item!r} is neither user@domain nor @domain")
        return login, frozenset(items)

    def owns(self, login: str, sender: str) -> bool:
        """May ``login`` use ``sender`` as MAIL FROM?  ``<>`` always."""
        if not sender:
            return True
        owned = self._owned.get(login)
        if not owned:
            return False
        address = sender.lower()
        return address in owned or "@" + address.rpartition("@")[2].rstrip(".") in owned


def sender_refusal(logins: SenderLogins | None, login: str | None, sender: str) -> bytes | None:
    """MAIL of an authenticated client: the ``553`` refusing a sender its login does not
    own (Postfix's reply), else None.  No table, or no AUTH: nothing to check."""
    if logins is None or login is None or logins.owns(login, sender):
        return None
    return replies.reply(
        553, f"5.7.1 <{sender}>: Sender address rejected: not owned by user {login}"
    )
