"""What delivery makes of the client session's AUTH outcome (RFC 4954) with a smarthost.

The session (:mod:`mta.protocol.client_session`) decides what is said; this module turns
its :class:`~mta.protocol.client_events.AuthFailed` into the :class:`DeliveryError` the
caller acts on, in Postfix's words, and logs what a successful handshake did with the
credentials, counting each outcome in ``mta_delivery_auth_total{outcome}``.

Invariants: every AUTH failure is temporary (Postfix's default
``smtp_sasl_auth_soft_bounce = yes``: a wrong password is the operator's to fix, and the
mail waits for that instead of bouncing; a ``5.7.8`` becomes ``4.7.8``); no text made here
holds a password (only the username, through ``for_log``).
"""

from __future__ import annotations

import logging

from mta import metrics
from mta.delivery.results import DeliveryError
from mta.protocol.client_auth import Credentials
from mta.protocol.client_events import AuthFailed, Ready
from mta.protocol.printable import for_log

__all__ = ["auth_error", "log_auth"]

log = logging.getLogger("mta.delivery")


def auth_error(event: AuthFailed, relay: str) -> DeliveryError:
    """Why we could not authenticate to ``relay``; always temporary."""
    metrics.DELIVERY_AUTH.labels(event.reason).inc()
    if event.reason == "no_tls":
        text = (
            f"cannot authenticate to server {relay}: it offers AUTH without TLS, "
            "and a password is never sent in clear text"
        )
        return DeliveryError(False, "4.7.0", text, relay)
    if event.reason == "no_mechanism" or event.reply is None:
        text = f"SASL authentication failed; cannot authenticate to server {relay}: "
        return DeliveryError(False, "4.7.0", text + "no mechanism available", relay)
    reply = event.reply
    dsn = "4" + reply.enhanced[1:]  # soft bounce: a 5.7.8 defers as 4.7.8
    text = f"SASL authentication failed; server {relay} said: {reply.text}"
    return DeliveryError(False, dsn, text, relay)


def log_auth(relay: str, credentials: Credentials, ready: Ready) -> None:
    """The handshake with credentials is done: say whether they were used."""
    username = for_log(credentials.username)
    metrics.DELIVERY_AUTH.labels("authenticated" if ready.auth else "not_offered").inc()
    if ready.auth:
        log.info("%s: authenticated as %s with %s", relay, username, ready.auth)
    else:  # Postfix delivers too; the operator should know the password was not used
        log.warning("%s offered no AUTH: delivering without authentication as %s", relay, username)
