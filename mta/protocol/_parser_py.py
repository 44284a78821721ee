"""Pure-Python twin of the compiled parser in ``ext/_parser_c.pyx``.

Both modules expose the same API and must behave byte-for-byte the same; the test suite
feeds them identical input (whole and in random chunk splits) and compares the results.

API
---
``split_command(line) -> (verb, argument)``
    ``line`` is one command line *without* its CRLF.  ``verb`` is the ASCII-uppercased
    first word as ``str`` (latin-1 decoded, so any byte survives); ``argument`` is the rest
    after the first space, with trailing spaces and tabs removed.

``parse_path_argument(argument, keyword) -> (address, params)``
    Parses ``FROM:<path> [params]`` (keyword ``b"FROM"``) or ``TO:<path> [params]``.
    Returns the address (``""`` for the null path ``<>``; a source route ``@a,@b:`` is
    dropped as RFC 5321 §4.1.2 asks) and a dict of upper-cased ESMTP parameter names to
    values (``None`` for a bare keyword).  Raises :class:`CommandSyntaxError`.

``DataScanner(normalize, strip_nul=False, chunked=False)``
    Streaming decoder for the DATA phase (and, ``chunked``, for BDAT chunks).
    ``feed(chunk) -> (decoded, consumed)``.
    Only ``CRLF.CRLF`` ends the data (RFC 5321 §4.1.1.4); the dot of a line that starts
    with one after a *real* CRLF is removed (§4.5.2).  A CR not followed by LF, or an LF not
    preceded by CR, is counted in ``bare_cr`` / ``bare_lf``; it is passed through as is, or
    turned into CRLF when ``normalize`` is true.  Bare line ends never start a new line for
    dot handling, so no input can end the data early or split one message into two.
    A NUL octet is counted in ``nul``; it is passed through as is, or left out of the
    output when ``strip_nul`` is true.  It is line text either way: ``CRLF NUL . CRLF`` is
    a line holding NUL and a dot, never the end of the data, though a next hop that drops
    NULs would read it as one (RFC 5322 §2.3 has no NUL in a message).
    ``consumed`` is ``len(chunk)`` unless the terminator was found, then it is the offset
    just past it (the rest belongs to the next command).  ``size`` counts decoded bytes.
    ``chunk`` may be any bytes-like object (bytes, bytearray, memoryview); ``decoded`` is
    always ``bytes``.  ``normalize``, ``strip_nul``, ``chunked``, ``done``, ``size``,
    ``bare_cr``, ``bare_lf`` and ``nul`` are read-only: the scanner alone keeps them true.

    ``chunked``: the octets of BDAT chunks (RFC 3030), one message in several ``feed``
    calls.  Nothing is dot-unstuffed and nothing ends the data: every octet fed is consumed
    (``consumed == len(chunk)``); bare CR, bare LF and NUL are counted and treated as in
    DATA, and a CRLF split between two chunks is one line end.  ``finish()`` says the last
    chunk is in: a CR still pending then is a bare CR (returned as ``b"\r"``, or CRLF when
    normalising) and ``done`` becomes true.  ``finish()`` on a DATA scanner returns ``b""``.
"""

from __future__ import annotations

from mta.protocol.errors import CommandSyntaxError

__all__ = ["DataScanner", "parse_path_argument", "split_command"]

MAX_PATH_LENGTH = 256  # RFC 5321 §4.5.3.1.3: reverse-path and forward-path, with brackets

_SPACE = 0x20
_TAB = 0x09
_PARAM_KEY_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_DOMAIN_SPECIALS = frozenset(b'<>()[]\\,;:@"')
_LOCAL_SPECIALS = frozenset(b'<>()[]\\,;:@"')

_ERR_PARAM = (555, "5.5.4 Invalid ESMTP parameter syntax")


def split_command(line: bytes) -> tuple[str, bytes]:
    """Split a command line into its upper-cased verb and its argument."""
    end = len(line)
    while end and line[end - 1] in (_SPACE, _TAB):
        end -= 1
    space = line.find(b" ", 0, end)
    if space < 0:
        return line[:end].upper().decode("latin-1"), b""
    return line[:space].upper().decode("latin-1"), line[space + 1 : end]


def parse_path_argument(argument: bytes, keyword: bytes) -> tuple[str, dict[str, str | None]]:
    """Parse ``KEYWORD:<path> params`` as found after MAIL or RCPT."""
    syntax = _syntax_error(keyword)
    klen = len(keyword)
    if argument[:klen].upper() != keyword or argument[klen : klen + 1] != b":":
        raise CommandSyntaxError(*syntax)
    pos = klen + 1
    n = len(argument)
    while pos < n and argument[pos] == _SPACE:  # "MAIL FROM: <a@b>" is common in the wild
        pos += 1
    if pos >= n or argument[pos] != 0x3C:  # "<"
        raise CommandSyntaxError(*syntax)
    close = _find_path_end(argument, pos + 1)
    if close < 0:
        raise CommandSyntaxError(*syntax)
    if close + 1 - pos > MAX_PATH_LENGTH:
        raise CommandSyntaxError(501, "5.5.4 Address too long")
    address = _check_address(argument[pos + 1 : close], keyword)
    rest = argument[close + 1 :]
    if rest and rest[0] != _SPACE:
        raise CommandSyntaxError(*syntax)
    return address, _parse_params(rest)


