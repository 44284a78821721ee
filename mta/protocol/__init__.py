"""SMTP without I/O (DESIGN.md §2.2): bytes in, events out, replies to bytes.

The server session (session.py), the client side (client.py), the parser twins and the
reply texts.  Nothing here imports asyncio, socket, os, ssl or time, or reads the
environment: the caller passes in what it chose (the parser backend, the limits).
tests/protocol/test_sans_io.py keeps it so.
"""
