"""Write a locally submitted message straight into the queue (the relay is down).

The same steps as smtpd's accepted message (spool.py, commit.py), done synchronously by
one process: the file is written in ``tmp/``, fsynced, renamed to ``incoming/.ID`` (left
alone by the queue manager while this process lives), ``incoming/`` is fsynced and only
then the file takes its queue ID, and ``incoming/`` is fsynced again.  So on exit 0 the
message is durable and whole, and a crash before leaves no half message to deliver (the
queue manager removes leftovers of a writer that is gone).  Then the queue manager is
woken; if it is not running, it finds the message when it starts.

Failures: :class:`QueueWriteError`, ``permanent`` when the spool cannot be written by this
user at all (EX_CANTCREAT), transient otherwise (EX_TEMPFAIL).
"""

from __future__ import annotations

import errno
import os
import time
from typing import TYPE_CHECKING

from mta.config import Config
from mta.queue.envelope import Envelope, Recipient
from mta.queue.ids import new_queue_id
from mta.queue.ipc import Queued, Waker
from mta.queue.spool import Spool

if TYPE_CHECKING:
    from mta.sendmail.options import Options
    from mta.sendmail.submit import Prepared

__all__ = ["QueueWriteError", "write_into_queue"]


class QueueWriteError(Exception):
    def __init__(self, text: str, permanent: bool) -> None:
        super().__init__(text)
        self.permanent = permanent


def write_into_queue(config: Config, message: Prepared, opts: Options, trace: bytes) -> str:
    """Queue ``message`` durably in ``incoming/``; its queue ID.  QueueWriteError."""
    spool = Spool(config.queue.path)
    queue_id = new_queue_id()
    try:
        spool.create()
        _write(spool, queue_id, message, opts, trace)
    except OSError as exc:
        permanent = exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
        where = exc.filename or spool.path
        text = f"cannot queue the message in {where}: {exc.strerror}"
        raise QueueWriteError(text, permanent) from None
    waker = Waker(spool.path)
    waker.send(Queued())
    waker.close()
    return queue_id


def _write(spool: Spool, queue_id: str, message: Prepared, opts: Options, trace: bytes) -> None:
    writer = spool.new_message(queue_id)
    try:
        writer.write(trace)
        writer.write(message.data)
        writer.spill()  # a file of its own: the queue manager finds it in incoming/
        writer.finish(_envelope(queue_id, message, opts, writer.length))
        writer.persist(sync=True)
        _give_to_spool_owner(spool, writer.tmp_path)
        spool.stage_incoming(queue_id)
        spool.sync("incoming")
        spool.publish_incoming(queue_id)
    except OSError:
        writer.discard()
        spool.unstage_incoming(queue_id)
        raise
    spool.sync("incoming")


def _give_to_spool_owner(spool: Spool, path: str) -> None:
    """Root submitting: the file belongs to the account the daemons run as (the spool's
    owner, master/privileges.py), which must read and remove it; the master's start-up
    check looks only at the spool's top level, so it would not fix it."""
    if os.geteuid() == 0:
        owner = os.stat(spool.path)
        os.chown(path, owner.st_uid, owner.st_gid)


def _envelope(queue_id: str, message: Prepared, opts: Options, size: int) -> Envelope:
    mail_params: dict[str, str | None] = {}
    if message.body == "8BITMIME":
        mail_params["BODY"] = "8BITMIME"
    if opts.ret:
        mail_params["RET"] = opts.ret
    if opts.envid:
        mail_params["ENVID"] = opts.envid
    rcpt_params: dict[str, str | None] = {"NOTIFY": opts.notify} if opts.notify else {}
    smtputf8 = not all(a.isascii() for a in (message.sender, *message.recipients))
    if smtputf8:
        mail_params["SMTPUTF8"] = None
    return Envelope(
        queue_id=queue_id,
        sender=message.sender,
        recipients=[Recipient(address=r, params=dict(rcpt_params)) for r in message.recipients],
        mail_params=mail_params,
        client_address="",
        client_helo="",
        received_at=time.time(),
        size=size,
        body_type=message.body,
        smtputf8=smtputf8,
    )
