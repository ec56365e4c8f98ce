"""Threads and memory after many apps were created, served one request each, and dropped.

An app-factory test suite does this thousands of times. Each app gets one test-client request
and is dropped; nothing calls ``gc.collect()`` or ``close()``: the interpreter's own garbage
collection is all there is. Prints the live threads and the resident memory at the end, for the
bare apps and for apps with ``Tracking(app)`` (mongomock), each in a fresh process.

    python benchmarks/bench_many_apps.py            # 2,000 apps per case
    python benchmarks/bench_many_apps.py --apps 500
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run(apps: int, tracked: bool) -> None:
    import mongoengine
    import mongomock
    from flask import Flask

    from flask_tracking import Tracking

    mongoengine.connect(
        "bench_many_apps", mongo_client_class=mongomock.MongoClient, uuidRepresentation="standard"
    )
    started = time.perf_counter()
    for number in range(apps):
        app = Flask(f"app{number}")
        if tracked:
            app.config["TRACKING_FLUSH_INTERVAL_SECONDS"] = 0.05
            Tracking(app)

        @app.get("/")
        def index() -> str:
            return "ok"

        app.test_client().get("/")
        del app, index
    elapsed = time.perf_counter() - started
    time.sleep(0.5)  # writers of collected apps finish their last batch and end
    case = "tracked" if tracked else "bare"
    print(
        f"{case:8} {apps} apps in {elapsed:5.1f} s: {threading.active_count()} threads alive, "
        f"{rss_mib():.0f} MiB RSS"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=2000)
    parser.add_argument("--case", choices=("bare", "tracked"))
    options = parser.parse_args()
    if options.case:
        run(options.apps, options.case == "tracked")
        return
    for case in ("bare", "tracked"):
        subprocess.run(
            [sys.executable, __file__, "--apps", str(options.apps), "--case", case], check=True
        )


if __name__ == "__main__":
    main()
