"""The DATA parser alone: the Cython ``_parser_c`` against the pure-Python ``_parser_py``.

Both backends' ``DataScanner`` decode the same corpus: messages of 1 KiB, 10 KiB and
100 KiB (76-character lines, every 20th line starting with a dot and so dot-stuffed on the
wire, as RFC 5321 §4.5.2 asks), each ending with ``CRLF.CRLF``, fed in chunks like network
reads.  Each backend decodes the corpus repeatedly for at least ``seconds``; the result is
input MB/s (10^6 bytes) and messages/s.  The decoded sizes of both must agree, or the run
fails (the benchmark would compare different work).

Usage: ``python -m bench.parser_bench [--seconds 3] [--chunk 16384] [--json]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import sys
import time
from typing import Any

__all__ = ["build_corpus", "run_parser_bench"]

BACKENDS = {"c": "mta.protocol._parser_c", "python": "mta.protocol._parser_py"}


def build_corpus(total: int = 8_000_000, seed: int = 7) -> list[bytes]:
    """Wire-format DATA payloads (dot-stuffed, terminated) adding up to about ``total`` bytes."""
    rng = random.Random(seed)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 "
    line_pool = [bytes(rng.choice(alphabet) for _ in range(76)) for _ in range(64)]
    corpus, size = [], 0
    while size < total:
        target = rng.choice((1024, 10 * 1024, 100 * 1024))
        lines = [b"Subject: parser bench\r\n", b"\r\n"]
        length = 0
        while length < target:
            line = line_pool[rng.randrange(len(line_pool))]
            if len(lines) % 20 == 0:
                line = b".." + line  # a body line "." + text, stuffed on the wire
            lines.append(line + b"\r\n")
            length += len(line) + 2
        message = b"".join(lines) + b".\r\n"
        corpus.append(message)
        size += len(message)
    return corpus


def _decode_all(module: Any, corpus: list[bytes], chunk: int) -> tuple[int, int]:
    """Decode every message; return (input bytes, decoded bytes)."""
    scanner_class = module.DataScanner
    consumed_total = decoded_total = 0
    for message in corpus:
        scanner = scanner_class(False)
        view = memoryview(message)
        for start in range(0, len(message), chunk):
            decoded, consumed = scanner.feed(view[start : start + chunk])
            decoded_total += len(decoded)
            consumed_total += consumed
            if scanner.done:
                break
        if not scanner.done:
            raise RuntimeError(f"{module.__name__}: a corpus message did not end")
    return consumed_total, decoded_total


def measure(backend: str, corpus: list[bytes], chunk: int, seconds: float) -> dict[str, Any]:
    module = importlib.import_module(BACKENDS[backend])
    passes = 0
    consumed = decoded = 0
    start = time.perf_counter()
    while True:
        c, d = _decode_all(module, corpus, chunk)
        consumed, decoded, passes = consumed + c, d, passes + 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    return {
        "backend": backend,
        "module": module.__name__,
        "passes": passes,
        "bytes": consumed,
        "decoded_per_pass": decoded,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(consumed / elapsed / 1e6, 2),
        "msgs_per_s": round(passes * len(corpus) / elapsed, 1),
    }


def run_parser_bench(seconds: float = 3.0, chunk: int = 16384, total: int = 8_000_000):
    """Both backends on the same corpus; ``ratio`` is C over Python."""
    corpus = build_corpus(total)
    results = {name: measure(name, corpus, chunk, seconds) for name in BACKENDS}
    if results["c"]["decoded_per_pass"] != results["python"]["decoded_per_pass"]:
        raise RuntimeError("the two parser backends decoded different amounts of data")
    return {
        "corpus_messages": len(corpus),
        "corpus_bytes": sum(map(len, corpus)),
        "chunk": chunk,
        "c": results["c"],
        "python": results["python"],
        "ratio": round(results["c"]["mb_per_s"] / max(results["python"]["mb_per_s"], 1e-9), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.parser_bench", description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0, help="minimum time per backend")
    p.add_argument("--chunk", type=int, default=16384, help="bytes per feed() call")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    report = run_parser_bench(args.seconds, args.chunk)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name in BACKENDS:
            r = report[name]
            print(f"{name:>6}: {r['mb_per_s']:>9} MB/s  {r['msgs_per_s']:>10} msgs/s")
        print(f" ratio: {report['ratio']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
