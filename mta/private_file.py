"""Reading a file that holds secrets (passwords): refused when others could read it.

A library below the edge (AUTH's password file) and delivery (a smarthost's credentials):
the same check, the same words.  Like ssh with a private key, the relay will not use a
secret that other accounts could have read, and says how to fix it; every failure is a
:class:`~mta.config.ConfigError` naming the configuration key and the file.
"""

from __future__ import annotations

import os
import stat

from mta.config import ConfigError

__all__ = ["read_private_text"]


def read_private_text(path: str, key: str, forbidden: int, fix: str) -> str:
    """The UTF-8 text of ``path`` (named by config ``key``), unless its mode has any of the
    ``forbidden`` bits; ``fix`` is the chmod arguments that cure it (``"600"``)."""
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            if mode & forbidden:
                who = "group or others" if forbidden & stat.S_IRWXG else "other users"
                raise ConfigError(
                    f"{key}: {path} may be read by {who} "
                    f"(mode {stat.S_IMODE(mode):04o}); chmod {fix} {path}"
                )
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{key}: {path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key}: {path}: not UTF-8 text") from None
