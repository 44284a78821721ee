"""Client-controlled text made safe to copy into a header field or a log line.

The HELO name, the addresses and anything else a client chose must never end or forge a
line where it is copied: a CR, LF or NUL in a ``Received:`` field makes a second header or
a truncated one, and a newline in a log line makes a log entry that log readers
(pflogsumm, fail2ban) believe.  The characters replaced are C0, DEL, C1 (NEL among them)
and the Unicode line and paragraph separators, which ``str.splitlines`` also breaks at.

* :func:`for_header` writes each as ``?``, as Postfix's ``printable()`` does.
* :func:`for_log` writes each as a Python escape (``\\x00``, ``\\u2028``) so the log
  still shows what was sent.
* :data:`CONTROL` finds them, for a check that refuses instead (the HELO name).

It lives in the protocol library, not in a daemon, so that every daemon that logs client
text (smtpd, the queue manager and delivery log addresses) can use the same rule.
"""

from __future__ import annotations

import re

__all__ = ["CONTROL", "for_header", "for_log"]

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def for_header(text: str) -> str:
    """``text`` with every control character replaced by ``?``."""
    return text if text.isprintable() else CONTROL.sub("?", text)


def for_log(text: str) -> str:
    """``text`` with every control character written as a backslash escape."""
    return text if text.isprintable() else CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")
