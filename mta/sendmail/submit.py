"""One message from ``sendmail``'s stdin into the relay, or straight into the queue.

The message is read whole, up to ``smtp.max_message_size`` (Postfix's message_size_limit;
more is EX_DATAERR), its line ends made CRLF, and without ``-i`` a line with a lone dot
ends it.  With ``-t`` the recipients come from To, Cc and Bcc (added to those on the
command line) and Bcc is removed (Postfix's cleanup does the same).  From (with ``-F``'s
full name), Date and Message-ID are added when missing, as Postfix's cleanup does for
local mail.

The relay is asked first.  A connection that fails or a temporary failure (4xx) sends the
message into the queue directly: that writer is the one smtpd uses, the file is durable in
``incoming/`` before we exit 0, and the queue manager is woken (it polls anyway).  A
permanent refusal is the caller's to hear: EX_NOUSER for recipients, EX_DATAERR otherwise.
"""

from __future__ import annotations

import os
import re
import smtplib
import sys
import time
from typing import BinaryIO

from mta.config import Config
from mta.sendmail.local import (
    default_sender,
    extract_recipients,
    login_name,
    new_headers,
    smtp_client,
)
from mta.sendmail.options import (
    EX_CANTCREAT,
    EX_DATAERR,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
    Options,
)

__all__ = ["Prepared", "prepare", "submit"]

_FOLDED = re.compile(rb"^[ \t]")


class Prepared:
    """The message as it will be queued, with its envelope."""

    def __init__(self, data: bytes, sender: str, recipients: list[str], body: str) -> None:
        self.data = data
        self.sender = sender
        self.recipients = recipients
        self.body = body  # "7BIT" or "8BITMIME"


class MessageTooLargeError(Exception):
    """More on stdin than the relay would take."""


def read_message(stream: BinaryIO, dots: bool, limit: int) -> list[bytes]:
    """Lines without their ends; stops at a lone dot unless ``dots`` is off.
    MessageTooLargeError past ``limit`` octets."""
    lines = []
    size = 0
    for raw in stream:
        line = raw.rstrip(b"\n").rstrip(b"\r")
        if dots and line == b".":
            break
        size += len(line) + 2
        if size > limit:
            raise MessageTooLargeError(
                f"message larger than {limit} octets (smtp.max_message_size)"
            )
        lines.append(line)
    return lines


def split_headers(lines: list[bytes]) -> tuple[list[list[bytes]], list[bytes]]:
    """Header fields (each a list of its physical lines) and the body lines."""
    fields: list[list[bytes]] = []
    for i, line in enumerate(lines):
        if line == b"":
            return fields, lines[i + 1 :]
        if _FOLDED.match(line) and fields:
            fields[-1].append(line)
        elif b":" in line and not _FOLDED.match(line):
            fields.append([line])
        else:
            return fields, lines[i:]  # not a header: the body starts here
    return fields, []


def _name(field: list[bytes]) -> str:
    return field[0].split(b":", 1)[0].strip().decode("ascii", "replace").lower()


def _value(field: list[bytes]) -> str:
    text = b"\r\n".join(field).split(b":", 1)[1]
    return text.decode("utf-8", "replace").replace("\r\n", "")


def prepare(config: Config, opts: Options, stream: BinaryIO) -> Prepared:
    lines = read_message(stream, opts.dots, config.smtp.max_message_size)
    if lines and lines[0].startswith(b"From "):
        del lines[0]  # an mbox separator, not a header (Postfix's cleanup drops it too)
    fields, body = split_headers(lines)
    recipients = list(opts.recipients)
    if opts.extract:
        values = [_value(f) for f in fields if _name(f) in ("to", "cc", "bcc")]
        recipients += [r for r in extract_recipients(values) if r not in recipients]
        fields = [f for f in fields if _name(f) not in ("bcc", "resent-bcc")]
    sender = default_sender(config) if opts.sender is None else opts.sender
    added = new_headers(config, {_name(f) for f in fields}, sender, opts.fullname)
    head = b"".join(line + b"\r\n" for f in fields for line in f)
    data = added + head + b"\r\n" + b"".join(line + b"\r\n" for line in body)
    eight_bit = any(byte > 127 for byte in data)
    return Prepared(data, sender, recipients, opts.body or ("8BITMIME" if eight_bit else "7BIT"))


