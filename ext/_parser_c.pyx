# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled twin of ``mta/protocol/_parser_py.py`` (built as ``mta.protocol._parser_c``).

Both modules expose the same API -- ``split_command``, ``parse_path_argument``,
``DataScanner`` and ``MAX_PATH_LENGTH`` -- and must agree byte for byte: the same results,
the same :class:`~mta.protocol.errors.CommandSyntaxError` code and text for every bad input,
the same decoded DATA, ``consumed`` offsets and counters however the input is split.  The
contract is written once, in the docstring of ``_parser_py``; change both twins together.
``tests/protocol`` runs every parser test against both and compares them on random input.

Why it is shaped this way:

* Only C-level code touches the input: a ``const unsigned char *`` taken from ``bytes``
  directly or from any other buffer (bytearray, memoryview) without copying.
* The DATA scanner finds the next CR, LF or NUL 16 octets at a time (SSE2, or 8 with SWAR
  elsewhere), so a line costs a few instructions per 16 octets plus one state step.
* The decoded output is the input itself, or one slice of it, until the output stops
  being one run of the input (a dot removed mid-chunk, a CR or LF inserted, the CR that the
  previous feed withheld); only then is a ``bytes`` object of the worst-case size made,
  filled and shrunk in place.
* Every ``cdef`` function that can fail says so (``except -1`` or an ``object`` result);
  the others are ``noexcept`` and cannot raise.

One difference is deliberate: ``split_command`` and ``parse_path_argument`` take ``bytes``
only (a ``TypeError`` otherwise), where the Python twin would also accept a bytearray.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_Check,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.ref cimport PyObject
from libc.string cimport memchr, memcpy

from mta.protocol.errors import CommandSyntaxError

__all__ = ["DataScanner", "parse_path_argument", "split_command"]

MAX_PATH_LENGTH = 256  # RFC 5321 §4.5.3.1.3: reverse-path and forward-path, with brackets


