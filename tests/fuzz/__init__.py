"""Fuzzing with atheris (libFuzzer): the command parser, the DATA scanner and the server
session, each a *harness* that takes one input of bytes and fails by raising.

``registry.py`` holds the harnesses (every ``harness_*.py`` module here registers its own),
``__main__.py`` is the driver (``python -m tests.fuzz --help``), and ``test_fuzz_seeds.py``
runs every harness over its seeds and the committed regressions in the normal suite.
"""
