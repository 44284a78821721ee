"""8-bit to 7-bit MIME conversion for a next hop without 8BITMIME (RFC 6152 §3, RFC 2045).

:func:`to_7bit` rewrites a message whose body has 8-bit octets so that every body is 7-bit,
as Postfix's SMTP client does (``disable_8bitmime_conversion = no``): a leaf part with
8-bit octets (``7bit``/``8bit``/``binary`` encoding, whatever its type) is encoded as
quoted-printable and its ``Content-Transfer-Encoding`` rewritten (or added); multipart
bodies are walked part by part with their boundary lines, preamble and epilogue kept as
they are; a ``message/rfc822`` body is walked as the message it is, and an ``8bit``
encoding label on a multipart or message/rfc822 whose content is now 7-bit becomes
``7bit``.  Headers are never converted (RFC 2047 is the author's business, and a header
section with 8-bit octets stays as it is, as in Postfix).

Invariants: a line-based walker, not ``email.generator``: every octet outside the bodies
that are encoded is kept exactly (line ends, folding, case of header names), so a message
that needs no conversion comes back identical.  Pure: no I/O, no logging; the caller
decides what to do with ``None`` (not MIME: no ``MIME-Version`` header, or a structure that
cannot be converted: a ``message/partial`` or ``message/external-body`` with 8-bit octets,
a multipart with 8-bit octets and no boundary, or nesting deeper than
:data:`NESTING_LIMIT`).
"""

from __future__ import annotations

import re

__all__ = ["NESTING_LIMIT", "encode_qp_lines", "to_7bit"]

NESTING_LIMIT = 100  # Postfix's mime_nesting_limit
QP_LINE = 76  # RFC 2045 §6.7 (5): encoded lines of at most 76 characters

_LINES = re.compile(rb"[^\n]*\n|[^\n]+")  # lines with their line end; the last may lack one
_BOUNDARY = re.compile(rb'(?i);\s*boundary\s*=\s*(?:"([^"]*)"|([^;\s]+))')
_FIELD_START = re.compile(rb"[^ \t]")


class _UnconvertibleError(Exception):
    """A structure whose 8-bit content cannot be made 7-bit."""


def to_7bit(message: bytes) -> bytes | None:
    """``message`` with every body 7-bit, or None when it is not MIME or cannot be
    converted (see the module docstring)."""
    head, blank, body = _split(message)
    if not any(name == b"mime-version" for name, _ in _fields(head)):
        return None
    try:
        return _entity(head, blank, body, b"text/plain", 0)
    except _UnconvertibleError:
        return None


def encode_qp_lines(body: bytes) -> bytes:
    """Quoted-printable (RFC 2045 §6.7) of ``body``, line by line: each CRLF stays a hard
    line break, anything else that is not printable ASCII is ``=XX``, trailing white space
    is encoded, and lines are broken with soft breaks at 76 characters."""
    out: list[bytes] = []
    for line in _LINES.findall(body):
        ending = b"\r\n" if line.endswith(b"\r\n") else b""
        content = line[: len(line) - len(ending)]
        out.append(_qp_line(content) + ending)
    return b"".join(out)


def _qp_line(content: bytes) -> bytes:
    pieces: list[bytes] = []
    last = len(content) - 1
    for i, octet in enumerate(content):
        if (33 <= octet <= 126 and octet != 61) or (octet in (9, 32) and i != last):
            pieces.append(bytes((octet,)))
        else:
            pieces.append(b"=%02X" % octet)
    lines: list[bytes] = []
    current = b""
    for piece in pieces:
        if len(current) + len(piece) > QP_LINE - 1:  # room for the soft break's "="
            lines.append(current + b"=")
            current = b""
        current += piece
    lines.append(current)
    return b"\r\n".join(lines)


def _split(entity: bytes) -> tuple[bytes, bool, bytes]:
    """(header section with its last CRLF, whether an empty line follows, body)."""
    if entity.startswith(b"\r\n"):
        return b"", True, entity[2:]
    end = entity.find(b"\r\n\r\n")
    if end < 0:
        return entity, False, b""
    return entity[: end + 2], True, entity[end + 4 :]


