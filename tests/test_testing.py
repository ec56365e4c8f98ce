"""flask_tracking.testing: an unpatched mongomock drops the rollups; connect_mongomock's does not.

Run in fresh interpreters: this test session's conftest patched mongomock already."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import mongoengine, mongomock
    from flask import Flask
    from flask_tracking import Tracking
    from flask_tracking.rollups import Rollup
    from flask_tracking.testing import connect_mongomock

    if sys.argv[1] == "helper":
        connect_mongomock("t")
    else:
        mongoengine.connect(
            "t", mongo_client_class=mongomock.MongoClient, uuidRepresentation="standard"
        )
    app = Flask("t")
    tracking = Tracking(app)
    app.add_url_rule("/", "index", lambda: "ok")
    app.test_client().get("/")
    assert tracking.flush(5)
    stats = tracking.stats(app)
    print(json.dumps({
        "written": stats["written"],
        "rollup_dropped": stats["rollup_dropped"],
        "rollup_count": sum(row["count"] for row in Rollup.objects.last(hours=1).stats()),
    }))
    """
)


@pytest.mark.parametrize(
    ("how", "dropped", "counted"), [("helper", 0, 1), ("plain", 2, 0)], ids=["helper", "plain"]
)
def test_connect_mongomock_lets_the_rollups_be_written(
    how: str, dropped: int, counted: int
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, how], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"written": 1, "rollup_dropped": dropped, "rollup_count": counted}