cdef extern from "Python.h":
    # Owned references managed by hand in the DATA output buffer (see _Output).
    PyObject* _new_bytes "PyBytes_FromStringAndSize"(const char*, Py_ssize_t) except NULL
    char* _bytes_data "PyBytes_AS_STRING"(PyObject*)
    int _PyBytes_Resize(PyObject**, Py_ssize_t) except -1
    void _decref "Py_DECREF"(PyObject*)
    void _xdecref "Py_XDECREF"(PyObject*)
    object PyUnicode_New(Py_ssize_t, Py_UCS4)
    void* PyUnicode_1BYTE_DATA(object) noexcept
    str PyUnicode_DecodeASCII(const char*, Py_ssize_t, const char*)
    str PyUnicode_DecodeUTF8(const char*, Py_ssize_t, const char*)


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE2__) || defined(_M_X64)
    #include <emmintrin.h>
    #define MTA_SSE2 1
    #endif

    /* Index of the first CR, LF or NUL in p[i:n], or n (NUL: see DataScanner). */
    static inline Py_ssize_t mta_find_eol_or_nul(
        const unsigned char *p, Py_ssize_t i, Py_ssize_t n)
    {
    #if defined(MTA_SSE2) && (defined(__GNUC__) || defined(__clang__))
        /* One test finds every octet <= CR (min(v, CR) == v): NUL, LF and CR among them,
           and TAB and the rare other controls as false hits, checked one by one. */
        const __m128i cr = _mm_set1_epi8('\\r');
        while (n - i >= 16) {
            __m128i v = _mm_loadu_si128((const __m128i *)(p + i));
            unsigned hits = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_min_epu8(v, cr), v));
            while (hits) {
                Py_ssize_t k = i + __builtin_ctz(hits);
                if (p[k] == '\\r' || p[k] == '\\n' || p[k] == 0)
                    return k;
                hits &= hits - 1;
            }
            i += 16;
        }
    #endif
        /* SWAR: a word has a zero octet iff (w - 0x01..) & ~w & 0x80.. is not 0. */
        const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
        while (n - i >= 8) {
            uint64_t w, x, y;
            memcpy(&w, p + i, 8);
            x = w ^ (ones * '\\r');
            y = w ^ (ones * '\\n');
            if ((((x - ones) & ~x) | ((y - ones) & ~y) | ((w - ones) & ~w)) & highs)
                break;
            i += 8;
        }
        for (; i < n; i++) {
            if (p[i] == '\\r' || p[i] == '\\n' || p[i] == 0)
                return i;
        }
        return n;
    }
    """
    Py_ssize_t _find_eol_or_nul "mta_find_eol_or_nul"(
        const unsigned char*, Py_ssize_t, Py_ssize_t
    ) noexcept nogil


cdef enum:
    _NUL = 0x00
    _TAB = 0x09
    _LF = 0x0A
    _CR = 0x0D
    _SP = 0x20
    _DQUOTE = 0x22
    _HYPHEN = 0x2D
    _DOT = 0x2E
    _COLON = 0x3A
    _LT = 0x3C
    _EQ = 0x3D
    _GT = 0x3E
    _AT = 0x40
    _LBRACKET = 0x5B
    _BACKSLASH = 0x5C
    _RBRACKET = 0x5D
    _DEL = 0x7F
    _MAX_PATH = 256

cdef str _SYNTAX_FROM = "5.5.4 Syntax: MAIL FROM:<address>"
cdef str _SYNTAX_TO = "5.5.4 Syntax: RCPT TO:<address>"
cdef str _BAD_FROM = "5.1.7 Bad sender address syntax"
cdef str _BAD_TO = "5.1.3 Bad recipient address syntax"
cdef str _TOO_LONG = "5.5.4 Address too long"
cdef str _BAD_PARAM = "5.5.4 Invalid ESMTP parameter syntax"
cdef str _DUP_PARAM = "5.5.4 Duplicate ESMTP parameter"


# ----- commands ------------------------------------------------------------------------

cdef inline unsigned char _upper(unsigned char c) noexcept nogil:
    """ASCII upper case, as ``bytes.upper`` does it (other octets unchanged)."""
    return c - 0x20 if 0x61 <= c <= 0x7A else c


cdef str _upper_text(const unsigned char* p, Py_ssize_t k):
    """``p[:k].upper().decode("latin-1")``, built in place."""
    cdef unsigned char seen = 0
    cdef unsigned char* out
    cdef Py_ssize_t j
    for j in range(k):
        seen |= p[j]
    # The exact maximum kind keeps the str canonical (ASCII or Latin-1), so it hashes and
    # compares equal to any other str with the same text.
    text = PyUnicode_New(k, 255 if seen & 0x80 else 127)
    out = <unsigned char*>PyUnicode_1BYTE_DATA(text)
    for j in range(k):
        out[j] = _upper(p[j])
    return text


def split_command(bytes line not None):
    """Split a command line into its upper-cased verb and its argument."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(line)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(line)
    cdef const unsigned char* space
    while end and (p[end - 1] == _SP or p[end - 1] == _TAB):
        end -= 1
    space = <const unsigned char*>memchr(p, _SP, <size_t>end)
    if space == NULL:
        return _upper_text(p, end), b""
    return (
        _upper_text(p, space - p),
        PyBytes_FromStringAndSize(<const char*>space + 1, p + end - space - 1),
    )


