"""Making sessions for the protocol tests: the limits the server would make from a default
configuration (the one owner of the defaults), with overrides, and a parser backend passed
in as the server passes it."""

from __future__ import annotations

import dataclasses

from mta.config import Config
from mta.protocol.session import ParserBackend, ServerSession, SessionLimits
from mta.server.context import session_limits

__all__ = ["HOST", "make_limits", "new_session"]

HOST = "mx.test"


def make_limits(**overrides: object) -> SessionLimits:
    """``session_limits`` of a default configuration named ``HOST``, with ``overrides``."""
    limits = session_limits(Config(hostname=HOST))
    return dataclasses.replace(limits, **overrides)  # type: ignore[arg-type]


def new_session(parser: ParserBackend, **overrides: object) -> ServerSession:
    return ServerSession(make_limits(**overrides), parser)
