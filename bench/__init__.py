"""Benchmarks: mta against Postfix on the same machine (``python -m bench``; bench/README.md)."""
