"""Tests for flask_tracking.cli.export: ``flask tracking export`` (JSON Lines, CSV)."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from flask.testing import FlaskCliRunner
from pymongo.errors import ConnectionFailure

from flask_tracking.cli import export

from .cli_support import assert_clear_error, at, cli_app, run
from .test_queries import insert, stored_record


@pytest.fixture
def runner(mongo: Any) -> FlaskCliRunner:
    return cli_app().test_cli_runner()


def test_export_jsonl_to_stdout_with_base64_bodies(runner: FlaskCliRunner) -> None:
    binary = bytes(range(256))
    first, second = insert(
        stored_record(path="/one", date_created=at(1), request_body=binary, request_body_size=256),
        stored_record(
            path="/two",
            date_created=dt.datetime(2024, 5, 1, 10, 2, 3, 456000),
            custom_data={"n": 1},
        ),
    )
    result = run(runner, "export")
    assert result.exit_code == 0
    assert result.stderr == "Exported 2 records to stdout.\n"
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["_id"] for line in lines] == [str(first), str(second)]  # storage order
    assert next(iter(lines[0])) == "_id"
    assert base64.b64decode(lines[0]["request_body"]) == binary
    assert base64.b64decode(lines[1]["response_body"]) == b"ok"
    assert lines[1]["date_created"] == "2024-05-01T10:02:03.456Z"
    assert lines[1]["custom_data"] == {"n": 1}
    assert lines[0]["request_headers"] == [["Host", "localhost"], ["Accept", "*/*"]]


def test_export_csv_to_a_file_with_filters(runner: FlaskCliRunner, tmp_path: Path) -> None:
    insert(
        stored_record(
            path="/a",
            status_code=500,
            custom_data={"order": 1},
            date_created=at(1),
            request_id="req-1",
            sample_rate=0.25,
        ),
        stored_record(path="/b", date_created=at(2)),
        stored_record(path="/c", status_code=503, user_agent=None, date_created=at(3)),
    )
    target = tmp_path / "out.csv"
    result = run(runner, "export", "--format", "csv", "--status", "5xx", "-o", str(target))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == f"Exported 2 records to {target}.\n"
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert [row["path"] for row in rows] == ["/a", "/c"]
    assert tuple(rows[0]) == export.CSV_COLUMNS
    assert rows[0]["custom_data"] == '{"order": 1}'
    assert (rows[0]["request_id"], rows[0]["sample_rate"]) == ("req-1", "0.25")
    assert rows[0]["user_agent.browser"] == "Firefox"
    assert rows[1]["user_agent.browser"] == ""
    assert rows[0]["date_created"] == "2024-05-01T10:01:00.000Z"
    assert rows[0]["response_body_truncated"] == "false"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # a new export: owner only
    target.chmod(0o640)
    assert run(runner, "export", "--format", "csv", "-o", str(target)).exit_code == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # a replaced one keeps its mode
    assert len(target.read_text().splitlines()) == 4


def test_export_limit_and_no_records(runner: FlaskCliRunner, tmp_path: Path) -> None:
    insert(*(stored_record(path=f"/{index}") for index in range(5)))
    assert len(run(runner, "export", "--limit", "3").stdout.splitlines()) == 3
    result = run(runner, "export", "--path", "/nothing", "-o", str(tmp_path / "empty.jsonl"))
    assert result.stderr == f"Exported 0 records to {tmp_path / 'empty.jsonl'}.\n"
    assert (tmp_path / "empty.jsonl").read_text() == ""


def test_export_to_dev_null_writes_in_place(runner: FlaskCliRunner) -> None:
    insert(stored_record())
    result = run(runner, "export", "-o", os.devnull)
    assert result.exit_code == 0
    assert result.stderr == f"Exported 1 records to {os.devnull}.\n"
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)  # not replaced by a renamed temporary file


def test_a_failed_export_leaves_no_partial_file(
    runner: FlaskCliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert(*(stored_record(path=f"/{index}") for index in range(3)))
    target = tmp_path / "out.jsonl"
    target.write_text("previous export\n")

    def failing(documents: Any, stream: Any) -> int:
        stream.write("half a line")
        raise ConnectionFailure("connection reset")

    monkeypatch.setattr(export, "_write_jsonl", failing)
    assert_clear_error(run(runner, "export", "-o", str(target)), "Cannot reach MongoDB")
    assert target.read_text() == "previous export\n"
    assert [path.name for path in tmp_path.iterdir()] == ["out.jsonl"]


def test_export_streams_without_caching(
    runner: FlaskCliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert(*(stored_record(path=f"/{index}") for index in range(30)))
    seen: dict[str, Any] = {}
    original = export._write_jsonl

    def spy(documents: Any, stream: Any) -> int:
        seen["documents"] = documents
        return original(documents, stream)

    monkeypatch.setattr(export, "_write_jsonl", spy)
    result = run(runner, "export", "--batch-size", "7")
    assert len(result.stdout.splitlines()) == 30
    documents = seen["documents"]
    assert not hasattr(documents, "_result_cache")  # a QuerySetNoCache: nothing is kept
    assert documents._batch_size == 7
    assert documents._as_pymongo is True  # raw dicts, no Document objects
    assert documents._ordering == []  # storage order: no sort for the server to hold


def test_jsonable_handles_every_stored_type() -> None:
    from bson import DBRef

    oid = ObjectId()
    value = {
        "id": oid,
        "ref": DBRef("user", oid),
        "when": dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "day": dt.date(2024, 5, 1),
        "raw": b"\xff",
        "nested": [(1, 2.5, True, None)],
        "other": Exception("x"),
    }
    assert export.jsonable(value) == {
        "id": str(oid),
        "ref": {"$ref": "user", "$id": str(oid)},
        "when": "2024-05-01T08:00:00.000Z",
        "day": "2024-05-01",
        "raw": "/w==",
        "nested": [[1, 2.5, True, None]],
        "other": "x",
    }


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_csv_cells_never_start_a_formula(
    runner: FlaskCliRunner, tmp_path: Path, start: str
) -> None:
    formula = f'{start}HYPERLINK("http://evil.example")'
    insert(stored_record(path=formula, user_id=formula, endpoint="ok"))
    target = tmp_path / "out.csv"
    assert run(runner, "export", "--format", "csv", "-o", str(target)).exit_code == 0
    [row] = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    for column in ("path", "user_id"):
        assert row[column][:1] not in ("=", "+", "-", "@", "\t", "\r"), row[column]
        assert row[column].endswith('HYPERLINK("http://evil.example")')
    assert row["endpoint"] == "ok"
    assert row["status_code"] == "200"


@pytest.mark.parametrize("where", ["missing/out.jsonl", "."])
def test_export_to_a_target_that_cannot_be_written_is_one_sentence(
    runner: FlaskCliRunner, tmp_path: Path, where: str
) -> None:
    # A directory that does not exist, or a directory given as the file: FileNotFoundError /
    # IsADirectoryError tracebacks instead of one sentence and exit code 1 (docs/cli.md).
    insert(stored_record())
    result = run(runner, "export", "-o", str(tmp_path / where))
    assert not isinstance(result.exception, OSError), repr(result.exception)
    assert result.exit_code in (1, 2), result.output


def test_export_jsonl_is_strict_json_for_non_finite_numbers(runner: FlaskCliRunner) -> None:
    # add_data(score=float("nan")) is stored as is (BSON has NaN and Infinity); json.dumps
    # writes them as the bare tokens NaN / Infinity, which are not JSON (RFC 8259): jq,
    # JSON.parse and most JSON Lines readers reject the whole line.
    insert(stored_record(custom_data={"score": float("nan"), "ratio": float("inf")}))
    result = run(runner, "export")
    assert result.exit_code == 0, result.output

    def refuse(token: str) -> Any:
        raise ValueError(f"not JSON: {token}")

    for line in result.stdout.splitlines():
        json.loads(line, parse_constant=refuse)


def test_non_finite_numbers_are_null_in_json_lines_and_empty_in_csv(
    runner: FlaskCliRunner, tmp_path: Path
) -> None:
    # docs/cli.md: NaN and the infinities are written as null (JSON), an empty cell (CSV).
    insert(stored_record(execution_time=float("nan"), custom_data={"ratio": float("-inf")}))
    (line,) = run(runner, "export").stdout.splitlines()
    record = json.loads(line)
    assert (record["execution_time"], record["custom_data"]) == (None, {"ratio": None})
    target = tmp_path / "out.csv"
    assert run(runner, "export", "--format", "csv", "-o", str(target)).exit_code == 0
    (row,) = csv.DictReader(io.StringIO(target.read_text(encoding="utf-8")))
    assert (row["execution_time"], row["custom_data"]) == ("", '{"ratio": null}')
