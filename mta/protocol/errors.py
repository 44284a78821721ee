"""Errors of the protocol layer, classified as h11 does.

* :class:`CommandSyntaxError` — the *peer* sent something malformed.  It carries the
  enhanced status code and text that the session turns into a ``501``/``555`` reply.
* :class:`SessionUsageError` — *we* misused the sans-I/O API (for example answered a
  decision that was never asked).  It is a bug in the caller and is never turned into a reply.
"""


class CommandSyntaxError(ValueError):
    """A command argument the peer sent cannot be parsed.

    ``code`` is the SMTP reply code to use (501 or 555), ``text`` the enhanced status code
    and human text, e.g. ``"5.1.7 Bad sender address syntax"``.
    """

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CommandSyntaxError) and (self.code, self.text) == (
            other.code,
            other.text,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.text))


class SessionUsageError(RuntimeError):
    """The server called the session API out of order (a local bug)."""
