"""The 8-bit to 7-bit converter (mta.delivery.mime_7bit): pure tests, each result parsed back
with the email package to check that it decodes to the same text."""

from __future__ import annotations

import email
import email.policy

from hypothesis import given
from hypothesis import strategies as st

from mta.delivery.mime_7bit import QP_LINE, encode_qp_lines, to_7bit

TEXT = "Grüße aus Köln, ça va? Ünïcödé ✓\r\n" * 3


def text(part: email.message.EmailMessage) -> str:
    return str(part.get_content()).replace("\r\n", "\n")


NL_TEXT = TEXT.replace("\r\n", "\n")


def parse(message: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(message, policy=email.policy.default)  # type: ignore[return-value]


def test_text_body_becomes_quoted_printable_that_decodes_to_the_same_text() -> None:
    message = (
        b"From: a@x.test\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + TEXT.encode()
    )
    out = to_7bit(message)
    assert out is not None and out.isascii()
    assert out.startswith(b"From: a@x.test\r\nSubject: hi\r\nMIME-Version: 1.0\r\n")
    assert b"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" in out
    assert b"8bit" not in out
    assert all(len(line) <= QP_LINE for line in out.split(b"\r\n"))
    assert text(parse(out)) == NL_TEXT


def test_missing_encoding_header_is_added() -> None:
    head = b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    out = to_7bit(head + b"\r\n" + TEXT.encode())
    assert out is not None and out.isascii()
    assert out.startswith(head + b"Content-Transfer-Encoding: quoted-printable\r\n\r\n")
    assert parse(out)["Content-Transfer-Encoding"] == "quoted-printable"
    assert text(parse(out)) == NL_TEXT


def test_not_mime_is_none() -> None:
    assert to_7bit(b"Subject: x\r\n\r\n" + TEXT.encode()) is None


def test_multipart_converts_only_the_8bit_part_and_keeps_the_rest() -> None:
    ascii_part = (
        b"--b1\r\nContent-Type: text/plain\r\n\r\nplain ascii\r\n"
        b"--b1\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n"
    )
    message = (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n\tboundary="b1"\r\n'
        b"Content-Transfer-Encoding: 8bit\r\n\r\npreamble\r\n"
        + ascii_part
        + b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
        + b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + TEXT.encode()
        + b"--b1--  \r\nepilogue\r\n"
    )
    out = to_7bit(message)
    assert out is not None and out.isascii()
    assert ascii_part in out  # untouched parts byte for byte, boundaries kept
    assert b"--b1--  \r\nepilogue\r\n" in out
    assert b'boundary="b1"\r\nContent-Transfer-Encoding: 7bit\r\n' in out
    parts = list(parse(out).iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "application/octet-stream",
        "text/plain",
    ]
    assert text(parts[0]) == "plain ascii"  # the CRLF before a delimiter is its own
    assert parts[1].get_content() == b"\x00\x01\x02"
    assert text(parts[2]) == NL_TEXT[:-1]


def test_message_rfc822_is_walked_and_its_headers_kept() -> None:
    inner = (
        b"Subject: inner\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + TEXT.encode()
    )
    message = (
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
        b"--zz\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + inner
        + b"--zz--\r\n"
    )
    out = to_7bit(message)
    assert out is not None and out.isascii()
    assert b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n" in out
    assert b"Subject: inner\r\n" in out
    attached = next(parse(out).iter_parts()).get_content()
    assert attached["Subject"] == "inner"
    assert text(attached) == NL_TEXT[:-1]


def test_ascii_message_comes_back_identical() -> None:
    message = b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    assert to_7bit(message) == message


def test_message_partial_with_8bit_is_unconvertible() -> None:
    message = b"MIME-Version: 1.0\r\nContent-Type: message/partial; id=x\r\n\r\n\xff\r\n"
    assert to_7bit(message) is None


def test_multipart_without_boundary_is_unconvertible() -> None:
    assert to_7bit(b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\n\xe9\r\n") is None


def test_8bit_headers_are_not_converted() -> None:
    message = b"MIME-Version: 1.0\r\nSubject: caf\xc3\xa9\r\n\r\ncaf\xc3\xa9\r\n"
    out = to_7bit(message)
    assert out is not None and out.startswith(b"MIME-Version: 1.0\r\nSubject: caf\xc3\xa9\r\n")
    assert out.endswith(b"\r\n\r\ncaf=C3=A9\r\n")


@given(st.binary(max_size=400))
def test_qp_round_trips_and_is_7bit(data: bytes) -> None:
    body = data.replace(b"\r", b"").replace(b"\n", b"\r\n")
    encoded = encode_qp_lines(body)
    assert encoded.isascii()
    assert all(len(line) <= QP_LINE for line in encoded.split(b"\r\n"))
    import quopri

    assert quopri.decodestring(encoded.replace(b"\r\n", b"\n")) == body.replace(b"\r\n", b"\n")
