"""What redaction costs on hostile input: the worst shapes of a 64 KB body and of a request line.

    python benchmarks/bench_hostile.py              # 64 KB bodies, 5 rounds per shape
    python benchmarks/bench_hostile.py --size 32768 --rounds 3

Every shape of ``tests/hostile.py`` is redacted by a fresh default ``Redactor`` (no verdict
remembered from an earlier round: an attacker sends names never seen before); the table gives
the least time of the rounds per shape, the plain reference (an ordinary JSON body of the same
size with one secret field), and the worst case. Request lines (header names, query strings)
go through ``Redactor.environ``, as on the request thread.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flask_tracking.redact import DEFAULT_REDACT_FIELDS, DEFAULT_REDACT_HEADERS, Redactor
from tests.hostile import BODY_SHAPES, long_header_name, long_query, plain_json


def best_time(run: Callable[[Redactor], Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        redactor = Redactor(DEFAULT_REDACT_HEADERS, DEFAULT_REDACT_FIELDS)
        started = time.perf_counter()
        run(redactor)
        best = min(best, time.perf_counter() - started)
    return best


def _redacting(body: bytes, content_type: str) -> Callable[[Redactor], Any]:
    return lambda redactor: redactor.body(body, content_type)


def request_lines() -> dict[str, dict[str, str]]:
    """Environs of hostile request lines (the parts the request thread scrubs)."""
    words = long_header_name(8000)
    return {
        "header: one 8 KB name of one-letter words": {"HTTP_" + words.replace("-", "_"): "v"},
        "headers: 100 names of 250 characters": {
            f"HTTP_{'_'.join(['A'] * 120)}_{index:04d}": "v" for index in range(100)
        },
        "query: 8 KB of 4 KB names of one-letter words": {"QUERY_STRING": long_query(8000)},
        "query: 8 KB of 1-character parameters": {"QUERY_STRING": "&".join(["a=1"] * 2000)},
        "query: 8 KB of separators": {"QUERY_STRING": "&" * 8000},
        "referer: 8 KB query": {"HTTP_REFERER": "https://example.com/?" + long_query(8000)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=65536, help="body size in bytes")
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()

    body, content_type = plain_json(options.size)
    plain = best_time(lambda r: r.body(body, content_type), options.rounds)
    rows = [("plain JSON reference", plain)]
    for name, shape in BODY_SHAPES.items():
        body, content_type = shape(options.size)
        rows.append((name, best_time(_redacting(body, content_type), options.rounds)))
    print(f"Bodies of {options.size} bytes, least of {options.rounds} rounds:\n")
    print("| shape | ms | x plain |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1000:.2f} | {seconds / plain:.1f} |")
    worst = max(rows[1:], key=lambda row: row[1])
    print(f"| **worst body**: {worst[0]} | {worst[1] * 1000:.2f} | {worst[1] / plain:.1f} |")

    print("\nRequest lines (Redactor.environ):\n")
    print("| shape | ms |\n|---|---|")
    line_rows = []
    for name, environ in request_lines().items():
        seconds = best_time(lambda r, environ=environ: r.environ(dict(environ)), options.rounds)
        line_rows.append((name, seconds))
        print(f"| {name} | {seconds * 1000:.3f} |")
    worst = max(line_rows, key=lambda row: row[1])
    print(f"| **worst request line**: {worst[0]} | {worst[1] * 1000:.3f} |")


if __name__ == "__main__":
    main()
