"""Builds the compiled parser twin when it can; all metadata lives in pyproject.toml.

``ext/_parser_c.pyx`` becomes ``mta.protocol._parser_c``.  Without it the server runs on
``mta.protocol._parser_py`` (see ``mta/parser_backend.py``), which behaves byte for byte
the same, only slower.  So the extension is optional, as in MarkupSafe and simplejson:

- Cython turns the ``.pyx`` into C when it is installed (the build requirements name it);
  without Cython the C file that the sdist carries is compiled instead;
- when there is no C compiler (or it fails), or neither source is there, the build warns
  once, in a banner, and the wheel is pure Python: ``pip install`` succeeds, and
  ``mta serve`` logs ``parser backend: python`` (and the metric says so);
- ``MTA_NO_EXTENSIONS=1`` at build time skips the extension on purpose.

The tests fail loudly if the extension is missing unless ``MTA_NO_EXTENSIONS=1`` says that
is intended.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
PYX = "ext/_parser_c.pyx"
C_SOURCE = "ext/_parser_c.c"

# What a missing or failing compiler raises (setuptools' vendored distutils).
try:
    from setuptools.errors import CCompilerError, ExecError, PlatformError

    BUILD_ERRORS: tuple[type[BaseException], ...] = (CCompilerError, ExecError, PlatformError)
except ImportError:  # setuptools < 59
    from distutils.errors import CCompilerError, DistutilsExecError, DistutilsPlatformError

    BUILD_ERRORS = (CCompilerError, DistutilsExecError, DistutilsPlatformError)


def warn(reason: str) -> None:
    """A banner that stands out in ``pip install -v`` and build logs."""
    line = "*" * 75
    print(
        f"\n{line}\nWARNING: the compiled SMTP parser (mta.protocol._parser_c) was not "
        f"built:\n  {reason}\nmta is installed with its pure-Python parser, which behaves "
        "the same but is slower.\nInstall a C compiler (Debian: apt install gcc "
        "python3-dev) and reinstall to get it.\n"
        f"{line}\n",
        file=sys.stderr,
    )


class OptionalBuildExt(build_ext):
    """build_ext that turns a failed compile into a warning and a pure-Python wheel."""

    def run(self) -> None:
        try:
            super().run()
        except BUILD_ERRORS as exc:
            warn(f"no working C compiler ({exc})")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as exc:
            warn(f"compiling {ext.sources[0]} failed ({exc})")


def extensions() -> list[Extension]:
    if os.environ.get("MTA_NO_EXTENSIONS") == "1":
        warn("MTA_NO_EXTENSIONS=1 was set at build time")
        return []
    compile_args = ["-O2"] if os.name == "posix" else []
    try:
        from Cython.Build import cythonize
    except ImportError:
        cythonize = None
    if cythonize is not None and (HERE / PYX).exists():
        ext = Extension("mta.protocol._parser_c", [PYX], extra_compile_args=compile_args)
        return list(cythonize([ext], language_level=3))
    if (HERE / C_SOURCE).exists():  # an sdist built elsewhere, installed without Cython
        return [Extension("mta.protocol._parser_c", [C_SOURCE], extra_compile_args=compile_args)]
    warn(f"neither Cython with {PYX} nor {C_SOURCE} is available")
    return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
