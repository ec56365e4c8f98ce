"""What redacting one body costs (``Redactor.scrub_body``), with google-re2 and with Python's re.

    python benchmarks/bench_redact.py                  # 9 repeats of at least 0.2 s per body
    python benchmarks/bench_redact.py --repeat 5 --number 5000

The default redactor (``load_config({}).redactor``) redacts everyday bodies: the 4 KB JSON
document of bench_overhead.py (no secret in it), the 5-byte page of GET /hello, and a few
bodies that make the pre-filter look closer (a secret field, a URL, digits), and a 64 KB page
of the kind a Flask app renders, which names secrets (a sign-in form). Each body is
redacted by the default redactor (with google-re2 and pyahocorasick installed, the pre-filter
runs on google-re2 for bodies of ``prefilter._RE2_MIN_LENGTH`` bytes and more, over the
body's words with pyahocorasick below), by one whose pre-filter runs on google-re2 for every
body, by one that runs over the words with pyahocorasick for every body, and by one that runs
over the words with Python's ``re`` (as where neither is installed). The last column is the
default redactor's ``scrub_bodies`` of 100 copies of the body, per body: what the writer pays
for a body in a batch of records, whose bodies are pre-filtered together. The table gives the
least time per call of the repeats, in µs (``timeit``'s advice: the least is the least
disturbed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import timeit
from importlib.metadata import PackageNotFoundError, version

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_overhead import json_body

from flask_tracking import prefilter
from flask_tracking.config import load_config
from flask_tracking.redact import Redactor

#: Bodies redacted together in the last column (a batch of records).
BATCH = 100


def bodies() -> dict[str, tuple[bytes, str]]:
    """The bodies measured, with their Content-Type."""
    plain = json_body(4096)
    with_url = plain.replace(b'"item-0001"', b'"https://example.org/1"')
    numbers = json.dumps({"ids": list(range(100000, 100000 + 510))}).encode()
    return {
        "4 KB JSON, no secret (bench_overhead.py)": (plain, "application/json"),
        "b'Hello', text/html; charset=utf-8": (b"Hello", "text/html; charset=utf-8"),
        "4 KB JSON with a URL": (with_url, "application/json"),
        "4 KB JSON, a list of numbers": (numbers, "application/json"),
        "4 KB JSON with a password field": (
            plain[:-1] + b', "password": "hunter2"}',
            "application/json",
        ),
        "64 KB page: cards, a sign-in form, an inline script": (
            page_body(65536),
            "text/html; charset=utf-8",
        ),
    }


def page_body(size: int) -> bytes:
    """A page as a Flask app renders one, ``size`` bytes: a head with a CSRF ``<meta>`` and
    an analytics snippet, rows of Bootstrap cards with links, a sign-in form with Flask-WTF's
    hidden CSRF field, and an inline script holding the page's state (JSON) and its handlers."""
    head = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="csrf-token" content="IjBkZGQ1YjE0ZjM3NzM0.ZmYwMA.abcDEF123">'
        "<script>window.dataLayer = window.dataLayer || [];"
        ' gtag("config", "G-ABC123");</script></head>'
        '<body hx-headers=\'{"X-CSRFToken": "IjBkZGQ1YjE0ZjM3NzM0"}\'>'
    )
    form = (
        '<form method="post" action="/login"><input id="csrf_token" name="csrf_token"'
        ' type="hidden" value="IjBkZGQ1YjE0ZjM3NzM0.ZmYwMA.abc"><label for="password">Password'
        '</label><input id="password" name="password" type="password" value=""></form>'
    )
    state = {
        "user": {"id": 42, "name": "Ada", "apiToken": "tok_abcdef123456"},
        "items": [{"id": k, "title": f"Item {k}", "key": f"item-{k}"} for k in range(100)],
    }
    script = (
        f"<script>const state = {json.dumps(state)};\n"
        "var csrftoken = document.querySelector('meta[name=\"csrf-token\"]').content;\n"
        + "".join(
            f"function handler{k}(ev) {{ if (ev.target.dataset.id == {k})"
            f' {{ return post("/api/items/{k}", {{qty: 1}}); }} }}\n'
            for k in range(60)
        )
        + "</script>"
    )
    rows = []
    filled = len(head) + len(form) + len(script) + 16
    for k in range(100000):
        row = (
            f'<div class="card mb-3" data-id="{k}"><div class="card-body"><h5>Item {k}</h5>'
            f'<p class="card-text">Some text to build on the card title.</p>'
            f'<a href="/items/{k}?ref=list&amp;page=2" class="btn btn-primary">Go</a></div></div>'
        )
        if filled + len(row) > size:
            break
        rows.append(row)
        filled += len(row)
    return (head + "".join(rows) + form + script + "</body></html>").encode()


def redactor_on(engine: str) -> Redactor:
    """The default redactor, its body pre-filter as by default (``"default"``), on google-re2
    for every body (``"re2"``), over the words with pyahocorasick (``"ahocorasick"``) or with
    Python's ``re`` (``"re"``)."""
    if engine == "default":
        return load_config({}).redactor
    saved = prefilter._re2, prefilter._ahocorasick, prefilter._RE2_MIN_LENGTH
    # The pre-filter's engine is chosen when the redactor is built.
    if engine == "re2":
        prefilter._RE2_MIN_LENGTH = 0
    else:
        prefilter._re2 = None
    if engine == "re":
        prefilter._ahocorasick = None
    try:
        return load_config({}).redactor
    finally:
        prefilter._re2, prefilter._ahocorasick, prefilter._RE2_MIN_LENGTH = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument(
        "--number", type=int, default=0, help="calls per repeat (default: enough for 0.2 s)"
    )
    options = parser.parse_args()
    engines = [
        "default",
        *(["re2"] if prefilter._re2 is not None else []),
        *(["ahocorasick"] if prefilter._ahocorasick is not None else []),
        "re",
    ]
    versions = []
    for name in ("google-re2", "pyahocorasick"):
        try:
            versions.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            versions.append(f"{name} not installed")
    print(
        f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs;"
        f" {', '.join(versions)}; least of {options.repeat} repeats, µs per call\n"
    )
    print("| body | " + " | ".join(engines) + f" | default, {BATCH} together |")
    print("|---|" + "---:|" * (len(engines) + 1))
    redactors = {engine: redactor_on(engine) for engine in engines}
    for name, (body, content_type) in bodies().items():
        timers = [
            timeit.Timer(
                'redactor.scrub_body(body, content_type, "", 65536)',
                globals={"redactor": redactors[engine], "body": body, "content_type": content_type},
            )
            for engine in engines
        ]
        batch = [(body, content_type, "", 65536)] * BATCH
        timers.append(
            timeit.Timer(
                f"redactor.scrub_bodies(batch)[{BATCH} - 1]",
                globals={"redactor": redactors["default"], "batch": batch},
            )
        )
        cells = []
        for index, timer in enumerate(timers):
            number = options.number or timer.autorange()[0]
            best = min(timer.repeat(number=number, repeat=options.repeat))
            per_body = best / number / (BATCH if index == len(engines) else 1)
            cells.append(f"{per_body * 1e6:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
