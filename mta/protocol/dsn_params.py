"""The DSN extension's ESMTP parameters (RFC 3461): validation, xtext, and passing them on.

Owns the rules for ``RET`` and ``ENVID`` (MAIL) and ``NOTIFY`` and ``ORCPT`` (RCPT):

* ``RET=FULL|HDRS`` (§4.3); ``ENVID=xtext`` of at most 100 octets (§4.4);
* ``NOTIFY=NEVER`` alone, or any non-empty subset of ``SUCCESS,FAILURE,DELAY`` (§4.1);
* ``ORCPT=addr-type;xtext`` (§4.2) with addr-type ``rfc822``, or ``utf-8`` (RFC 6533) only in
  an SMTPUTF8 transaction; at most 500 octets (§4.2).

Values are stored as received (they are valid xtext, so decoding is exact); a report decodes
them (:func:`xtext_decode`), a next hop gets them re-encoded (:func:`xtext_encode`), which is
the canonical form of the same octets.  Each checker returns the ``501`` reply text for a bad
value, or None.  Pure functions: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "DSN_MAIL_PARAMS",
    "DSN_RCPT_PARAMS",
    "check_mail_param",
    "check_rcpt_param",
    "envid_display",
    "mail_params_to_pass",
    "notify_set",
    "orcpt_display",
    "rcpt_params_to_pass",
    "xtext_decode",
    "xtext_encode",
]

DSN_MAIL_PARAMS = frozenset({"RET", "ENVID"})
DSN_RCPT_PARAMS = frozenset({"NOTIFY", "ORCPT"})
MAX_ENVID = 100  # RFC 3461 §4.4
MAX_ORCPT = 500  # RFC 3461 §4.2
_NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
# RFC 3461 §4: xchar is "!" through "~" except "+" and "="; hexchar is "+" and two
# upper-case hex digits.
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
_XCHARS = re.compile(r"[!-*,-<>-~]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # never in a report field (header injection)
_HEXCHAR = re.compile(r"\+([0-9A-F]{2})")
_UTF8_ESCAPE = re.compile(r"\\x\{([0-9A-F]{1,6})\}")  # RFC 6533 §3: \x{HEX}


def xtext_decode(value: str) -> str:
    """The text an xtext value stands for (invalid xtext raises ValueError)."""
    if _XTEXT.fullmatch(value) is None:
        raise ValueError("not xtext")
    octets = _HEXCHAR.sub(lambda m: chr(int(m.group(1), 16)), value)
    return octets.encode("latin-1").decode("utf-8", "replace")


def xtext_encode(text: str) -> str:
    """RFC 3461 §4: every octet outside "!".."~", and "+" and "=", as "+HH"."""
    if _XCHARS.fullmatch(text) is not None:  # the common case: nothing to encode
        return text
    out = []
    for octet in text.encode("utf-8"):
        if 0x21 <= octet <= 0x7E and octet not in (0x2B, 0x3D):
            out.append(chr(octet))
        else:
            out.append(f"+{octet:02X}")
    return "".join(out)


def check_mail_param(name: str, value: str | None) -> str | None:
    """The reply text for a bad RET or ENVID value, else None."""
    if name == "RET":
        if value is None or value.upper() not in ("FULL", "HDRS"):
            return "5.5.4 Bad RET parameter: FULL or HDRS"
        return None
    if value is None or _XTEXT.fullmatch(value) is None:
        return "5.5.4 Bad ENVID parameter: not xtext"
    decoded = xtext_decode(value)
    if len(decoded.encode("utf-8")) > MAX_ENVID:
        return f"5.5.4 Bad ENVID parameter: longer than {MAX_ENVID} octets"
    if _CONTROL.search(decoded):
        return "5.5.4 Bad ENVID parameter: control character"
    return None


def check_rcpt_param(name: str, value: str | None, smtputf8: bool) -> str | None:
    """The reply text for a bad NOTIFY or ORCPT value, else None."""
    if name == "NOTIFY":
        words = (value or "").upper().split(",")
        if words == ["NEVER"]:
            return None
        if not value or any(w not in _NOTIFY_WORDS for w in words) or len(set(words)) != len(words):
            return "5.5.4 Bad NOTIFY parameter: NEVER, or any of SUCCESS,FAILURE,DELAY"
        return None
    if value is None or ";" not in value:
        return "5.5.4 Bad ORCPT parameter: addr-type;address"
    if len(value) > MAX_ORCPT:
        return f"5.5.4 Bad ORCPT parameter: longer than {MAX_ORCPT} octets"
    kind, address = value.split(";", 1)
    kind = kind.lower()
    if kind not in ("rfc822", "utf-8") or (kind == "utf-8" and not smtputf8):
        return "5.5.4 Bad ORCPT parameter: addr-type rfc822 (or utf-8 with SMTPUTF8)"
    if not address or _XTEXT.fullmatch(address) is None:
        return "5.5.4 Bad ORCPT parameter: not xtext"
    if _CONTROL.search(xtext_decode(address)):
        return "5.5.4 Bad ORCPT parameter: control character"
    return None


def notify_set(params: Mapping[str, str | None]) -> frozenset[str] | None:
    """The NOTIFY words of a recipient (upper case), or None when it gave none."""
    value = params.get("NOTIFY")
    if value is None:
        return None
    return frozenset(value.upper().split(","))


def orcpt_display(params: Mapping[str, str | None]) -> str | None:
    """``addr-type; address`` for an Original-Recipient field (RFC 3464 §2.3.1), decoded."""
    value = params.get("ORCPT")
    if value is None or ";" not in value:
        return None
    kind, address = value.split(";", 1)
    try:
        text = xtext_decode(address)
    except ValueError:
        return None
    if kind.lower() == "utf-8":
        text = _UTF8_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return f"{kind.lower()}; {text}"


def envid_display(params: Mapping[str, str | None]) -> str | None:
    """The decoded ENVID, for Original-Envelope-Id (RFC 3464 §2.2.1)."""
    value = params.get("ENVID")
    if value is None:
        return None
    try:
        return xtext_decode(value)
    except ValueError:
        return None


def mail_params_to_pass(params: Mapping[str, str | None]) -> str:
    """`` RET=... ENVID=...`` for the MAIL command to a next hop that offers DSN."""
    words = []
    ret = params.get("RET")
    if ret:
        words.append(f"RET={ret.upper()}")
    envid = envid_display(params)
    if envid is not None:
        words.append(f"ENVID={xtext_encode(envid)}")
    return "".join(" " + w for w in words)


def rcpt_params_to_pass(address: str, params: Mapping[str, str | None]) -> str:
    """`` NOTIFY=... ORCPT=...`` for the RCPT command to a next hop that offers DSN; an
    ORCPT the client did not give is the original recipient (as Postfix adds it)."""
    words = []
    notify = params.get("NOTIFY")
    if notify:
        words.append(f"NOTIFY={notify.upper()}")
    value = params.get("ORCPT")
    if value is not None and ";" in value:
        kind, raw = value.split(";", 1)
        try:
            words.append(f"ORCPT={kind.lower()};{xtext_encode(xtext_decode(raw))}")
        except ValueError:
            pass
    elif address.isascii():
        words.append(f"ORCPT=rfc822;{xtext_encode(address)}")
    return "".join(" " + w for w in words)
