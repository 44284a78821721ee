"""SMTP reply texts, in one place so that every reply carries an enhanced status code.

Texts follow Postfix where it has one, so operators recognise them in logs.  Codes come from
RFC 5321 §4.2 and the enhanced codes from RFC 3463 / RFC 5248.
"""

from __future__ import annotations


def reply(code: int, text: str) -> bytes:
    """One-line reply; ``text`` starts with the enhanced status code."""
    return b"%d %s\r\n" % (code, text.encode("utf-8", "replace"))


def multiline(code: int, lines: list[str]) -> bytes:
    """Multi-line reply (RFC 5321 §4.2.1): ``250-a``, ``250-b``, ``250 c``."""
    last = len(lines) - 1
    return b"".join(
        b"%d%c%s\r\n" % (code, 32 if i == last else 45, line.encode("utf-8", "replace"))
        for i, line in enumerate(lines)
    )


OK = reply(250, "2.0.0 Ok")
OK_SENDER = reply(250, "2.1.0 Ok")
OK_RECIPIENT = reply(250, "2.1.5 Ok")
RESET = reply(250, "2.0.0 Ok")
START_DATA = reply(354, "End data with <CR><LF>.<CR><LF>")
VRFY = reply(252, "2.0.0 Cannot VRFY user, but will accept message and attempt delivery")
VRFY_DISABLED = reply(502, "5.5.1 VRFY command is disabled")  # Postfix's words


def help_reply(verbs: list[str]) -> bytes:
    """214 naming the commands this session accepts (RFC 5321 §4.1.1.8)."""
    return reply(214, f"2.0.0 See RFC 5321 (commands: {' '.join(verbs)})")


NEED_HELO = reply(503, "5.5.1 Error: send HELO/EHLO first")
NESTED_MAIL = reply(503, "5.5.1 Error: nested MAIL command")
NEED_MAIL = reply(503, "5.5.1 Error: need MAIL command")
NEED_RCPT = reply(503, "5.5.1 Error: need RCPT command")
UNKNOWN_COMMAND = reply(500, "5.5.2 Error: command not recognized")
NOT_IMPLEMENTED = reply(502, "5.5.1 Error: command not implemented")
LINE_TOO_LONG = reply(500, "5.5.2 Error: line too long")
BARE_LINE_ENDING_COMMAND = reply(500, "5.5.2 Error: bare <CR> or <LF> in command; use <CR><LF>")
BARE_LINE_ENDING_DATA = reply(
    550, "5.5.2 Error: message contains bare <CR> or <LF>; use <CR><LF> line endings"
)
HELO_SYNTAX = reply(501, "5.5.4 Syntax: EHLO hostname")
# Postfix's reject_invalid_helo_hostname reply; the name itself is not echoed back.
INVALID_HELO = reply(501, "5.5.2 Helo command rejected: Invalid name")
NUL_IN_ARGUMENT = reply(501, "5.5.2 Error: NUL in command argument")
# RFC 5322 §2.3: NUL is not allowed in a message; refused like bare line endings (same code).
NUL_IN_DATA = reply(550, "5.5.2 Error: message contains NUL octets")
DATA_SYNTAX = reply(501, "5.5.4 Syntax: DATA")
DATA_AFTER_BDAT = reply(503, "5.5.1 Error: DATA after BDAT in one transaction")
RCPT_AFTER_BDAT = reply(503, "5.5.1 Error: RCPT after BDAT in one transaction")
NO_ARGS_SYNTAX = reply(501, "5.5.4 Syntax error: no arguments allowed")
VRFY_SYNTAX = reply(501, "5.5.4 Syntax: VRFY address")
NULL_RECIPIENT = reply(501, "5.1.3 Bad recipient address syntax")
TOO_BIG = reply(552, "5.3.4 Error: message file too big")
TOO_MANY_RECIPIENTS = reply(452, "4.5.3 Error: too many recipients")
UNSUPPORTED_PARAM = reply(555, "5.5.4 Unsupported option")
BAD_BODY_PARAM = reply(501, "5.5.4 Bad BODY parameter")
BAD_SIZE_PARAM = reply(501, "5.5.4 Bad SIZE parameter")
NEED_SMTPUTF8 = reply(553, "5.6.7 Address needs SMTPUTF8")
RELAY_DENIED = reply(554, "5.7.1 Relay access denied")
LOCAL_ERROR = reply(451, "4.3.0 Error: queue file write error")
# The spool lacks room (Postfix's queue_minfree): temporary, at MAIL (RFC 1870 §6.1).
INSUFFICIENT_STORAGE = reply(452, "4.3.1 Insufficient system storage")
READY_FOR_TLS = reply(220, "2.0.0 Ready to start TLS")
TLS_UNAVAILABLE = reply(454, "4.7.0 TLS not available due to local problem")
STARTTLS_IN_TRANSACTION = reply(503, "5.5.1 Error: STARTTLS not allowed during a mail transaction")
# SMTP AUTH (RFC 4954 §6), in Postfix's words.
MUST_STARTTLS = reply(530, "5.7.0 Must issue a STARTTLS command first")
AUTH_REQUIRED = reply(530, "5.7.0 Authentication required")
AUTH_OK = reply(235, "2.7.0 Authentication successful")
AUTH_FAILED = reply(535, "5.7.8 Error: authentication failed")
AUTH_ABORTED = reply(501, "5.7.0 Authentication aborted")
AUTH_BAD_BASE64 = reply(501, "5.5.2 Cannot decode response")
AUTH_BAD_PLAIN = reply(501, "5.5.2 Error: malformed PLAIN response")
AUTH_SYNTAX = reply(501, "5.5.4 Syntax: AUTH mechanism")
AUTH_MECHANISM_UNKNOWN = reply(504, "5.5.4 Unsupported authentication mechanism")
ALREADY_AUTHENTICATED = reply(503, "5.5.1 Error: already authenticated")
AUTH_IN_TRANSACTION = reply(503, "5.5.1 Error: MAIL transaction in progress")
BAD_AUTH_PARAM = reply(501, "5.5.4 Bad AUTH parameter syntax")


def closing(hostname: str) -> bytes:
    return reply(221, f"2.0.0 {hostname} Bye")


def greeting(hostname: str) -> bytes:
    return reply(220, f"{hostname} ESMTP mta")


def too_many_errors(hostname: str) -> bytes:
    return reply(421, f"4.7.0 {hostname} Error: too many errors")


def timeout(hostname: str) -> bytes:
    return reply(421, f"4.4.2 {hostname} Error: timeout exceeded")


def shutting_down(hostname: str) -> bytes:
    return reply(421, f"4.3.2 {hostname} Service shutting down, closing transmission channel")


def too_many_connections(hostname: str) -> bytes:
    return reply(421, f"4.7.0 {hostname} Error: too many connections")


def too_many_auth_failures(hostname: str) -> bytes:
    return reply(421, f"4.7.0 {hostname} Error: too many authentication failures")


def bdat_syntax(hostname: str) -> bytes:
    """A BDAT whose count cannot be read: the octets that follow cannot be told from
    commands, so the session ends (RFC 5321 §3.8: with a 421)."""
    return reply(421, f"4.5.4 {hostname} Syntax: BDAT count [LAST]; closing connection")


def chunk_received(size: int) -> bytes:
    """The reply to a BDAT chunk that is not the last (RFC 3030 §2; Postfix's words)."""
    return reply(250, f"2.0.0 Ok: {size} octets")


def queued(queue_id: str) -> bytes:
    return reply(250, f"2.0.0 Ok: queued as {queue_id}")
