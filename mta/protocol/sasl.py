"""SMTP AUTH (RFC 4954) exchanges of the PLAIN (RFC 4616) and LOGIN mechanisms, sans-I/O.

The session starts a :class:`SaslExchange` with the AUTH command's mechanism and optional
initial response and then feeds it the client's response lines, one at a time.  Each step
gives either the next line to send (a ``334`` challenge, or the error that ends the
exchange) or, once the client said all, an :class:`AuthRequest` with the credentials, which
the server verifies (the session waits on it as on any decision).

Rules kept here:

* Responses are base64 (RFC 4954 §4); ``*`` cancels (``501 5.7.0``); anything that is not
  strict base64 ends the exchange with ``501 5.5.2``.  An initial response of ``=`` is the
  empty one (RFC 4954 §4).
* PLAIN's message is ``authzid NUL authcid NUL passwd`` in UTF-8, with a non-empty authcid
  and password (RFC 4616 §2); LOGIN asks ``Username:`` then ``Password:`` (the de-facto
  protocol of draft-murchison-sasl-login), taking the username as initial response too.
* A response line may be up to :data:`MAX_RESPONSE_LINE` octets (RFC 4954 §4: 12288), more
  than an ordinary command line; the AUTH command line itself keeps the SMTP limit.
* The password never appears in a ``repr`` (``AuthRequest`` hides it), so an event that
  reaches a log or a traceback does not leak it.

:func:`auth_refusal` and :func:`valid_auth_param` hold the listener's AUTH rules that the
session applies to the AUTH verb and to MAIL's ``AUTH=`` parameter (RFC 4954 §5).
"""

from __future__ import annotations

import binascii
from typing import TYPE_CHECKING

from mta.protocol import replies
from mta.protocol.events import AuthRequest

if TYPE_CHECKING:
    from mta.protocol.session import SessionLimits

__all__ = [
    "MAX_RESPONSE_LINE",
    "MECHANISMS",
    "SaslExchange",
    "auth_offered",
    "auth_refusal",
    "start",
    "valid_auth_param",
]

MECHANISMS = ("PLAIN", "LOGIN")  # in the order advertised after "AUTH" in EHLO
# RFC 4954 §4: a response line of up to 12288 octets must be accepted (plus its CRLF).
MAX_RESPONSE_LINE = 12288 + 2

_USERNAME_PROMPT = replies.reply(334, "VXNlcm5hbWU6")  # base64 "Username:"
_PASSWORD_PROMPT = replies.reply(334, "UGFzc3dvcmQ6")  # base64 "Password:"
_EMPTY_CHALLENGE = b"334 \r\n"  # RFC 4954 §4: "334" SP, an empty challenge


class SaslExchange:
    """One AUTH exchange in progress; ``done`` once it gave credentials or an error."""

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism
        self.done = False
        self._username: str | None = None  # LOGIN: the username, once given

    def begin(self, initial: bytes | None) -> bytes | AuthRequest:
        """The AUTH command arrived, with its initial response (None: there was none)."""
        if initial is None:
            return _EMPTY_CHALLENGE if self.mechanism == "PLAIN" else _USERNAME_PROMPT
        if initial == b"=":  # RFC 4954 §4: "=" is an empty initial response
            initial = b""
        return self.respond(initial)

    def respond(self, line: bytes) -> bytes | AuthRequest:
        """One response line from the client, without its CRLF."""
        if line == b"*":
            return self._end(replies.AUTH_ABORTED)
        try:
            decoded = binascii.a2b_base64(line, strict_mode=True) if line else b""
            text = decoded.decode("utf-8")
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            return self._end(replies.AUTH_BAD_BASE64)
        if self.mechanism == "PLAIN":
            return self._plain(text)
        if self._username is None:
            self._username = text
            return _PASSWORD_PROMPT
        self.done = True
        return AuthRequest("LOGIN", "", self._username, text)

    def _plain(self, message: str) -> bytes | AuthRequest:
        parts = message.split("\x00")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            return self._end(replies.AUTH_BAD_PLAIN)
        self.done = True
        return AuthRequest("PLAIN", parts[0], parts[1], parts[2])

    def _end(self, reply: bytes) -> bytes:
        self.done = True
        return reply


def start(argument: bytes) -> tuple[SaslExchange | None, bytes | AuthRequest]:
    """The AUTH command's argument (``mechanism [initial-response]``): a new exchange and its
    first step, or (None, the reply refusing the command)."""
    words = argument.split(b" ")
    if not words[0] or len(words) > 2:
        return None, replies.AUTH_SYNTAX
    mechanism = words[0].upper().decode("latin-1")
    if mechanism not in MECHANISMS:
        return None, replies.AUTH_MECHANISM_UNKNOWN
    exchange = SaslExchange(mechanism)
    return exchange, exchange.begin(words[1] if len(words) == 2 else None)


def auth_offered(limits: SessionLimits, tls: bool) -> bool:
    """Is AUTH advertised and taken now?  Only under TLS, unless the listener explicitly
    allows plaintext (loopback tests); never before STARTTLS where TLS is required."""
    return limits.auth and (tls or (limits.auth_plaintext and not limits.require_tls))


def auth_refusal(limits: SessionLimits, tls: bool, authenticated: bool) -> bytes | None:
    """The reply refusing the AUTH verb on this listener now, or None if it is taken.

    Not offered at all: ``502`` (RFC 5321 §4.2.4).  Offered only under TLS and the client
    has not started it: ``530 5.7.0`` (RFC 3207 §4, Postfix's reply), so it knows what to do.
    Already authenticated: ``503`` (RFC 4954 §4: no second AUTH).
    """
    if not limits.auth:
        return replies.NOT_IMPLEMENTED
    if not auth_offered(limits, tls):
        return replies.MUST_STARTTLS if limits.starttls else replies.NOT_IMPLEMENTED
    return replies.ALREADY_AUTHENTICATED if authenticated else None


_XTEXT_PLAIN = frozenset(range(33, 127)) - {ord("+"), ord("=")}
_HEX_UPPER = frozenset(b"0123456789ABCDEF")


def valid_auth_param(value: str | None) -> bool:
    """MAIL's ``AUTH=`` (RFC 4954 §5): ``<>`` or an xtext (RFC 3461 §4) encoded mailbox."""
    if value is None or not value:
        return False
    if value == "<>":
        return True
    data = value.encode("ascii", "replace")
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        if c == 0x2B:  # "+" HEXCHAR HEXCHAR
            if i + 2 >= n or data[i + 1] not in _HEX_UPPER or data[i + 2] not in _HEX_UPPER:
                return False
            i += 3
        elif c in _XTEXT_PLAIN:
            i += 1
        else:
            return False
    return True
