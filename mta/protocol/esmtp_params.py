"""The ESMTP extensions a session offers, and the MAIL and RCPT parameters they bring.

What EHLO offers depends on the listener and the TLS state (:func:`ehlo_keywords`); a
parameter is taken only when its extension is offered in that session, and checked here
as its RFC says: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531), AUTH (RFC 4954
§5), the DSN parameters (RFC 3461, dsn_params.py) and REQUIRETLS (RFC 8689).  Each check
returns the reply for the first problem, or None; no I/O, no session state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mta.protocol import replies, sasl
from mta.protocol.dsn_params import (
    DSN_MAIL_PARAMS,
    DSN_RCPT_PARAMS,
    check_mail_param,
    check_rcpt_param,
)

if TYPE_CHECKING:
    from mta.protocol.session import SessionLimits

__all__ = ["ehlo_keywords", "mail_param_problem", "rcpt_param_problem", "utf8_problem"]

_BODY_TYPES = frozenset({"7BIT", "8BITMIME"})


def ehlo_keywords(limits: SessionLimits, tls: bool) -> list[str]:
    """The EHLO keywords of a session on a listener with ``limits``, in TLS or not."""
    extensions = [
        "PIPELINING",
        f"SIZE {limits.max_message_size}",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
        "CHUNKING",
        "DSN",
    ]
    if tls:  # RFC 8689 §2: offered only on a session that uses TLS
        extensions.append("REQUIRETLS")
    if limits.starttls and not tls:
        extensions.append("STARTTLS")
    if sasl.auth_offered(limits, tls):
        extensions.append("AUTH " + " ".join(sasl.MECHANISMS))
    return extensions


def mail_param_problem(
    params: dict[str, str | None],
    *,
    esmtp: bool,
    tls: bool,
    authenticated: bool,
    limits: SessionLimits,
) -> bytes | None:
    """The reply for MAIL parameters that cannot be taken, or None.  An ``AUTH=`` from a
    client that has not authenticated is replaced by ``<>`` (RFC 4954 §5: not trusted)."""
    if params and not esmtp:
        return replies.UNSUPPORTED_PARAM
    for name, value in params.items():
        if name == "SIZE":
            if value is None or not value.isdigit():
                return replies.BAD_SIZE_PARAM
            if int(value) > limits.max_message_size:
                return replies.reply(552, "5.3.4 Message size exceeds fixed limit")
        elif name == "BODY":
            if value is None or value.upper() not in _BODY_TYPES:
                return replies.BAD_BODY_PARAM
        elif name == "AUTH" and sasl.auth_offered(limits, tls):
            if not sasl.valid_auth_param(value):
                return replies.BAD_AUTH_PARAM
            if not authenticated:
                params["AUTH"] = "<>"
        elif name in DSN_MAIL_PARAMS:  # RFC 3461 §4.3, §4.4
            problem = check_mail_param(name, value)
            if problem is not None:
                return replies.reply(501, problem)
        elif name == "REQUIRETLS" and tls:  # RFC 8689 §2: no value, TLS only
            if value is not None:
                return replies.UNSUPPORTED_PARAM
        elif name != "SMTPUTF8" or value is not None:
            return replies.UNSUPPORTED_PARAM
    return None


def rcpt_param_problem(
    params: dict[str, str | None], *, esmtp: bool, smtputf8: bool
) -> bytes | None:
    """Only the DSN extension's NOTIFY and ORCPT (RFC 3461 §4.1, §4.2) are known."""
    for name, value in params.items():
        if name not in DSN_RCPT_PARAMS or not esmtp:
            return replies.UNSUPPORTED_PARAM
        problem = check_rcpt_param(name, value, smtputf8)
        if problem is not None:
            return replies.reply(501, problem)
    return None


def utf8_problem(address: str, params: dict[str, str | None]) -> bytes | None:
    """RFC 6531 §3.4: non-ASCII addresses only in an SMTPUTF8 transaction."""
    if address.isascii() or "SMTPUTF8" in params:
        return None
    return replies.NEED_SMTPUTF8