def submit(config: Config, opts: Options, stream: BinaryIO) -> int:
    try:
        message = prepare(config, opts, stream)
    except MessageTooLargeError as exc:
        print(f"sendmail: fatal: {exc}", file=sys.stderr)
        return EX_DATAERR
    if not message.recipients:
        print("sendmail: fatal: no recipient addresses found", file=sys.stderr)
        return EX_USAGE
    status = _via_relay(config, opts, message)
    if status is not None:
        return status
    from mta.sendmail.queue_write import QueueWriteError, write_into_queue

    try:
        queue_id = write_into_queue(config, message, opts, received_header(config))
    except QueueWriteError as exc:
        print(f"sendmail: fatal: {exc}", file=sys.stderr)
        return EX_CANTCREAT if exc.permanent else EX_TEMPFAIL
    if opts.verbose:
        print(f"sendmail: {queue_id}: queued directly (the relay did not take it)", file=sys.stderr)
    return EX_OK


def _via_relay(config: Config, opts: Options, message: Prepared) -> int | None:
    """The exit status, or None when the queue should take the message directly."""
    try:
        with smtp_client(config, opts.verbose) as client:
            mail_options, rcpt_options = _extensions(client, opts, message)
            refused = client.sendmail(
                message.sender, message.recipients, message.data, mail_options, rcpt_options
            )
    except smtplib.SMTPRecipientsRefused as exc:
        return _refused(exc.recipients)
    except smtplib.SMTPSenderRefused as exc:
        return _permanent_or_none(exc.smtp_code, f"sender <{exc.sender}>", exc.smtp_error)
    except smtplib.SMTPResponseException as exc:
        return _permanent_or_none(exc.smtp_code, "message", exc.smtp_error)
    except (OSError, smtplib.SMTPException) as exc:
        if opts.verbose:
            print(f"sendmail: the relay is not answering ({exc})", file=sys.stderr)
        return None
    return _partly_refused(message, refused) if refused else EX_OK


def _extensions(
    client: smtplib.SMTP, opts: Options, message: Prepared
) -> tuple[list[str], list[str]]:
    client.ehlo_or_helo_if_needed()
    mail: list[str] = []
    rcpt: list[str] = []
    if message.body == "8BITMIME" and client.has_extn("8bitmime"):
        mail.append("BODY=8BITMIME")
    if client.has_extn("dsn"):  # -N / -R / -V (RFC 3461), as Postfix's sendmail passes them
        if opts.ret:
            mail.append(f"RET={opts.ret}")
        if opts.envid:
            mail.append(f"ENVID={opts.envid}")
        if opts.notify:
            rcpt.append(f"NOTIFY={opts.notify}")
    return mail, rcpt


def _refused(recipients: dict[str, tuple[int, bytes]]) -> int | None:
    if all(400 <= code < 500 for code, _ in recipients.values()):
        return None
    for address, (code, text) in recipients.items():
        print(f"sendmail: <{address}>: {code} {text.decode(errors='replace')}", file=sys.stderr)
    return EX_NOUSER


def _partly_refused(message: Prepared, refused: dict[str, tuple[int, bytes]]) -> int | None:
    """Some recipients took it: the others that failed for now go into the queue (None),
    and those refused for good are reported."""
    later = [address for address, (code, _) in refused.items() if 400 <= code < 500]
    final = {a: reply for a, reply in refused.items() if a not in later}
    status = _refused(final) if final else None
    if later:
        message.recipients = later
        return None
    return status


def _permanent_or_none(code: int, what: str, text: bytes | str) -> int | None:
    if 400 <= code < 500 or code < 0:
        return None
    detail = text.decode(errors="replace") if isinstance(text, bytes) else text
    print(f"sendmail: {what} refused: {code} {detail}", file=sys.stderr)
    return EX_DATAERR


def received_header(config: Config) -> bytes:
    """The trace Postfix's pickup writes for local mail: no client, the submitting uid."""
    from email.utils import formatdate

    who = f"from userid {os.getuid()}"
    stamp = formatdate(time.time(), localtime=True)
    return f"Received: by {config.fqdn} (mta, {who}; {login_name()});\r\n\t{stamp}\r\n".encode()