def _fields(head: bytes) -> list[tuple[bytes, bytes]]:
    """(lower-case name, the raw field with its continuation lines) for each field."""
    fields: list[tuple[bytes, bytes]] = []
    for line in _LINES.findall(head):
        if fields and not _FIELD_START.match(line):
            name, raw = fields[-1]
            fields[-1] = (name, raw + line)
        else:
            fields.append((line.partition(b":")[0].strip().lower(), line))
    return fields


def _value(raw: bytes) -> bytes:
    """A field's value, unfolded."""
    return re.sub(rb"\r\n[ \t]", b" ", raw.partition(b":")[2]).strip()


def _entity(head: bytes, blank: bool, body: bytes, default: bytes, depth: int) -> bytes:
    if depth > NESTING_LIMIT:
        raise _UnconvertibleError
    fields = _fields(head)
    content_type = default
    boundary = b""
    encoding = b""
    for name, raw in fields:
        if name == b"content-type":
            value = _value(raw)
            content_type = value.partition(b";")[0].strip().lower() or default
            found = _BOUNDARY.search(value)
            if found:
                boundary = found.group(1) if found.group(1) is not None else found.group(2)
        elif name == b"content-transfer-encoding":
            encoding = _value(raw).lower()
    if content_type.startswith(b"multipart/"):
        inner = b"message/rfc822" if content_type == b"multipart/digest" else b"text/plain"
        new_body = _multipart(body, boundary, inner, depth)
        return _rebuild(fields, blank, new_body, _label(encoding, new_body))
    if content_type == b"message/rfc822":
        inner_head, inner_blank, inner_body = _split(body)
        new_body = _entity(inner_head, inner_blank, inner_body, b"text/plain", depth + 1)
        return _rebuild(fields, blank, new_body, _label(encoding, new_body))
    if body.isascii():
        return _rebuild(fields, blank, body, _label(encoding, body))
    if content_type in (b"message/partial", b"message/external-body"):
        raise _UnconvertibleError  # RFC 2046 §5.2.2-3: 7bit only, and no encoding allowed
    if encoding in (b"", b"7bit", b"8bit", b"binary"):
        return _rebuild(fields, blank, encode_qp_lines(body), b"quoted-printable")
    return _rebuild(fields, blank, body, None)  # base64/QP with 8-bit octets: as it is


def _label(encoding: bytes, body: bytes) -> bytes | None:
    """The new encoding label of a body left unencoded: 7bit where 8bit/binary no longer
    applies, else unchanged (None)."""
    return b"7bit" if encoding in (b"8bit", b"binary") and body.isascii() else None


def _multipart(body: bytes, boundary: bytes, inner: bytes, depth: int) -> bytes:
    if body.isascii():
        return body
    if not boundary:
        raise _UnconvertibleError
    delimiter = b"--" + boundary
    out: list[bytes] = []
    part: list[bytes] | None = None  # None: in the preamble or the epilogue
    closed = False
    for line in _LINES.findall(body):
        bare = line.rstrip(b"\r\n").rstrip(b" \t")  # RFC 2046 §5.1.1: transport padding
        if not closed and bare in (delimiter, delimiter + b"--"):
            if part is not None:
                out.append(_part(b"".join(part), inner, depth))
            out.append(line)
            closed = bare != delimiter
            part = None if closed else []
        elif part is not None:
            part.append(line)
        else:
            out.append(line)
    if part is not None:  # no closing delimiter: the last part runs to the end
        out.append(_part(b"".join(part), inner, depth))
    return b"".join(out)


def _part(entity: bytes, default: bytes, depth: int) -> bytes:
    head, blank, body = _split(entity)
    return _entity(head, blank, body, default, depth + 1)


def _rebuild(
    fields: list[tuple[bytes, bytes]], blank: bool, body: bytes, encoding: bytes | None
) -> bytes:
    """The entity with ``body``, its Content-Transfer-Encoding set to ``encoding`` (None:
    the header section exactly as it was)."""
    if encoding is None:
        head = b"".join(raw for _, raw in fields)
    else:
        line = b"Content-Transfer-Encoding: " + encoding + b"\r\n"
        raws = [line if name == b"content-transfer-encoding" else raw for name, raw in fields]
        if not any(name == b"content-transfer-encoding" for name, _ in fields):
            raws.append(line)
        head = b"".join(raws)
    return head + b"\r\n" + body if blank or encoding is not None else head + body