def parse_path_argument(bytes argument not None, bytes keyword not None):
    """Parse ``KEYWORD:<path> params`` as found after MAIL or RCPT."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(argument)
    cdef const unsigned char* kw = <const unsigned char*>PyBytes_AS_STRING(keyword)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(argument)
    cdef Py_ssize_t klen = PyBytes_GET_SIZE(keyword)
    cdef Py_ssize_t pos, close
    cdef bint is_from = keyword == b"FROM"
    cdef str syntax = _SYNTAX_FROM if is_from else _SYNTAX_TO
    if n <= klen or p[klen] != _COLON:
        raise CommandSyntaxError(501, syntax)
    for pos in range(klen):
        if _upper(p[pos]) != kw[pos]:
            raise CommandSyntaxError(501, syntax)
    pos = klen + 1
    while pos < n and p[pos] == _SP:  # "MAIL FROM: <a@b>" is common in the wild
        pos += 1
    if pos >= n or p[pos] != _LT:
        raise CommandSyntaxError(501, syntax)
    close = _find_path_end(p, pos + 1, n)
    if close < 0:
        raise CommandSyntaxError(501, syntax)
    if close + 1 - pos > _MAX_PATH:
        raise CommandSyntaxError(501, _TOO_LONG)
    address = _check_address(p, pos + 1, close, is_from)
    if close + 1 < n and p[close + 1] != _SP:
        raise CommandSyntaxError(501, syntax)
    return address, _parse_params(p, close + 1, n)


cdef Py_ssize_t _find_path_end(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept:
    """Index of the ``>`` closing the path, honouring quoted local parts; -1 if none."""
    cdef bint quoted = False
    cdef unsigned char c
    while i < n:
        c = p[i]
        if quoted:
            if c == _BACKSLASH:  # backslash escapes the next octet inside a quoted string
                i += 1
            elif c == _DQUOTE:
                quoted = False
        elif c == _DQUOTE:
            quoted = True
        elif c == _GT:
            return i
        i += 1
    return -1


cdef object _bad_address(bint is_from):
    return CommandSyntaxError(501, _BAD_FROM if is_from else _BAD_TO)


cdef str _check_address(const unsigned char* p, Py_ssize_t s, Py_ssize_t e, bint is_from):
    """Validate ``p[s:e]``, the inside of ``<...>``; return it without a source route."""
    cdef const unsigned char* colon
    cdef Py_ssize_t at
    if e > s and p[s] == _AT:  # source route "@a,@b:user@dom" (RFC 5321 §4.1.2, C.)
        colon = <const unsigned char*>memchr(p + s, _COLON, <size_t>(e - s))
        if colon == NULL or colon + 1 == p + e:  # the Mailbox after a route is required
            raise _bad_address(is_from)
        s = colon + 1 - p
    if s == e:
        return ""
    at = e - 1
    while at >= s and p[at] != _AT:
        at -= 1
    if at < s:
        if _is_postmaster(p + s, e - s):  # RFC 5321 §4.5.1: accepted without a domain
            return PyUnicode_DecodeASCII(<const char*>p + s, e - s, NULL)
        raise _bad_address(is_from)
    if not _valid_local(p, s, at) or not _valid_domain(p, at + 1, e):
        raise _bad_address(is_from)
    try:
        return PyUnicode_DecodeUTF8(<const char*>p + s, e - s, NULL)
    except UnicodeDecodeError:
        raise _bad_address(is_from) from None


cdef bint _is_postmaster(const unsigned char* p, Py_ssize_t k) noexcept:
    cdef const char* word = b"POSTMASTER"
    cdef Py_ssize_t j
    if k != 10:
        return False
    for j in range(10):
        if _upper(p[j]) != <unsigned char>word[j]:
            return False
    return True


cdef inline bint _is_special(unsigned char c) noexcept:
    """One of ``<>()[]\\,;:@"``, never allowed unquoted in a local part or a domain."""
    return (
        c == 0x3C or c == 0x3E or c == 0x28 or c == 0x29 or c == 0x5B or c == 0x5D
        or c == 0x5C or c == 0x2C or c == 0x3B or c == 0x3A or c == 0x40 or c == 0x22
    )


