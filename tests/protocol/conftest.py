"""Every parser test runs against both twins, the compiled one and the pure-Python one.

The backends are imported by name, not through :mod:`mta.parser_backend`, so a missing
compiled module cannot hide behind the fallback: its tests fail.  Only
``MTA_NO_EXTENSIONS=1`` (the CI leg without a compiler) leaves the compiled twin out.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

from mta.parser_backend import BACKENDS

NO_EXTENSIONS = os.environ.get("MTA_NO_EXTENSIONS") == "1"
BACKEND_NAMES = ["python"] if NO_EXTENSIONS else ["python", "c"]


def load_backend(name: str) -> ModuleType:
    """Import one twin; the compiled one failing to import is a test failure."""
    try:
        return importlib.import_module(BACKENDS[name])
    except ImportError as exc:
        problem = str(exc)
    pytest.fail(
        f"parser backend {name!r} cannot be imported ({problem}); build it with "
        "`python setup.py build_ext --inplace` or set MTA_NO_EXTENSIONS=1",
        pytrace=False,
    )


# Session scope: the modules are immutable, and hypothesis tests may use the fixtures.
@pytest.fixture(scope="session", params=BACKEND_NAMES)
def parser(request: pytest.FixtureRequest) -> ModuleType:
    """One parser backend module (``_parser_py`` or ``_parser_c``)."""
    return load_backend(request.param)


@pytest.fixture(scope="session")
def backends() -> list[ModuleType]:
    """All backends under test, the pure-Python twin first (the reference)."""
    return [load_backend(name) for name in BACKEND_NAMES]
