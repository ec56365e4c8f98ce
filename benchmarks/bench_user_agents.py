"""What a distinct User-Agent costs the writer: every call a cache miss.

A crawler sending a new User-Agent with every request defeats the caches (flask_tracking's
and ua-parser's): each record then pays a full parse. This times
:func:`flask_tracking.record.parse_user_agent` on strings never seen before, of four kinds:
real browsers with random version numbers, bot-like strings, random printable garbage of 100
characters and of 1,024, and "token soup" of 1,024 characters: the words real agents are made of
(``Mozilla/5.0``, ``Android``, ``Build/``, ``Chrome/``, ...) in random order, the costliest input
found for ua-parser's Rust resolver, whose prefilter then lets many expressions run. flask_tracking
parses the first 256 characters of an agent (the whole header is stored). It reports µs per
distinct agent with the resolver ua-parser picked (the Rust one when ``ua-parser-rs`` is
installed), the Rust resolver alone on the whole string, and, for comparison, ua-parser's
pure-Python resolver.

    python benchmarks/bench_user_agents.py            # 2,000 agents of each kind, 5 rounds
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import string
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

import ua_parser
from ua_parser import BasicResolver, Domain, Parser, load_builtins

# Run from a checkout without installing: make the repository root importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask_tracking import record

BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{a}.0.{b}.{c} Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_{a}) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.{b} Safari/605.1.{c}",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{a}.0) Gecko/20100101 Firefox/{a}.{b}.{c}",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{a} like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.{b} Mobile/15E{c} Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; SM-S9{a}B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/{b}.0.0.{c} Mobile Safari/537.36",
)
#: The words real User-Agents are made of: in random order, the costliest input found.
TOKENS = (
    "Mozilla/5.0 ",
    "(Linux; Android 10; ",
    "Chrome/",
    "Safari/",
    "Firefox/",
    "Build/",
    "iPhone OS ",
    "Windows NT ",
    "bot",
    "Mobile ",
    "AppleWebKit/",
    "Version/",
    "MSIE ",
    "Opera ",
    "UCBrowser/",
    "SM-",
    "HTC ",
    "; wv)",
    "FBAN/",
    "Instagram ",
    "-",
    ":",
    "_",
    " 1.2.3",
)
#: Characters of the long agents: four times what is parsed, to show the bound.
LONG = 1024
BOTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.{a}; +http://www.google.com/bot.html) r{b}.{c}",
    "python-requests/2.{a}.{b}-{c}",
    "curl/8.{a}.{b} build{c}",
    "Scrapy/2.{a}.{b} (+https://scrapy.org) id{c}",
)


def agents(kind: str, count: int, rng: random.Random) -> list[str]:
    """``count`` distinct User-Agent strings of ``kind``."""
    printable = string.ascii_letters + string.digits + " ;:/()._-,+"
    seen: set[str] = set()
    while len(seen) < count:
        if kind in ("browser", "bot"):
            template = rng.choice(BROWSERS if kind == "browser" else BOTS)
            agent = template.format(
                a=rng.randrange(10, 130), b=rng.randrange(0, 9999), c=rng.randrange(0, 999)
            )
        elif kind == "tokens-1024":
            agent = "".join(rng.choices(TOKENS, k=LONG))[:LONG]
        else:
            length = 100 if kind == "garbage-100" else LONG
            agent = "".join(rng.choices(printable, k=length))
        seen.add(agent)
    return list(seen)


def time_each(parse: Callable[[str], object], batch: list[str]) -> float:
    """CPU µs of this thread per call of ``parse`` over ``batch`` (CPU time: on a busy
    machine, wall time counts the waits for a core)."""
    started = time.thread_time()
    for agent in batch:
        parse(agent)
    return (time.thread_time() - started) / len(batch) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=2000, help="agents per kind and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-pure", action="store_true", help="skip the pure-Python resolver")
    args = parser.parse_args(argv)
    rng = random.Random(15)
    kinds = ("browser", "bot", "garbage-100", "garbage-1024", "tokens-1024")
    pure = Parser(BasicResolver(load_builtins()))
    try:
        from ua_parser.loaders import load_lazy_builtins
        from ua_parser.regex import Resolver as RustResolver

        rust_resolver = RustResolver(load_lazy_builtins())
    except ImportError:  # ua-parser-rs is not installed
        rust_resolver = None

    def rust_alone(agent: str) -> object:
        assert rust_resolver is not None
        return rust_resolver(agent, Domain.ALL)

    def pure_parse(agent: str) -> object:
        return pure(agent, Domain.ALL).complete()

    record.parse_user_agent("warm-up")
    if record._resolve_agent is ua_parser.parse:
        resolver = "ua-parser's default parser (pure Python: ua-parser-rs is not installed)"
    else:
        resolver = "ua-parser's Rust resolver"
    pure_parse("warm-up")
    rows = []
    for kind in kinds:
        figures: dict[str, list[float]] = {"default": [], "rust": [], "pure": []}
        for _ in range(args.rounds):
            batch = agents(kind, args.count, rng)  # new strings: every call misses the caches
            figures["default"].append(time_each(record.parse_user_agent, batch))
            if rust_resolver is not None:
                figures["rust"].append(time_each(rust_alone, agents(kind, args.count, rng)))
            if not args.no_pure:
                pure_batch = agents(kind, max(1, args.count // 10), rng)
                figures["pure"].append(time_each(pure_parse, pure_batch))
        rows.append((kind, figures))

    try:
        rust_version = f"ua-parser-rs {version('ua-parser-rs')}"
    except PackageNotFoundError:
        rust_version = "ua-parser-rs not installed"
    print(f"CPU µs per distinct User-Agent (medians of {args.rounds} rounds; max of the rounds)")
    print(f"parse_user_agent: {resolver}; ua-parser {version('ua-parser')}, {rust_version}")
    print()
    print(
        "| agents | flask_tracking's parse_user_agent | ua-parser-rs resolver alone "
        "| ua-parser pure Python |"
    )
    print("|---|---:|---:|---:|")
    for kind, figures in rows:
        default_text = (
            f"{statistics.median(figures['default']):.1f} ({max(figures['default']):.1f})"
        )
        pure_text = (
            f"{statistics.median(figures['pure']):.0f} ({max(figures['pure']):.0f})"
            if figures["pure"]
            else "-"
        )
        rust = figures["rust"]
        rust_text = f"{statistics.median(rust):.1f} ({max(rust):.1f})" if rust else "-"
        print(f"| {kind} | {default_text} | {rust_text} | {pure_text} |")
    print(f"Command: python {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
