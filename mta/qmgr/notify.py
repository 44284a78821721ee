"""Which delivery status notifications a message's sender asked for, and making them
(RFC 3461 NOTIFY/RET/ENVID/ORCPT, RFC 3464 reports; the queue manager's decisions).

* A failure is reported unless the recipient's NOTIFY lacks FAILURE (NEVER included);
  without NOTIFY it is reported (RFC 3461 §4.1, as Postfix does).
* A delay is reported once per message (``delivery.delay_warning_time``), to recipients whose
  NOTIFY has DELAY or who gave no NOTIFY (as Postfix does).
* A success is reported only when NOTIFY has SUCCESS and the delivery agent said so
  (``RecipientResult.success_action``: delivered, or relayed to a next hop without DSN).
* RET=FULL returns the whole message in a failure report when it is no larger than
  :data:`~mta.qmgr.dsn.RETURN_SIZE_LIMIT`; otherwise (RET=HDRS, no RET, or larger) the
  headers only.  ENVID becomes Original-Envelope-Id, ORCPT Original-Recipient.

No notification is made for a message from ``<>`` or for one we generated (the caller
checks); this module makes bytes, the caller queues them.
"""

from __future__ import annotations

from collections.abc import Sequence

from mta.protocol.dsn_params import envid_display, notify_set, orcpt_display
from mta.qmgr.dsn import RETURN_SIZE_LIMIT, Notice, build_report
from mta.queue.envelope import Envelope
from mta.queue.msgfile import MessageFile
from mta.queue.results import RecipientResult

__all__ = ["make_report", "notices", "wants"]


def _params(envelope: Envelope, address: str) -> dict[str, str | None]:
    for recipient in envelope.recipients:
        if recipient.address == address:
            return recipient.params
    return {}


def wants(envelope: Envelope, address: str, word: str) -> bool:
    """Did the recipient's NOTIFY ask for ``word`` (SUCCESS, FAILURE, DELAY)?  Without
    NOTIFY: failures and delays yes, success no."""
    notify = notify_set(_params(envelope, address))
    if notify is None:
        return word != "SUCCESS"
    return word in notify


def notices(envelope: Envelope, results: Sequence[RecipientResult], action: str) -> list[Notice]:
    """A notice per result, with the recipient's ORCPT."""
    return [Notice(r, action, orcpt_display(_params(envelope, r.address))) for r in results]


def make_report(
    hostname: str,
    message: MessageFile,
    items: Sequence[Notice],
    arrival: float,
    now: float,
    retry_until: float | None = None,
) -> bytes:
    """The report for ``items`` (all of one action) about ``message``."""
    envelope = message.envelope
    full = (
        items[0].action == "failed"
        and (envelope.mail_params.get("RET") or "").upper() == "FULL"
        and envelope.size <= RETURN_SIZE_LIMIT
        # RFC 8689 §5: a REQUIRETLS message's notification returns its headers only
        and "REQUIRETLS" not in envelope.mail_params
    )
    return build_report(
        hostname=hostname,
        queue_id=envelope.queue_id,
        sender=envelope.sender,
        arrival=arrival,
        notices=items,
        original=message.read_message() if full else message.read_headers(),
        full_message=full,
        envid=envid_display(envelope.mail_params),
        retry_until=retry_until,
        now=now,
    )