def _syntax_error(keyword: bytes) -> tuple[int, str]:
    if keyword == b"FROM":
        return 501, "5.5.4 Syntax: MAIL FROM:<address>"
    return 501, "5.5.4 Syntax: RCPT TO:<address>"


def _find_path_end(argument: bytes, start: int) -> int:
    """Index of the ``>`` closing the path, honouring quoted local parts; -1 if none."""
    quoted = False
    i = start
    n = len(argument)
    while i < n:
        c = argument[i]
        if quoted:
            if c == 0x5C:  # backslash escapes the next octet inside a quoted string
                i += 1
            elif c == 0x22:
                quoted = False
        elif c == 0x22:
            quoted = True
        elif c == 0x3E:
            return i
        i += 1
    return -1


def _bad_address(keyword: bytes) -> CommandSyntaxError:
    if keyword == b"FROM":
        return CommandSyntaxError(501, "5.1.7 Bad sender address syntax")
    return CommandSyntaxError(501, "5.1.3 Bad recipient address syntax")


def _check_address(path: bytes, keyword: bytes) -> str:
    """Validate the inside of ``<...>`` and return it as text without a source route."""
    if path[:1] == b"@":  # source route "@a,@b:user@dom" (RFC 5321 §4.1.2, C.)
        colon = path.find(b":")
        if colon < 0 or colon + 1 == len(path):  # the Mailbox after a route is required
            raise _bad_address(keyword)
        path = path[colon + 1 :]
    if not path:
        return ""
    at = path.rfind(b"@")
    if at < 0:
        if path.lower() == b"postmaster":  # RFC 5321 §4.5.1: always accepted without a domain
            return path.decode("ascii")
        raise _bad_address(keyword)
    local, domain = path[:at], path[at + 1 :]
    if not _valid_local(local) or not _valid_domain(domain):
        raise _bad_address(keyword)
    try:
        return path.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_address(keyword) from None


def _valid_local(local: bytes) -> bool:
    if not local:
        return False
    if local[0] == 0x22:  # quoted-string: printable octets, backslash pairs, closing quote last
        if len(local) < 2 or local[-1] != 0x22:
            return False
        i, end = 1, len(local) - 1
        while i < end:
            c = local[i]
            if c < 0x20 or c == 0x7F:
                return False
            if c == 0x5C:  # quoted-pairSMTP = %d92 %d32-126 (RFC 5321 §4.1.2)
                i += 1
                if i >= end or not 0x20 <= local[i] <= 0x7E:
                    return False
            elif c == 0x22:
                return False
            i += 1
        return True
    if local[0] == 0x2E or local[-1] == 0x2E or b".." in local:
        return False
    return all(c > 0x20 and c != 0x7F and c not in _LOCAL_SPECIALS for c in local)


def _valid_domain(domain: bytes) -> bool:
    if not domain:
        return False
    if domain[0] == 0x5B:  # address literal "[192.0.2.1]" or "[IPv6:...]"
        if domain[-1] != 0x5D or len(domain) < 3:
            return False
        return all(0x21 <= c <= 0x7E and c not in b"[]\\" for c in domain[1:-1])
    if domain[0] == 0x2E or domain[-1] == 0x2E or b".." in domain:
        return False
    return all(c > 0x20 and c != 0x7F and c not in _DOMAIN_SPECIALS for c in domain)


def _parse_params(rest: bytes) -> dict[str, str | None]:
    params: dict[str, str | None] = {}
    for word in rest.split(b" "):
        if not word:
            continue
        eq = word.find(b"=")
        key = word if eq < 0 else word[:eq]
        if not key or key[0] == 0x2D or any(c not in _PARAM_KEY_CHARS for c in key):
            raise CommandSyntaxError(*_ERR_PARAM)
        value: str | None = None
        if eq >= 0:
            raw = word[eq + 1 :]
            if not raw or any(c < 0x21 or c > 0x7E for c in raw):
                raise CommandSyntaxError(*_ERR_PARAM)
            value = raw.decode("ascii")
        name = key.upper().decode("ascii")
        if name in params:
            raise CommandSyntaxError(555, "5.5.4 Duplicate ESMTP parameter")
        params[name] = value
    return params


# DATA scanner states.  A "real" line start is only ever after CR LF.
_LINE_START = 0  # just after CRLF (or at the start of the data)
_MID = 1  # inside a line
_CR = 2  # saw CR, not yet known whether LF follows (CR not yet emitted)
_DOT = 3  # saw "." at a line start (dot not emitted: it is removed either way)
_DOT_CR = 4  # saw "." CR at a line start: LF now means end of data


