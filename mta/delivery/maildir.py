"""Local delivery into a Maildir (tmp/ → new/ rename), readable by Dovecot or mutt.

The path template's ``{user}`` and ``{domain}`` come from the recipient; they are checked so
that no address can climb out of the template (no ``/``, no leading dot).  Each delivered
file starts with ``Return-Path`` and ``Delivered-To`` like Postfix's local(8), is fsynced,
renamed into ``new/`` and the directory is fsynced before success is reported (the queue's
durable write, mta/queue/durable.py).  A stored (large) message is copied from its message
file in chunks, never held whole, by the same ``replace_file``.  A failure to read it is
raised (``MessageReadError``), not reported as the mailbox's: the partial file in ``tmp/``
is removed either way.
"""

from __future__ import annotations

import itertools
import os
import socket
import time

from mta.delivery.stored import read_chunks
from mta.protocol.client_events import StoredMessage
from mta.queue.durable import replace_file
from mta.queue.results import RecipientResult

__all__ = ["deliver_maildir"]

_counter = 0


def _safe(part: str) -> bool:
    return bool(part) and "/" not in part and not part.startswith(".") and "\0" not in part


def _unique_name() -> str:
    global _counter
    _counter += 1
    now = time.time()
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{_counter}.{host}"


def _ensure_maildir(path: str) -> None:
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)


def _copy_durably(path: str, header: bytes, message: StoredMessage, tmp_path: str) -> None:
    """``replace_file`` for a stored message: ``header``, then the message in chunks."""
    chunks = read_chunks(message)
    try:
        replace_file(path, itertools.chain((header,), chunks), tmp_path)
    finally:
        chunks.close()


def deliver_maildir(
    template: str, recipient: str, sender: str, message: bytes | StoredMessage
) -> RecipientResult:
    """Deliver one copy; the result says sent, deferred (I/O trouble) or failed."""
    user, _, domain = recipient.rpartition("@")
    if not user:
        user, domain = recipient, ""
    user = user.lower()
    domain = domain.lower()
    if not _safe(user) or (domain and not _safe(domain)):
        return RecipientResult(
            address=recipient,
            status="failed",
            dsn="5.1.3",
            reply="550 5.1.3 recipient not deliverable to a mailbox",
            relay="local",
        )
    path = template.format(user=user, domain=domain)
    try:
        _ensure_maildir(path)
        name = _unique_name()
        tmp = os.path.join(path, "tmp", name)
        header = f"Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n".encode()
        if isinstance(message, bytes):
            replace_file(os.path.join(path, "new", name), header + message, tmp)
        else:
            _copy_durably(os.path.join(path, "new", name), header, message, tmp)
    except OSError as exc:
        return RecipientResult(
            address=recipient,
            status="deferred",
            dsn="4.3.0",
            reply=f"451 4.3.0 maildir delivery failed: {exc.strerror}",
            relay="local",
        )
    return RecipientResult(
        address=recipient,
        status="sent",
        dsn="2.0.0",
        reply=f"250 2.0.0 delivered to maildir {path}",
        relay="local",
    )
