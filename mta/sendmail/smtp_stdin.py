"""``sendmail -bs``: an SMTP conversation on stdin/stdout, served by the running relay.

The bytes are passed both ways unchanged between stdin/stdout and a connection to the
local listener (local.py: local_relay_address), so the client talks to smtpd itself
with all its checks and limits; lone LFs from a client that writes Unix line ends become
CRLF, since smtpd refuses bare LF (RFC 5321 §2.3.8) and such clients expect sendmail to
take them.  When the relay does not answer, the client hears ``421`` (RFC 5321 §3.8) and
the exit status is EX_TEMPFAIL.
"""

from __future__ import annotations

import os
import re
import selectors
import socket
import sys

from mta.config import Config
from mta.sendmail.local import SUBMIT_TIMEOUT, local_relay_address
from mta.sendmail.options import EX_OK, EX_TEMPFAIL

__all__ = ["relay_smtp_session"]

_BARE_LF = re.compile(rb"(?<!\r)\n")
_CHUNK = 65536


def relay_smtp_session(config: Config, verbose: bool) -> int:
    host, port = local_relay_address(config)
    try:
        sock = socket.create_connection((host, port), timeout=SUBMIT_TIMEOUT)
    except OSError as exc:
        if verbose:
            print(f"sendmail: cannot reach the relay at {host}:{port}: {exc}", file=sys.stderr)
        _write_all(1, b"421 4.3.0 the mail system is not running; try again later\r\n")
        return EX_TEMPFAIL
    with sock:
        _pump(sock, sys.stdin.fileno(), sys.stdout.fileno())
    return EX_OK


def _pump(sock: socket.socket, stdin: int, stdout: int) -> None:
    """Copy both ways until the relay closes (after QUIT, or on its timeout)."""
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(stdin, selectors.EVENT_READ)
    pending_cr = False  # stdin's last chunk ended in CR: its LF is not bare
    quit_sent = False
    while True:
        for key, _ in selector.select():
            if key.fileobj is sock:
                data = sock.recv(_CHUNK)
                if not data:
                    return
                _write_all(stdout, data)
                continue
            data = os.read(stdin, _CHUNK)
            if not data:
                selector.unregister(stdin)
                if not quit_sent:  # the client went away: so does its session
                    sock.shutdown(socket.SHUT_WR)
                continue  # after QUIT: hear the rest, until smtpd closes
            quit_sent = _ends_with_quit(data)
            fixed = _BARE_LF.sub(b"\r\n", data)
            if pending_cr and data.startswith(b"\n"):
                fixed = fixed[1:]  # "\r" + "\n" split over two reads
            pending_cr = data.endswith(b"\r")
            sock.sendall(fixed)


def _ends_with_quit(data: bytes) -> bool:
    """The client's last line is QUIT (smtpd's half-closed socket would end the session
    before it has answered what came before, so it is not shut down after QUIT)."""
    last = data.rstrip(b"\r\n").rpartition(b"\n")[2].strip()
    return last.upper() == b"QUIT"


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]
