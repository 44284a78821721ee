"""MTA-STS (RFC 8461) policies: the ``_mta-sts`` TXT record, the policy file, MX matching.

Pure functions and values, no I/O: :mod:`mta.delivery.mta_sts_fetch` fetches a policy,
:mod:`mta.delivery.mta_sts_cache` keeps policies in the spool and decides which one is in
force, and :mod:`mta.delivery.mta_sts_apply` applies it to a delivery.

What is parsed, and what is refused (refused input means "no policy", never an error that
stops delivery, RFC 8461 §3.1 and §3.2):

- The TXT record: records not beginning with ``v=STSv1;`` are discarded; exactly one must be
  left, and its fields must follow §3.1's grammar with one ``id`` of 1-32 letters and
  digits.  Its strings are joined before parsing (the resolver does that).
- The policy: ``key: value`` lines ended by LF or CRLF; ``version: STSv1``, ``mode``
  (``enforce``, ``testing`` or ``none``) and ``max_age`` (0 to 31557600 seconds) exactly
  once; at least one ``mx`` unless the mode is ``none``; an ``mx`` is a domain name that may
  start with ``*.`` (one label); unknown keys are ignored (§3.2); a line that is not a field
  makes the policy invalid (blank lines and trailing blanks are tolerated).
- MX patterns match case-insensitively, ignoring a final dot; ``*.example.com`` matches
  exactly one label in its place (``mx.example.com``, not ``a.b.example.com`` nor
  ``example.com``), as RFC 8461 §4.1 says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "MAX_AGE_LIMIT",
    "StsMode",
    "StsPolicy",
    "StsPolicyError",
    "mx_matches",
    "parse_policy",
    "parse_txt",
]

StsMode = Literal["enforce", "testing", "none"]
MAX_AGE_LIMIT = 31_557_600  # RFC 8461 §3.2: about one year

# RFC 8461 §3.1: sts-id = 1*32(ALPHA / DIGIT); sts-ext-name, sts-ext-value
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
_WSP = " \t"
# RFC 8461 §3.2: field names as sts-policy-extension-name; values printable ASCII
_LINE = re.compile(
    r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31}):[ \t]*([\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)"
)
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_MODES: tuple[StsMode, ...] = ("enforce", "testing", "none")


class StsPolicyError(ValueError):
    """A policy file that does not parse: the domain has no usable policy."""


@dataclass(frozen=True, slots=True)
class StsPolicy:
    """One parsed policy: its mode, lifetime in seconds and MX patterns (lower case)."""

    mode: StsMode
    max_age: int
    mx: tuple[str, ...]

    def matches(self, host: str) -> bool:
        """Whether MX ``host`` is allowed by one of the policy's patterns."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def parse_txt(records: list[str]) -> str | None:
    """The policy id from a domain's ``_mta-sts`` TXT records, or None when there is no
    valid record (none, several, or one that breaks the grammar)."""
    candidates = [r for r in records if r.startswith("v=STSv1;")]
    if len(candidates) != 1:
        return None
    fields = candidates[0][len("v=STSv1;") :].strip(_WSP).split(";")
    if fields[-1].strip(_WSP) == "":
        fields.pop()  # a trailing field-delim is allowed
    found: str | None = None
    for field in fields:
        name, eq, value = field.strip(_WSP).partition("=")
        if not eq or not _EXT_NAME.fullmatch(name) or not _EXT_VALUE.fullmatch(value):
            return None
        if name == "id":
            if found is not None or not _ID.fullmatch(value):
                return None
            found = value
    return found


def parse_policy(text: str) -> StsPolicy:
    """The policy in ``text`` (the body of ``/.well-known/mta-sts.txt``); raises
    :class:`StsPolicyError` saying what is wrong."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    lines = text.split("\n")  # LF or CRLF (sts-policy-term); the last may have none
    for line in lines:
        line = line.removesuffix("\r").rstrip(_WSP)
        if not line:
            continue  # blank lines: not in the grammar, but common and harmless
        found = _LINE.fullmatch(line)
        if found is None:
            raise StsPolicyError(f"not a policy field: {line[:80]!r}")
        key, value = found.group(1), found.group(2)
        if key == "mx":
            mx.append(_mx_pattern(value))
        elif key in ("version", "mode", "max_age"):
            if key in fields:
                raise StsPolicyError(f"{key} given twice")
            fields[key] = value
        # any other key: an extension, ignored (RFC 8461 §3.2)
    return _policy(fields, tuple(mx))


def _policy(fields: dict[str, str], mx: tuple[str, ...]) -> StsPolicy:
    if fields.get("version") != "STSv1":
        raise StsPolicyError("version is not STSv1")
    mode = fields.get("mode")
    if mode not in _MODES:
        raise StsPolicyError(f"mode {mode!r} is not enforce, testing or none")
    max_age = fields.get("max_age", "")
    if not (max_age.isascii() and max_age.isdigit()) or len(max_age) > 10:
        raise StsPolicyError(f"max_age {max_age!r} is not a number of seconds")
    if int(max_age) > MAX_AGE_LIMIT:
        raise StsPolicyError(f"max_age {max_age} is over {MAX_AGE_LIMIT}")
    if not mx and mode != "none":
        raise StsPolicyError("no mx pattern")
    return StsPolicy(mode, int(max_age), mx)  # type: ignore[arg-type]  # mode checked above


def _mx_pattern(value: str) -> str:
    pattern = value.lower().rstrip(".")
    name = pattern[2:] if pattern.startswith("*.") else pattern
    if not _DOMAIN.fullmatch(name) or len(name) > 253:
        raise StsPolicyError(f"mx {value!r} is not a domain name or *.domain")
    return pattern


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: ``host`` equals ``pattern``, or ``pattern`` is ``*.rest`` and
    ``host`` is one label followed by ``.rest``."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, dot, rest = host.partition(".")
        return bool(head and dot) and rest == pattern[2:]
    return host == pattern
