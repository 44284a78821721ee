"""Builds the compiled parser twin; all metadata lives in pyproject.toml.

``ext/_parser_c.pyx`` becomes ``mta.protocol._parser_c``.  Without it the server runs on
``mta.protocol._parser_py`` (see ``mta/parser_backend.py``); the tests fail loudly if it is
missing unless ``MTA_NO_EXTENSIONS=1`` says that is intended.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "mta.protocol._parser_c",
        ["ext/_parser_c.pyx"],
        extra_compile_args=["-O2"],
    )
]

setup(ext_modules=cythonize(extensions, language_level=3))
