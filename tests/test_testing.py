"""flask_tracking.testing: mongomock, connected by connect_mongomock or by hand, stores the
records (encoded to BSON by the writer) and the rollups (bulk updates).

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
    from flask_tracking import Tracking as Tracker
    from flask_tracking.documents import Tracking
    from flask_tracking.rollups import Rollup
    from flask_tracking.testing import connect_mongomock

    if sys.argv[1] == "helper":
        connect_mongomock("t")
    else:
        mongoengine.connect(
            "t", mongo_client_class=mongomock.MongoClient, uuidRepresentation="standard"
        )
    app = Flask("t")
    tracking = Tracker(app)
    app.add_url_rule("/", "index", lambda: "ok")
    app.test_client().get("/")
    assert tracking.flush(5)
    stats = tracking.stats(app)
    print(json.dumps({
        "written": stats["written"],
        "rollup_dropped": stats["rollup_dropped"],
        "rollup_count": sum(row["count"] for row in Rollup.objects.last(hours=1).stats()),
        "paths": [record.path for record in Tracking.objects],
    }))
    """
)


@pytest.mark.parametrize("how", ["helper", "plain"])
def test_records_and_rollups_are_written_to_mongomock(how: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, how], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"written": 1, "rollup_dropped": 0, "rollup_count": 1, "paths": ["/"]}


def test_accept_raw_documents_decodes_them_for_mongomock() -> None:
    import datetime

    import bson
    import mongomock
    from bson.binary import UuidRepresentation
    from bson.codec_options import CodecOptions
    from bson.raw_bson import RawBSONDocument

    from flask_tracking.testing import accept_raw_documents

    accept_raw_documents()
    accept_raw_documents()  # idempotent
    collection = mongomock.MongoClient(uuidRepresentation="standard")["t"]["c"]
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, 678000)
    options = CodecOptions(uuid_representation=UuidRepresentation.STANDARD)
    document = {"_id": 1, "when": when, "body": b"\x00\xff", "pairs": [["a", "b"]]}
    collection.insert_many([RawBSONDocument(bson.encode(document, codec_options=options))])
    collection.insert_one(
        RawBSONDocument(bson.encode({**document, "_id": 2}, codec_options=options))
    )
    collection.insert_many([{"_id": 3, "plain": True}])
    stored = list(collection.find().sort("_id", 1))
    assert stored[0] == document
    assert stored[1] == {**document, "_id": 2}
    assert stored[2] == {"_id": 3, "plain": True}
