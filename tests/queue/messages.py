"""Messages for the queue tests, finished the way smtpd finishes them."""

from __future__ import annotations

from mta.queue.envelope import Envelope, Recipient
from mta.queue.ids import new_queue_id
from mta.queue.spool import MessageWriter, Spool


def finished_message(
    spool: Spool, body: bytes = b"Subject: t\r\n\r\nbody\r\n", queue_id: str = ""
) -> MessageWriter:
    """A message written and finished, ready to be committed (in memory if it is small)."""
    writer = spool.new_message(queue_id or new_queue_id())
    writer.write(body)
    writer.finish(
        Envelope(
            queue_id=writer.queue_id,
            sender="a@x.test",
            recipients=[Recipient(address="b@y.test")],
            size=writer.length,
        )
    )
    return writer
