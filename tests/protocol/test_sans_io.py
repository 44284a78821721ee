"""The protocol package is sans-I/O (DESIGN.md §2.2): no asyncio, socket, os, ssl or time,
and no choosing of the parser backend (that reads the environment).

Two checks: every module's own imports, read from its source; and a subprocess in which
those modules cannot be imported at all, which imports every module of the package and
drives a whole session with the pure-Python twin.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mta.protocol
from mta.protocol import _parser_py
from mta.protocol.session import ParserBackend
from tests.test_imports import imports_of

# mypy checks here that the twin has every function the session uses of a backend
PYTHON_TWIN: ParserBackend = _parser_py

FORBIDDEN = ("asyncio", "socket", "os", "ssl", "time", "selectors", "mta.parser_backend")
PACKAGE = Path(mta.protocol.__file__).parent
MODULES = tuple(
    sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "_parser_c"))
)


def test_no_module_of_the_package_imports_io() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        names = imports_of(path)
        bad = {n for n in names if n in FORBIDDEN or n.split(".")[0] in FORBIDDEN}
        assert not bad, f"{path.name} imports {sorted(bad)}"


# Runs in a fresh interpreter.  The few standard modules the package uses are loaded first
# (dataclasses and msgspec import os themselves); then the forbidden ones are made
# unimportable, so an import of any of them from mta.protocol raises ImportError.
SCRIPT = textwrap.dedent(
    """
    import sys
    import collections, dataclasses, enum, typing, msgspec

    for name in FORBIDDEN:
        sys.modules[name] = None
    try:
        import os
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker does not work")

    for module in MODULES:
        __import__("mta.protocol." + module)
    from mta.protocol import _parser_py, replies
    from mta.protocol.events import DataChunk, DataEnd, DataStart, MailFrom, RcptTo
    from mta.protocol.session import ServerSession, SessionLimits

    limits = SessionLimits(
        hostname="mx.test",
        max_message_size=1000,
        max_recipients=10,
        max_line_length=512,
        max_errors=10,
        normalize_bare_line_endings=False,
        starttls=False,
        strip_nul=False,
        require_tls=False,
        auth=False,
        auth_plaintext=False,
        require_auth=False,
        vrfy=True,
    )
    session = ServerSession(limits, _parser_py)
    session.receive_data(
        b"EHLO c.test\\r\\nMAIL FROM:<a@x.test>\\r\\nRCPT TO:<b@y.test>\\r\\nDATA\\r\\n"
        b"Subject: hi\\r\\n\\r\\n..dot\\r\\n.\\r\\nQUIT\\r\\n"
    )
    kinds, data = [], b""
    while (event := session.next_event()) is not None:
        kinds.append(type(event).__name__)
        if isinstance(event, (MailFrom, RcptTo, DataStart)):
            session.accept()
        elif isinstance(event, DataChunk):
            data += event.data
        elif isinstance(event, DataEnd):
            session.accept(replies.queued("QID"))
    codes = [line[:3] for line in session.data_to_send().split(b"\\r\\n") if line[3:4] == b" "]
    assert kinds[:3] == ["MailFrom", "RcptTo", "DataStart"] and kinds[-1] == "DataEnd", kinds
    assert data == b"Subject: hi\\r\\n\\r\\n.dot\\r\\n", data
    assert codes == [b"220", b"250", b"250", b"250", b"354", b"250", b"221"], codes
    assert session.closing
    print("sans-I/O ok")
    """
)


def test_package_imports_and_runs_without_io_modules() -> None:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent.parent)}
    prelude = f"FORBIDDEN = {FORBIDDEN!r}\nMODULES = {MODULES!r}\n"
    result = subprocess.run(
        [sys.executable, "-c", prelude + SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sans-I/O ok"