class DataScanner:
    """Streaming DATA decoder; see the module docstring for the exact contract."""

    __slots__ = (
        "_bare_cr",
        "_bare_lf",
        "_bare_out",
        "_chunked",
        "_done",
        "_normalize",
        "_nul",
        "_nul_out",
        "_size",
        "_state",
        "_strip_nul",
    )

    def __init__(
        self, normalize: bool = False, strip_nul: bool = False, chunked: bool = False
    ) -> None:
        self._normalize = bool(normalize)
        self._chunked = bool(chunked)
        self._strip_nul = bool(strip_nul)
        self._nul_out = b"" if strip_nul else b"\x00"
        self._nul = 0
        self._bare_out = (b"\r\n", b"\r\n") if normalize else (b"\r", b"\n")
        self._state = _LINE_START
        self._done = False
        self._size = 0
        self._bare_cr = 0
        self._bare_lf = 0

    @property
    def normalize(self) -> bool:
        """Bare CR and bare LF are turned into CRLF (fixed at construction)."""
        return self._normalize

    @property
    def strip_nul(self) -> bool:
        """NUL octets are left out of the output (fixed at construction)."""
        return self._strip_nul

    @property
    def chunked(self) -> bool:
        """BDAT chunks: no dot-unstuffing, no terminator (fixed at construction)."""
        return self._chunked

    @property
    def done(self) -> bool:
        """The final ``CRLF.CRLF`` has been read; ``feed`` consumes nothing more."""
        return self._done

    @property
    def size(self) -> int:
        """Decoded octets so far."""
        return self._size

    @property
    def bare_cr(self) -> int:
        """CRs seen that were not followed by LF."""
        return self._bare_cr

    @property
    def bare_lf(self) -> int:
        """LFs seen that were not preceded by CR."""
        return self._bare_lf

    @property
    def nul(self) -> int:
        """NUL octets seen in the data (before the terminator)."""
        return self._nul

    def feed(self, data: bytes | bytearray | memoryview) -> tuple[bytes, int]:
        """Decode one chunk; return the decoded bytes and how much of ``data`` was used."""
        if self._done:
            return b"", 0
        if not isinstance(data, (bytes, bytearray)):
            data = memoryview(data).tobytes()  # the loop below needs .find()
        out: list[bytes | bytearray] = []
        append = out.append
        bare_cr_out, bare_lf_out = self._bare_out
        nul_out = self._nul_out
        n = len(data)
        i = 0
        state = self._state
        next_cr = next_lf = next_nul = -1
        while i < n:
            if state in (_LINE_START, _MID):
                if state == _LINE_START and data[i] == 0x2E and not self._chunked:
                    state = _DOT
                    i += 1
                    continue
                if next_cr < i:
                    next_cr = data.find(b"\r", i)
                    if next_cr < 0:
                        next_cr = n
                if next_lf < i:
                    next_lf = data.find(b"\n", i)
                    if next_lf < 0:
                        next_lf = n
                if next_nul < i:
                    next_nul = data.find(b"\x00", i)
                    if next_nul < 0:
                        next_nul = n
                j = next_cr if next_cr < next_lf else next_lf
                if next_nul < j:
                    j = next_nul
                if j > i:
                    append(data[i:j])
                    i = j
                state = _MID
                if i >= n:
                    break
                c = data[i]
                if c == 0x0D:
                    state = _CR
                elif c == 0x0A:
                    self._bare_lf += 1
                    append(bare_lf_out)
                else:  # NUL: line text, never a line start (see the module docstring)
                    self._nul += 1
                    append(nul_out)
                i += 1
            elif state == _CR:
                c = data[i]
                if c == 0x0A:
                    append(b"\r\n")
                    state = _LINE_START
                    i += 1
                else:
                    self._bare_cr += 1
                    append(bare_cr_out)
                    if c == 0x0D:
                        i += 1  # the new CR is pending in turn
                    else:
                        state = _MID
            elif state == _DOT:
                if data[i] == 0x0D:
                    state = _DOT_CR
                    i += 1
                else:
                    state = _MID  # the dot is removed; the octet is read again as line text
            else:  # _DOT_CR
                if data[i] == 0x0A:
                    self._done = True
                    i += 1
                    break
                self._bare_cr += 1
                append(bare_cr_out)
                state = _MID
        self._state = state
        decoded = b"".join(out)
        self._size += len(decoded)
        return decoded, i

    def finish(self) -> bytes:
        """The last BDAT chunk is in: a CR still pending is a bare CR (see above)."""
        if not self._chunked or self._done:
            return b""
        self._done = True
        if self._state != _CR:
            return b""
        self._state = _MID
        self._bare_cr += 1
        tail = self._bare_out[0]
        self._size += len(tail)
        return tail