cdef bint _valid_atoms(const unsigned char* p, Py_ssize_t s, Py_ssize_t e) noexcept:
    """Dot-separated atoms: no dot first, last or doubled; no space, control or special."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if p[s] == _DOT or p[e - 1] == _DOT:
        return False
    for i in range(s, e):
        c = p[i]
        if c <= _SP or c == _DEL or _is_special(c):
            return False
        if c == _DOT and p[i + 1] == _DOT:  # i + 1 < e here: p[e - 1] is not a dot
            return False
    return True


cdef bint _valid_local(const unsigned char* p, Py_ssize_t s, Py_ssize_t e) noexcept:
    cdef Py_ssize_t i
    cdef unsigned char c
    if s == e:
        return False
    if p[s] != _DQUOTE:
        return _valid_atoms(p, s, e)
    # quoted-string: printable octets, backslash pairs, closing quote last
    if e - s < 2 or p[e - 1] != _DQUOTE:
        return False
    i = s + 1
    e -= 1
    while i < e:
        c = p[i]
        if c < _SP or c == _DEL:
            return False
        if c == _BACKSLASH:  # quoted-pairSMTP = %d92 %d32-126 (RFC 5321 §4.1.2)
            i += 1
            if i >= e or p[i] < _SP or p[i] > 0x7E:
                return False
        elif c == _DQUOTE:
            return False
        i += 1
    return True


cdef bint _valid_domain(const unsigned char* p, Py_ssize_t s, Py_ssize_t e) noexcept:
    cdef Py_ssize_t i
    cdef unsigned char c
    if s == e:
        return False
    if p[s] != _LBRACKET:
        return _valid_atoms(p, s, e)
    # address literal "[192.0.2.1]" or "[IPv6:...]"
    if p[e - 1] != _RBRACKET or e - s < 3:
        return False
    for i in range(s + 1, e - 1):
        c = p[i]
        if c < 0x21 or c > 0x7E or c == _LBRACKET or c == _RBRACKET or c == _BACKSLASH:
            return False
    return True


cdef inline bint _is_key_char(unsigned char c) noexcept:
    return (
        (0x41 <= c <= 0x5A) or (0x61 <= c <= 0x7A) or (0x30 <= c <= 0x39) or c == _HYPHEN
    )


cdef dict _parse_params(const unsigned char* p, Py_ssize_t i, Py_ssize_t n):
    """The ``KEY[=VALUE]`` words of ``p[i:n]``, separated by spaces (RFC 5321 §4.1.2)."""
    cdef dict params = {}
    cdef Py_ssize_t start, eq, j
    cdef object value
    cdef str name
    while i < n:
        if p[i] == _SP:
            i += 1
            continue
        start = i
        eq = -1
        while i < n and p[i] != _SP:
            if p[i] == _EQ and eq < 0:
                eq = i
            i += 1
        if eq < 0:
            eq = i
        if eq == start or p[start] == _HYPHEN:
            raise CommandSyntaxError(555, _BAD_PARAM)
        for j in range(start, eq):
            if not _is_key_char(p[j]):
                raise CommandSyntaxError(555, _BAD_PARAM)
        value = None
        if eq < i:
            if eq + 1 == i:
                raise CommandSyntaxError(555, _BAD_PARAM)
            for j in range(eq + 1, i):
                if p[j] < 0x21 or p[j] > 0x7E:
                    raise CommandSyntaxError(555, _BAD_PARAM)
            value = PyUnicode_DecodeASCII(<const char*>p + eq + 1, i - eq - 1, NULL)
        name = _upper_text(p + start, eq - start)
        if name in params:
            raise CommandSyntaxError(555, _DUP_PARAM)
        params[name] = value
    return params


# ----- DATA ----------------------------------------------------------------------------

# Scanner states.  A "real" line start is only ever after CR LF.
cdef enum:
    _LINE_START = 0  # just after CRLF (or at the start of the data)
    _MID = 1  # inside a line
    _PENDING_CR = 2  # saw CR, not yet known whether LF follows (CR not yet emitted)
    _LINE_DOT = 3  # saw "." at a line start (dot not emitted: it is removed either way)
    _LINE_DOT_CR = 4  # saw "." CR at a line start: LF now means end of data


cdef struct _Output:
    # The decoded output of one feed().  While ``obj`` is NULL it is exactly
    # src[run_start:<end>]; from the first octet that differs from the input on, it is
    # buf[:length] followed by src[run_start:<end>].
    const unsigned char* src
    Py_ssize_t run_start
    PyObject* obj  # owned; a bytes object of ``cap`` octets, shrunk at the end
    char* buf
    Py_ssize_t length
    Py_ssize_t cap


cdef int _out_copy_run(_Output* o, Py_ssize_t end) except -1:
    """Move src[run_start:end] into the buffer, creating the buffer on first use."""
    if o.obj == NULL:
        o.obj = _new_bytes(NULL, o.cap)
        o.buf = _bytes_data(o.obj)
    memcpy(o.buf + o.length, o.src + o.run_start, <size_t>(end - o.run_start))
    o.length += end - o.run_start
    o.run_start = end
    return 0


cdef inline int _out_skip(_Output* o, Py_ssize_t i) except -1:
    """Leave src[i] (a removed dot) out of the output."""
    if o.obj != NULL or i != o.run_start:  # else the output is still one slice of src
        _out_copy_run(o, i)
    o.run_start = i + 1
    return 0


cdef inline int _out_insert(_Output* o, Py_ssize_t i, const char* text, Py_ssize_t k) except -1:
    """Put ``text[:k]`` into the output just before src[i]."""
    _out_copy_run(o, i)
    memcpy(o.buf + o.length, text, <size_t>k)
    o.length += k
    return 0


cdef inline int _out_bare_cr(_Output* o, Py_ssize_t i, bint carried, bint normalize) except -1:
    """Emit the bare CR that is src[i - 1], or the one withheld by the previous feed."""
    if carried and normalize:
        _out_insert(o, i, b"\r\n", 2)
    elif carried:
        _out_insert(o, i, b"\r", 1)
    elif normalize:
        _out_insert(o, i, b"\n", 1)
    return 0


cdef object _out_finish(_Output* o, Py_ssize_t end, object data, Py_ssize_t n):
    """The output as ``bytes``, ending with src[:end]; the buffer is handed over."""
    cdef PyObject* obj
    if o.obj == NULL:
        if o.run_start == 0 and end == n and PyBytes_CheckExact(data):
            return data
        return PyBytes_FromStringAndSize(<const char*>o.src + o.run_start, end - o.run_start)
    _out_copy_run(o, end)
    _PyBytes_Resize(&o.obj, o.length)  # frees the object and sets NULL on failure
    obj = o.obj
    o.obj = NULL
    result = <object>obj
    _decref(obj)
    return result


cdef class DataScanner:
    """Streaming DATA decoder; see the docstring of ``_parser_py`` for the exact contract."""

    cdef readonly bint normalize
    cdef readonly bint strip_nul
    cdef readonly bint chunked
    cdef readonly bint done
    cdef readonly Py_ssize_t size
    cdef readonly Py_ssize_t bare_cr
    cdef readonly Py_ssize_t bare_lf
    cdef readonly Py_ssize_t nul
    cdef int _state

    def __init__(self, normalize=False, strip_nul=False, chunked=False):
        self.normalize = normalize
        self.strip_nul = strip_nul
        self.chunked = chunked
        self._state = _LINE_START
        self.done = False
        self.size = 0
        self.bare_cr = 0
        self.bare_lf = 0
        self.nul = 0

    def feed(self, data):
        """Decode one chunk; return the decoded bytes and how much of ``data`` was used."""
        cdef Py_buffer view
        if self.done:
            return b"", 0
        if PyBytes_Check(data):
            return self._feed(
                data, <const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)
            )
        try:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        except Exception:  # not contiguous, or no buffer: fail (or not) as _parser_py does
            return self.feed(memoryview(data).tobytes())
        try:
            return self._feed(data, <const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def finish(self):
        """The last BDAT chunk is in: a CR still pending is a bare CR (see _parser_py)."""
        if not self.chunked or self.done:
            return b""
        self.done = True
        if self._state != _PENDING_CR:
            return b""
        self._state = _MID
        self.bare_cr += 1
        tail = b"\r\n" if self.normalize else b"\r"
        self.size += len(tail)
        return tail

    cdef tuple _feed(self, object data, const unsigned char* src, Py_ssize_t n):
        cdef _Output out
        cdef Py_ssize_t end, used
        if n == 0:
            return b"", 0
        out.src = src
        out.run_start = 0
        out.obj = NULL
        out.buf = NULL
        out.length = 0
        # Worst case: every octet doubles (bare CR/LF made CRLF) plus the withheld CR.
        out.cap = 2 * n + 2 if self.normalize else n + 1
        try:
            used = self._scan(&out, n, &end)
            decoded = _out_finish(&out, end, data, n)
        finally:
            _xdecref(out.obj)
        self.size += len(decoded)
        return decoded, used

    cdef Py_ssize_t _scan(self, _Output* o, Py_ssize_t n, Py_ssize_t* end) except -1:
        """Run the state machine over src[:n]; return octets used, set the output end."""
        cdef const unsigned char* p = o.src
        cdef Py_ssize_t i = 0, j
        cdef int state = self._state
        cdef bint normalize = self.normalize
        cdef bint carried = state == _PENDING_CR or state == _LINE_DOT_CR
        cdef unsigned char c
        while i < n:
            if state == _LINE_START or state == _MID:
                if state == _LINE_START and p[i] == _DOT and not self.chunked:
                    _out_skip(o, i)
                    state = _LINE_DOT
                    i += 1
                    continue
                state = _MID
                j = _find_eol_or_nul(p, i, n)
                if j >= n:
                    i = n
                    break
                i = j + 1
                if p[j] == _CR:
                    state = _PENDING_CR
                elif p[j] == _NUL:  # line text, never a line start (see _parser_py)
                    self.nul += 1
                    if self.strip_nul:
                        _out_skip(o, j)
                else:  # a bare LF never starts a line
                    self.bare_lf += 1
                    if normalize:
                        _out_insert(o, j, b"\r", 1)
                continue
            c = p[i]
            if state == _PENDING_CR:
                if c == _LF:
                    if carried:
                        _out_insert(o, i, b"\r", 1)
                    state = _LINE_START
                    i += 1
                else:
                    self.bare_cr += 1
                    _out_bare_cr(o, i, carried, normalize)
                    if c == _CR:
                        i += 1  # the new CR is pending in turn
                    else:
                        state = _MID
                carried = False
            elif state == _LINE_DOT:
                if c == _CR:
                    state = _LINE_DOT_CR
                    i += 1
                else:
                    state = _MID  # the dot is removed; the octet is read again as line text
            else:  # _LINE_DOT_CR
                if c == _LF:
                    self.done = True
                    i += 1
                    self._state = state
                    end[0] = i - 2 if i >= 2 else 0  # before the CR (absent if carried)
                    return i
                self.bare_cr += 1
                _out_bare_cr(o, i, carried, normalize)
                carried = False
                state = _MID
        self._state = state
        # A CR still pending is the last octet and is withheld until its successor is known.
        end[0] = n - 1 if state == _PENDING_CR or state == _LINE_DOT_CR else n
        return n
