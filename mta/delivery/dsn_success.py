"""The delivery agent's half of the DSN extension (RFC 3461 §5.2): the parameters a next hop
that offers DSN is given, and which recipients a success notice is due for.

* Every transaction carries the envelope's RET/ENVID and each recipient's NOTIFY/ORCPT (an
  ORCPT of the original recipient when the client gave none, as Postfix adds it); the
  client session says them only to a server that offers DSN.
* A recipient whose NOTIFY has SUCCESS and that was sent gets ``success_action``:
  ``delivered`` for final delivery (maildir; LMTP), ``relayed`` for a next hop that did
  not offer DSN; none when the next hop offered DSN (``dsn_passed``: it notifies) or the
  message was discarded.  The queue manager makes the report (mta/qmgr/notify.py).
"""

from __future__ import annotations

import msgspec

from mta.protocol.dsn_params import mail_params_to_pass, notify_set, rcpt_params_to_pass
from mta.queue.envelope import Envelope
from mta.queue.results import RecipientResult

__all__ = ["mark_success", "transaction_dsn"]


def transaction_dsn(envelope: Envelope) -> dict[str, object]:
    """The DSN fields of a Transaction (``mail_dsn``, ``rcpt_dsn``) for ``envelope``."""
    return {
        "mail_dsn": mail_params_to_pass(envelope.mail_params),
        "rcpt_dsn": {
            r.address: rcpt_params_to_pass(r.address, r.params) for r in envelope.recipients
        },
    }


def _wants_success(envelope: Envelope) -> set[str]:
    wanted = set()
    for recipient in envelope.recipients:
        notify = notify_set(recipient.params)
        if notify is not None and "SUCCESS" in notify:
            wanted.add(recipient.address)
    return wanted


def mark_success(
    envelope: Envelope, results: list[RecipientResult], hop_kind: str
) -> list[RecipientResult]:
    """``results`` with ``success_action`` set where a success notice is due."""
    wanted = _wants_success(envelope)
    if not wanted or hop_kind == "discard":
        return results
    final = hop_kind in ("maildir", "lmtp")  # RFC 3464 §2.3.3: delivered
    marked = []
    for result in results:
        if result.status == "sent" and result.address in wanted and not result.dsn_passed:
            action = "delivered" if final else "relayed"
            result = msgspec.structs.replace(result, success_action=action)
        marked.append(result)
    return marked
