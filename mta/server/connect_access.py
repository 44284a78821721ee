"""The access checks of the connect stage (smtpd._open), before the greeting.

* Early talker (``access.greet_pause``; postscreen's ``postscreen_greet_wait``, smtpd's
  pre-greeting pause): wait that long, then refuse a client that sent anything before
  being greeted with ``554 5.5.1 Error: protocol error, pre-greeting traffic``.  RFC 5321
  §4.3.1 has the client wait for the 220; spamware that talks first is refused for it.
* DNSBL (``[dnsbl]``): the lookup starts here and runs while the session goes on; the
  verdict is applied at RCPT (mta/policy/decide.py), so the greeting never waits for DNS.

Clients in ``relay.networks`` are exempt from both (postscreen's ``permit_mynetworks``),
and the pause applies on MX listeners only (a ``submissions`` client speaks TLS first).
The client address is read when the check runs, after a PROXY header has replaced it, so
these checks come after the PROXY check in ``WorkerContext.connect_checks``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from mta.protocol import replies
from mta.protocol.printable import for_log

if TYPE_CHECKING:
    from mta.policy.dnsbl import DnsblChecker
    from mta.server.smtpd import ConnectCheck, SMTPProtocol

__all__ = ["PREGREET", "access_connect_checks"]

log = logging.getLogger("mta.smtpd")

PREGREET = replies.reply(554, "5.5.1 Error: protocol error, pre-greeting traffic")


def access_connect_checks(greet_pause: float, dnsbl: DnsblChecker | None) -> list[ConnectCheck]:
    """The connect checks the configuration asks for (none by default)."""
    checks: list[ConnectCheck] = []
    if dnsbl is not None:
        checks.append(_dnsbl_starter(dnsbl))
    if greet_pause > 0:
        checks.append(_early_talker(greet_pause))
    return checks


def _dnsbl_starter(checker: DnsblChecker) -> ConnectCheck:
    async def start_dnsbl(protocol: SMTPProtocol) -> bytes | None:
        if not protocol.ctx.policy.client_may_relay(protocol.client_ip):
            protocol.dnsbl_lookup = protocol.ctx.loop.create_task(checker.check(protocol.client_ip))
        return None

    return start_dnsbl


def _on_mx_listener(protocol: SMTPProtocol) -> bool:
    """Like postscreen, the pause is for port 25: a client of an implicit-TLS listener
    rightly speaks first (its TLS ClientHello), and submission clients are known users."""
    return protocol.listener.listener.role == "mx"


def _early_talker(pause: float) -> ConnectCheck:
    async def pregreet(protocol: SMTPProtocol) -> bytes | None:
        client = protocol.client_ip
        if protocol.ctx.policy.client_may_relay(client) or not _on_mx_listener(protocol):
            return None
        await asyncio.sleep(pause)
        early = protocol._early
        if not early:
            return None
        protocol.ctx.count_reject("pregreet")
        log.info(
            "NOQUEUE: reject: CONNECT from unknown[%s]: 554 5.5.1 Error: protocol error, "
            "pre-greeting traffic; %d octets after %gs: %s",
            client,
            len(early),
            pause,
            for_log(bytes(early[:64]).decode("latin-1")),
        )
        return PREGREET

    return pregreet
