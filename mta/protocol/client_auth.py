"""The client's side of SMTP AUTH (RFC 4954) with PLAIN (RFC 4616) or LOGIN, sans-I/O.

What :class:`~mta.protocol.client_session.ClientSession` says when it authenticates to a
smarthost: which mechanism (PLAIN when the server offers it, else LOGIN: the two every cloud
relay takes; no other is tried), and the lines of each.  The twin of :mod:`mta.protocol.sasl`
(the server's side).

Rules kept here:

* The password never appears in a ``repr`` (:class:`Credentials` hides it), so a session or
  an event that reaches a log or a traceback does not leak it.
* PLAIN is sent with its initial response (``AUTH PLAIN <base64>``, RFC 4954 §4): one round
  trip.  Its message is ``NUL authcid NUL passwd`` in UTF-8, no authzid (RFC 4616 §2).
* LOGIN answers the server's two ``334`` challenges (``Username:``, ``Password:``, the
  de-facto protocol of draft-murchison-sasl-login) with the base64 username and password.
* Whether a mechanism may be used at all (only over TLS) is the session's decision.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field

__all__ = [
    "MECHANISMS",
    "Credentials",
    "choose_mechanism",
    "login_line",
    "offered_mechanisms",
    "plain_command",
]

MECHANISMS = ("PLAIN", "LOGIN")  # in order of preference


@dataclass(frozen=True, slots=True)
class Credentials:
    """A username and password for one next hop (Postfix's smtp_sasl_password_maps value)."""

    username: str
    password: str = field(repr=False)


def offered_mechanisms(extensions: dict[str, str]) -> list[str]:
    """The SASL mechanisms of the EHLO reply: ``AUTH PLAIN LOGIN``, or the pre-RFC
    ``AUTH=PLAIN LOGIN`` form some old servers still send."""
    offered = extensions.get("AUTH", "").split()
    for keyword, params in extensions.items():
        if keyword.startswith("AUTH="):
            offered += [keyword[5:], *params.split()]
    return [m.upper() for m in offered]


def choose_mechanism(extensions: dict[str, str]) -> str:
    """PLAIN if offered, else LOGIN if offered, else "" (nothing we can use)."""
    offered = offered_mechanisms(extensions)
    return next((m for m in MECHANISMS if m in offered), "")


def _b64(text: str) -> bytes:
    return binascii.b2a_base64(text.encode("utf-8"), newline=False)


def plain_command(credentials: Credentials) -> bytes:
    """``AUTH PLAIN`` with its initial response (RFC 4616 §2: no authzid)."""
    message = f"\0{credentials.username}\0{credentials.password}"
    return b"AUTH PLAIN " + _b64(message) + b"\r\n"


def login_line(credentials: Credentials, step: int) -> bytes:
    """LOGIN's answer to its first (0: the username) or second (1: the password) challenge."""
    return _b64(credentials.password if step else credentials.username) + b"\r\n"
