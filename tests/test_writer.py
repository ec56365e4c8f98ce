"""Tests for flask_tracking.writer.BatchWriter (threads only; no Flask, no MongoDB)."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator

import pytest

from flask_tracking import writer as writer_module
from flask_tracking.aggregate import RollupAggregator, RollupOutcome
from flask_tracking.writer import BASE_DROP_REASONS, BatchOutcome, BatchWriter

from .conftest import fork_and_report

LOGGER_NAME = "tests.writer"


class Record(dict):
    """A dict that can be weakly referenced, to prove refused records are not kept."""


class Sink:
    """A fake ``write_batch``: records batches; each call follows the next step of ``plan``.

    Steps: "ok" (write all), "retry" (ask to retry all), "raise" (raise RuntimeError), "exit"
    (raise SystemExit, as a ``before_save`` hook calling ``sys.exit()`` does). Calls
    past the end of the plan use ``default``. If ``gate`` is given, every call first waits for
    it (at most 5 s, so a broken test cannot hang).
    """

    def __init__(
        self,
        plan: list[str] | None = None,
        *,
        default: str = "ok",
        gate: threading.Event | None = None,
        block_pid: int | None = None,
    ) -> None:
        self.plan = list(plan or [])
        self.default = default
        self.gate = gate
        self.block_pid = block_pid
        self.lock = threading.Lock()
        self.calls: list[float] = []
        self.seen: list[list[int]] = []
        self.batches: list[tuple[int, list[int]]] = []  # (pid, record ids) of written batches

    def __call__(self, records: list[dict]) -> BatchOutcome:
        with self.lock:
            self.calls.append(time.monotonic())
            self.seen.append([r["i"] for r in records])
            step = self.plan.pop(0) if self.plan else self.default
        if self.gate is not None and (self.block_pid is None or self.block_pid == os.getpid()):
            self.gate.wait(5)
        if step == "raise":
            raise RuntimeError("sink exploded")
        if step == "exit":
            raise SystemExit(3)
        if step == "retry":
            return BatchOutcome(retry=list(records))
        with self.lock:
            self.batches.append((os.getpid(), [r["i"] for r in records]))
        return BatchOutcome(written=len(records))

    @property
    def written(self) -> list[int]:
        with self.lock:
            return [i for _, ids in self.batches for i in ids]


def wait_for(predicate, timeout: float = 2.0) -> bool:
    """Poll ``predicate`` until true or ``timeout``; test-side only."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.002)
    return bool(predicate())


def check_invariant(stats: dict[str, int], *, refused_only_by_capacity: bool = True) -> None:
    """Every record is counted once; with ``refused_only_by_capacity`` (nothing submitted after
    shutdown) also the simpler form without not_enqueued."""
    dropped = {key: n for key, n in stats.items() if key.startswith("dropped_")}
    assert stats["enqueued"] + stats["not_enqueued"] == (
        stats["written"] + stats["pending"] + sum(dropped.values())
    ), stats
    if refused_only_by_capacity:
        del dropped["dropped_queue_full"]
        assert stats["enqueued"] == stats["written"] + stats["pending"] + sum(dropped.values())


@pytest.fixture
def make_writer() -> Iterator:
    """Build writers with test-friendly defaults and shut them all down afterwards."""
    made: list[BatchWriter] = []

    def make(sink, **kwargs) -> BatchWriter:
        kwargs.setdefault("flush_interval_seconds", 0.02)
        kwargs.setdefault("retry_initial_backoff_seconds", 0.02)
        kwargs.setdefault("retry_max_backoff_seconds", 0.1)
        kwargs.setdefault("shutdown_timeout_seconds", 1.0)
        kwargs.setdefault("logger", logging.getLogger(LOGGER_NAME))
        writer = BatchWriter(sink, **kwargs)
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.shutdown(0.5)


def submit_all(writer: BatchWriter, ids, size: int = 1) -> list[bool]:
    return [writer.submit({"i": i}, size) for i in ids]


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_queue_records": 0}, "max_queue_records"),
        ({"max_queue_bytes": -1}, "max_queue_bytes"),
        ({"batch_max_records": 0}, "batch_max_records"),
        ({"batch_max_records": 1.5}, "batch_max_records"),
        ({"flush_interval_seconds": 0}, "flush_interval_seconds"),
        ({"flush_interval_seconds": float("inf")}, "flush_interval_seconds"),
        ({"retry_initial_backoff_seconds": -0.1}, "retry_initial_backoff_seconds"),
        ({"retry_max_backoff_seconds": float("nan")}, "retry_max_backoff_seconds"),
        ({"shutdown_timeout_seconds": -1}, "shutdown_timeout_seconds"),
        ({"batch_max_records": 11, "max_queue_records": 10}, "batch_max_records"),
        (
            {"retry_initial_backoff_seconds": 2.0, "retry_max_backoff_seconds": 1.0},
            "retry_initial_backoff_seconds",
        ),
    ],
)
def test_invalid_arguments_raise_value_error_naming_the_argument(kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        BatchWriter(Sink(), **kwargs)


def test_non_callable_write_batch_or_hook_is_rejected() -> None:
    with pytest.raises(TypeError, match="write_batch"):
        BatchWriter(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="on_dropped"):
        BatchWriter(Sink(), on_dropped=42)  # type: ignore[arg-type]


def test_no_thread_until_first_submit_and_stats_has_base_keys(make_writer) -> None:
    writer = make_writer(Sink(), name="writer-lazy-thread-test")
    names = lambda: [t.name for t in threading.enumerate()]  # noqa: E731
    assert "writer-lazy-thread-test" not in names()
    stats = writer.stats()
    for reason in BASE_DROP_REASONS:
        assert stats["dropped_" + reason] == 0
    assert stats["enqueued"] == stats["written"] == stats["pending"] == 0
    stats["written"] = 99  # a copy: changing it changes nothing
    assert writer.stats()["written"] == 0
    assert writer.flush(0) is True  # nothing to wait for, no thread needed
    assert "writer-lazy-thread-test" not in names()

    writer.submit({"i": 0}, 1)
    assert "writer-lazy-thread-test" in names()
    thread = next(t for t in threading.enumerate() if t.name == "writer-lazy-thread-test")
    assert thread.daemon


# ---------------------------------------------------------------- batching and timing


def test_full_batches_are_written_without_flush_and_batch_size_is_respected(make_writer) -> None:
    sink = Sink()
    # The interval is far away: only full batches may wake the worker.
    writer = make_writer(sink, batch_max_records=3, flush_interval_seconds=30)
    submit_all(writer, range(7))
    assert wait_for(lambda: len(sink.written) == 6)
    time.sleep(0.05)
    assert sink.written == [0, 1, 2, 3, 4, 5]  # record 6 waits: not a full batch yet
    assert writer.stats()["pending"] == 1
    assert writer.flush(2) is True
    assert sink.written == list(range(7))
    assert all(len(ids) <= 3 for _, ids in sink.batches)
    assert [ids for _, ids in sink.batches][:2] == [[0, 1, 2], [3, 4, 5]]


def test_large_backlog_is_split_into_batches_in_fifo_order(make_writer) -> None:
    gate = threading.Event()
    sink = Sink(gate=gate)
    writer = make_writer(sink, batch_max_records=4, flush_interval_seconds=30)
    submit_all(writer, range(4))  # the first batch blocks in the sink
    assert wait_for(lambda: sink.calls)
    submit_all(writer, range(4, 15))
    gate.set()
    assert writer.flush(2) is True
    assert sink.written == list(range(15))
    assert [len(ids) for _, ids in sink.batches] == [4, 4, 4, 3]


def test_records_are_written_after_the_flush_interval_without_flush(make_writer) -> None:
    sink = Sink()
    writer = make_writer(sink, flush_interval_seconds=0.2, batch_max_records=100)
    started = time.monotonic()
    submit_all(writer, [1, 2])
    assert sink.written == []  # not written on submit
    assert wait_for(lambda: sink.written == [1, 2])
    assert time.monotonic() - started >= 0.15
    assert writer.stats()["written"] == 2


# ---------------------------------------------------------------- flush


def test_flush_returns_true_when_done_and_false_on_timeout(make_writer) -> None:
    gate = threading.Event()
    sink = Sink(gate=gate)
    writer = make_writer(sink, flush_interval_seconds=30)
    submit_all(writer, range(3))
    started = time.monotonic()
    assert writer.flush(0.05) is False
    elapsed = time.monotonic() - started
    assert 0.04 <= elapsed < 1.0
    gate.set()
    assert writer.flush(2) is True
    assert sink.written == [0, 1, 2]
    assert writer.flush() is True  # already settled: returns at once


def test_flush_wakes_the_worker_at_once(make_writer) -> None:
    sink = Sink()
    writer = make_writer(sink, flush_interval_seconds=30)
    submit_all(writer, range(3))
    started = time.monotonic()
    assert writer.flush(5) is True
    assert time.monotonic() - started < 1.0
    assert sink.written == [0, 1, 2]


def test_submit_never_blocks_while_the_sink_is_blocked(make_writer) -> None:
    gate = threading.Event()
    sink = Sink(gate=gate)
    writer = make_writer(sink, batch_max_records=10, flush_interval_seconds=0.01)
    try:
        assert writer.submit({"i": 0}, 1)
        assert wait_for(lambda: sink.calls)  # the worker is now stuck in write_batch
        started = time.monotonic()
        results = submit_all(writer, range(1, 1001))
        elapsed = time.monotonic() - started
        assert all(results)
        assert elapsed < 0.5
    finally:
        gate.set()
    assert writer.flush(2) is True
    assert sink.written == list(range(1001))


# ---------------------------------------------------------------- limits


def test_queue_full_by_records_drops_the_newest_and_keeps_memory_bounded(make_writer) -> None:
    gate = threading.Event()
    sink = Sink(gate=gate)
    dropped: list[tuple[str, int]] = []
    writer = make_writer(
        sink,
        max_queue_records=5,
        batch_max_records=1,
        on_dropped=lambda reason, n: dropped.append((reason, n)),
    )
    records = [Record(i=i) for i in range(15)]
    refs = [weakref.ref(r) for r in records]
    try:
        results = [writer.submit(r, 1) for r in records]
        assert results == [True] * 5 + [False] * 10
        stats = writer.stats()
        assert stats["dropped_queue_full"] == 10
        assert stats["enqueued"] == 5
        assert stats["pending"] == 5  # in flight + queued, never more than the limit
        del records, results
        gc.collect()
        assert [r() is None for r in refs] == [False] * 5 + [True] * 10  # refused: not kept
    finally:
        gate.set()
    assert writer.flush(2) is True
    assert sink.written == [0, 1, 2, 3, 4]
    # Signalled by the worker (not the refused submit), in as few calls as it finds them.
    assert {reason for reason, _ in dropped} == {"queue_full"}
    assert sum(count for _, count in dropped) == 10
    check_invariant(writer.stats())


def test_queue_full_by_bytes(make_writer) -> None:
    sink = Sink()
    writer = make_writer(sink, max_queue_bytes=100, batch_max_records=50, flush_interval_seconds=30)
    assert writer.submit({"i": 0}, 30)
    assert writer.submit({"i": 1}, 30)
    assert writer.submit({"i": 2}, 30)
    assert not writer.submit({"i": 3}, 30)  # 120 > 100
    assert writer.submit({"i": 4}, 10)  # exactly 100 is allowed
    assert not writer.submit({"i": 5}, 1)
    assert not writer.submit({"i": 6}, 1000)  # bigger than the whole budget
    assert writer.stats()["dropped_queue_full"] == 3
    assert writer.flush(2) is True
    assert sink.written == [0, 1, 2, 4]
    # Written records free their bytes.
    assert writer.submit({"i": 7}, 100)
    assert writer.flush(2) is True
    assert sink.written == [0, 1, 2, 4, 7]


def test_records_waiting_for_retry_still_count_against_the_byte_limit(make_writer) -> None:
    sink = Sink(default="retry")
    writer = make_writer(sink, max_queue_bytes=100, retry_initial_backoff_seconds=0.05)
    assert writer.submit({"i": 0}, 60)
    assert writer.flush(0.1) is False  # written once, asked to retry, now backing off
    assert sink.calls
    assert not writer.submit({"i": 1}, 60)
    assert writer.stats()["dropped_queue_full"] == 1


# ---------------------------------------------------------------- failures


def test_write_batch_raising_drops_that_batch_and_keeps_the_worker_alive(
    make_writer, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    sink = Sink(["raise"])
    writer = make_writer(sink, batch_max_records=2, flush_interval_seconds=30)
    submit_all(writer, [0, 1])
    assert wait_for(lambda: writer.stats()["dropped_write_error"] == 2)
    submit_all(writer, [2])
    assert writer.flush(2) is True
    stats = writer.stats()
    assert stats["dropped_write_error"] == 2
    assert stats["written"] == 1
    assert sink.written == [2]
    errors = [r for r in caplog.records if "write_error" in r.getMessage()]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    check_invariant(stats)


def test_a_worker_ended_while_flush_waits_is_replaced_and_its_batch_counted(
    make_writer, caplog
) -> None:
    """A BaseException that is no Exception ends the worker thread: a SystemExit or
    KeyboardInterrupt raised by write_batch or a callback (a before_save hook or a
    record_dropped receiver calling sys.exit()), gevent's kill. flush() waiting then starts
    another worker, which writes the rest; the batch being written counts as
    dropped_write_error (signalled before flush() returns), and the end is logged once."""
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    flush_waits = threading.Event()
    sink = Sink(["exit"], gate=flush_waits)
    dropped: list[tuple[str, int]] = []
    writer = make_writer(
        sink,
        batch_max_records=2,
        flush_interval_seconds=30,
        on_dropped=lambda reason, n: dropped.append((reason, n)),
    )
    submit_all(writer, range(2))  # taken at once (a full batch); it ends the worker later
    assert wait_for(lambda: sink.calls)
    submit_all(writer, range(2, 5))
    settled = writer._settled_cond
    wait = settled.wait

    def wait_flagged(timeout: float | None = None) -> bool:
        flush_waits.set()  # the worker's SystemExit comes once flush() waits
        return wait(timeout)

    settled.wait = wait_flagged  # type: ignore[method-assign]
    started = time.monotonic()
    assert writer.flush(5) is True
    assert time.monotonic() - started < 2.0
    assert sink.written == [2, 3, 4]
    stats = writer.stats()
    assert (stats["written"], stats["dropped_write_error"], stats["pending"]) == (3, 2, 0)
    check_invariant(stats)
    assert dropped == [("write_error", 2)]
    ended = [r for r in caplog.records if "writer thread was ended" in r.getMessage()]
    assert len(ended) == 1
    assert ended[0].exc_info is not None and ended[0].exc_info[0] is SystemExit


@pytest.mark.parametrize("error", [SystemExit(1), KeyboardInterrupt()])
def test_shutdown_writes_what_an_ended_worker_left_pending(make_writer, error) -> None:
    """The worker ended by a callback (here on_written: a record_written receiver) before
    shutdown(): shutdown starts another, which writes the pending records, instead of
    counting them dropped_shutdown."""
    calls: list[int] = []

    def on_written(n: int) -> None:
        calls.append(n)
        if len(calls) == 1:
            raise error

    gate = threading.Event()
    sink = Sink(gate=gate)
    writer = make_writer(
        sink,
        batch_max_records=2,
        flush_interval_seconds=30,
        on_written=on_written,
        name="writer-ended-test",
    )
    submit_all(writer, range(3))  # 0 and 1 make a batch, taken at once; 2 waits in the queue
    assert wait_for(lambda: sink.calls)
    worker = next(t for t in threading.enumerate() if t.name == "writer-ended-test")
    gate.set()  # 0 and 1 are written, then on_written ends the worker
    worker.join(2)
    assert not worker.is_alive()
    assert writer.stats()["pending"] == 1
    assert writer.shutdown(2) is True
    assert sink.written == [0, 1, 2]
    stats = writer.stats()
    assert (stats["written"], stats["dropped_shutdown"], stats["pending"]) == (3, 0, 0)
    check_invariant(stats)


def test_the_next_record_starts_another_worker_at_once(make_writer) -> None:
    """After the worker was ended, the next record (not only the next full batch) starts
    another: records are written every interval again, without a flush()."""
    calls: list[int] = []

    def on_written(n: int) -> None:
        calls.append(n)
        if len(calls) == 1:
            raise SystemExit(1)

    sink = Sink()
    writer = make_writer(
        sink, batch_max_records=10, on_written=on_written, name="writer-resubmit-test"
    )
    submit_all(writer, [0])  # written at the next tick, then on_written ends the worker
    worker = next(t for t in threading.enumerate() if t.name == "writer-resubmit-test")
    worker.join(2)
    assert not worker.is_alive()
    submit_all(writer, [1])
    assert wait_for(lambda: sink.written == [0, 1])


def test_write_batch_returning_something_else_is_a_write_error(make_writer) -> None:
    writer = make_writer(lambda records: None)
    submit_all(writer, range(3))
    assert writer.flush(2) is True
    assert writer.stats()["dropped_write_error"] == 3


def test_outcome_drops_are_counted_per_reason(make_writer) -> None:
    def sink(records: list[dict]) -> BatchOutcome:
        return BatchOutcome(
            written=len(records) - 4, dropped={"encode_error": 1, "db_error": 2, "too_big": 1}
        )

    dropped: list[tuple[str, int]] = []
    written: list[int] = []
    writer = make_writer(
        sink,
        batch_max_records=10,
        flush_interval_seconds=30,
        on_dropped=lambda reason, n: dropped.append((reason, n)),
        on_written=written.append,
    )
    submit_all(writer, range(10))
    assert writer.flush(2) is True
    stats = writer.stats()
    assert stats["written"] == 6
    assert stats["dropped_encode_error"] == 1
    assert stats["dropped_db_error"] == 2
    assert stats["dropped_too_big"] == 1  # new reasons get their own key
    assert sorted(dropped) == [("db_error", 2), ("encode_error", 1), ("too_big", 1)]
    assert written == [6]
    check_invariant(stats)


def test_an_outcome_that_does_not_add_up_is_corrected(make_writer, caplog) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    outcomes = [BatchOutcome(written=1), BatchOutcome(written=10, dropped={"db_error": 5})]
    writer = make_writer(
        lambda records: outcomes.pop(0), batch_max_records=3, flush_interval_seconds=30
    )
    submit_all(writer, range(3))
    assert writer.flush(2) is True
    stats = writer.stats()
    assert stats["written"] == 1
    assert stats["dropped_unaccounted"] == 2
    submit_all(writer, range(3))
    assert writer.flush(2) is True
    stats = writer.stats()
    assert stats["written"] == 4  # over-reporting is clamped to the batch size
    assert stats["dropped_db_error"] == 0
    assert any("for a batch of 3" in r.getMessage() for r in caplog.records)
    check_invariant(stats)


# ---------------------------------------------------------------- retries


def test_retry_twice_then_success_writes_everything_once_in_order(make_writer) -> None:
    sink = Sink(["retry", "retry"])
    writer = make_writer(
        sink,
        batch_max_records=10,
        retry_initial_backoff_seconds=0.05,
        retry_max_backoff_seconds=1.0,
    )
    submit_all(writer, range(5))
    started = time.monotonic()
    assert writer.flush(3) is True
    assert time.monotonic() - started >= 0.05 + 0.1 - 0.01  # both backoffs were waited
    assert sink.written == [0, 1, 2, 3, 4]
    assert len(sink.calls) == 3
    stats = writer.stats()
    assert stats["written"] == 5
    assert stats["pending"] == 0
    check_invariant(stats)


def test_retried_records_stay_ahead_of_newer_ones(make_writer) -> None:
    gate = threading.Event()
    sink = Sink(["retry"], gate=gate)
    writer = make_writer(
        sink, batch_max_records=3, retry_initial_backoff_seconds=0.05, flush_interval_seconds=30
    )
    submit_all(writer, [0, 1, 2])
    assert wait_for(lambda: sink.calls)
    submit_all(writer, [3, 4, 5, 6])  # queued while the first batch is still in write_batch
    gate.set()  # now it asks for a retry: 0, 1, 2 must go back ahead of 3..6
    assert writer.flush(3) is True
    assert sink.written == list(range(7))
    assert sink.batches[0][1] == [0, 1, 2]


def test_partial_retry_keeps_only_the_asked_records(make_writer) -> None:
    calls: list[list[int]] = []

    def sink(records: list[dict]) -> BatchOutcome:
        calls.append([r["i"] for r in records])
        if len(calls) == 1:  # write the odd ones, retry the even ones, listed backwards
            return BatchOutcome(written=2, retry=[r for r in reversed(records) if r["i"] % 2 == 0])
        return BatchOutcome(written=len(records))

    writer = make_writer(sink, batch_max_records=5, flush_interval_seconds=30)
    submit_all(writer, range(5))
    assert writer.flush(3) is True
    assert calls == [[0, 1, 2, 3, 4], [0, 2, 4]]  # retried in submission order
    assert writer.stats()["written"] == 5


def test_retry_may_hand_back_replacement_dicts(make_writer) -> None:
    # Like a sink that converts records to documents, drops one, and asks to retry the rest.
    seen: list[list[tuple[int, bool]]] = []

    def sink(records: list[dict]) -> BatchOutcome:
        seen.append([(r["i"], "converted" in r) for r in records])
        if len(seen) == 1:
            converted = [{"i": r["i"], "converted": True} for r in records if r["i"] != 1]
            return BatchOutcome(dropped={"encode_error": 1}, retry=converted)
        return BatchOutcome(written=len(records))

    writer = make_writer(sink, batch_max_records=4, max_queue_bytes=400, flush_interval_seconds=30)
    submit_all(writer, range(4), size=100)
    assert writer.flush(3) is True
    assert seen == [
        [(0, False), (1, False), (2, False), (3, False)],
        [(0, True), (2, True), (3, True)],  # the replacements, in order
    ]
    stats = writer.stats()
    assert stats["written"] == 3
    assert stats["dropped_encode_error"] == 1
    assert "dropped_unaccounted" not in stats
    check_invariant(stats)
    assert writer.submit({"i": 9}, 400)  # all bytes were released


def test_flush_does_not_make_retries_faster_than_the_backoff(make_writer) -> None:
    sink = Sink(default="retry")
    writer = make_writer(sink, retry_initial_backoff_seconds=0.1, retry_max_backoff_seconds=0.1)
    submit_all(writer, [0])
    started = time.monotonic()
    while time.monotonic() - started < 0.3:
        writer.flush(0.005)  # hammer the worker with wake-ups
    # One call at the start, then at most one per 0.1 s backoff.
    assert 2 <= len(sink.calls) <= 5
    gaps = [b - a for a, b in zip(sink.calls, sink.calls[1:])]
    assert all(gap >= 0.09 for gap in gaps), gaps


def test_backoff_doubles_and_resets_after_success(make_writer) -> None:
    sink = Sink(["retry", "retry", "retry", "retry", "ok", "retry", "ok"])
    writer = make_writer(
        sink,
        batch_max_records=10,
        retry_initial_backoff_seconds=0.02,
        retry_max_backoff_seconds=1.0,
    )
    submit_all(writer, [0])
    assert writer.flush(3) is True
    gaps = [b - a for a, b in zip(sink.calls, sink.calls[1:])]
    assert len(gaps) == 4
    for gap, backoff in zip(gaps, [0.02, 0.04, 0.08, 0.16]):
        assert gap >= backoff - 0.005, gaps
    submit_all(writer, [1])
    assert writer.flush(3) is True
    reset_gap = sink.calls[-1] - sink.calls[-2]
    assert 0.015 <= reset_gap < 0.15  # back to 0.02, not 0.32
    assert sink.written == [0, 1]


def test_waits_longer_than_a_thread_can_wait_do_not_end_the_worker(make_writer) -> None:
    # Condition.wait raises OverflowError beyond threading.TIMEOUT_MAX: the worker waits at most
    # that long, so an interval or a backoff of 1e10 s leaves it alive.
    sink = Sink(["retry", "ok"])
    writer = make_writer(
        sink,
        flush_interval_seconds=1e10,
        retry_initial_backoff_seconds=1e10,
        retry_max_backoff_seconds=1e10,
    )
    submit_all(writer, [0])
    assert writer.flush(0.5) is False  # written once, then backing off for 1e10 s
    assert wait_for(lambda: sink.calls)
    assert [t.name for t in threading.enumerate() if t.name.startswith("flask-tracking-writer")]
    submit_all(writer, [1])
    assert writer.stats()["pending"] == 2


# ---------------------------------------------------------------- shutdown


def test_shutdown_writes_pending_records_and_stops_the_thread(make_writer) -> None:
    sink = Sink()
    writer = make_writer(sink, flush_interval_seconds=30, name="writer-shutdown-test")
    submit_all(writer, range(5))
    assert writer.shutdown(2) is True
    assert sink.written == [0, 1, 2, 3, 4]
    assert writer.stats()["pending"] == 0
    assert "writer-shutdown-test" not in [t.name for t in threading.enumerate()]
    assert writer.shutdown(2) is True  # idempotent


def test_stop_soon_writes_what_is_pending_then_the_thread_ends(make_writer) -> None:
    sink = Sink()
    writer = make_writer(sink, flush_interval_seconds=0.05, name="writer-stop-soon-test")
    submit_all(writer, range(3))
    writer.stop_soon()  # as the finalizer of a garbage-collected app does: no lock, no wait
    assert wait_for(lambda: "writer-stop-soon-test" not in [t.name for t in threading.enumerate()])
    assert sink.written == [0, 1, 2]
    assert writer.submit({"id": 3}, 1) is False
    assert writer.stats()["dropped_shutdown"] == 1
    assert writer.shutdown(1) is True  # nothing left to drop


def test_stop_soon_counts_what_it_could_not_write_in_time(make_writer) -> None:
    sink = Sink(default="retry")
    writer = make_writer(
        sink,
        flush_interval_seconds=0.05,
        retry_initial_backoff_seconds=0.05,
        retry_max_backoff_seconds=0.05,
        shutdown_timeout_seconds=0.2,
        name="writer-stop-soon-late",
    )
    submit_all(writer, range(2))
    writer.stop_soon()
    assert wait_for(lambda: "writer-stop-soon-late" not in [t.name for t in threading.enumerate()])
    stats = writer.stats()
    assert stats["dropped_shutdown"] == 2 and stats["pending"] == 0
    check_invariant(stats)


def test_shutdown_with_a_sink_that_keeps_retrying_gives_up_at_the_deadline(
    make_writer, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    sink = Sink(default="retry")
    writer = make_writer(sink, retry_initial_backoff_seconds=0.05, retry_max_backoff_seconds=0.05)
    submit_all(writer, range(4))
    assert wait_for(lambda: sink.calls)
    started = time.monotonic()
    assert writer.shutdown(0.3) is False
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 0.8  # it kept retrying until about the deadline, then gave up
    assert len(sink.calls) >= 3
    stats = writer.stats()
    assert stats["dropped_shutdown"] == 4
    assert stats["pending"] == 0
    assert any("4 record(s) still pending" in r.getMessage() for r in caplog.records)
    check_invariant(stats)
    assert writer.shutdown(0.3) is False  # idempotent: same answer, no double count
    assert writer.stats()["dropped_shutdown"] == 4


def test_shutdown_during_a_long_backoff_returns_without_waiting_for_it(make_writer) -> None:
    sink = Sink(default="retry")
    writer = make_writer(sink, retry_initial_backoff_seconds=10.0, retry_max_backoff_seconds=10.0)
    submit_all(writer, range(2))
    assert wait_for(lambda: sink.calls)
    started = time.monotonic()
    assert writer.shutdown(0.5) is False
    assert time.monotonic() - started < 0.4  # no retry possible before the deadline
    assert writer.stats()["dropped_shutdown"] == 2


def test_shutdown_after_begin_shutdown_says_records_were_dropped(make_writer) -> None:
    # Tracking.close() and the exit hook tell every writer first: a writer backing off past
    # its deadline counts its records dropped_shutdown on its own thread, at once, before
    # shutdown() is called. shutdown() must still answer that records were dropped.
    sink = Sink(default="retry")
    writer = make_writer(sink, retry_initial_backoff_seconds=10.0, retry_max_backoff_seconds=10.0)
    submit_all(writer, range(2))
    assert wait_for(lambda: sink.calls)
    deadline = writer.begin_shutdown(0.5)
    assert wait_for(lambda: writer.stats()["dropped_shutdown"] == 2)
    assert writer.shutdown(max(0.0, deadline - time.monotonic())) is False


def test_shutdown_abandons_a_stuck_batch_and_ignores_its_late_outcome(make_writer) -> None:
    gate = threading.Event()
    sink = Sink(gate=gate)
    writer = make_writer(sink, batch_max_records=2)
    try:
        submit_all(writer, range(3))
        assert wait_for(lambda: sink.calls)
        started = time.monotonic()
        assert writer.shutdown(0.1) is False
        assert time.monotonic() - started < 0.5
        assert writer.stats()["dropped_shutdown"] == 3
    finally:
        gate.set()
    time.sleep(0.05)  # the stuck write_batch returns now; it must not be counted again
    stats = writer.stats()
    assert stats["written"] == 0
    assert stats["dropped_shutdown"] == 3
    check_invariant(stats)


def test_submit_after_shutdown_is_refused_and_counted(make_writer) -> None:
    dropped: list[tuple[str, int]] = []
    writer = make_writer(Sink(), on_dropped=lambda reason, n: dropped.append((reason, n)))
    assert writer.shutdown(1) is True
    assert writer.submit({"i": 0}, 1) is False
    stats = writer.stats()
    assert stats["dropped_shutdown"] == 1
    assert stats["not_enqueued"] == 1
    assert stats["enqueued"] == 0
    assert dropped == [("shutdown", 1)]
    assert writer.flush(0.1) is True
    check_invariant(stats, refused_only_by_capacity=False)


def test_shutdown_waits_for_a_worker_being_started(make_writer, monkeypatch) -> None:
    """The worker is named the writer's before it starts, and started with the lock released
    (under gevent, start() lets other greenlets run): a shutdown() in that moment waits for it
    to start, and it writes what is queued."""
    sink = Sink()
    writer = make_writer(sink)
    starting = threading.Event()
    real_start = threading.Thread.start

    def slow_start(thread: threading.Thread) -> None:
        starting.set()
        time.sleep(0.3)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", slow_start)
    submitter = threading.Thread(target=writer.submit, args=({"i": 1}, 1))
    real_start(submitter)
    assert starting.wait(5)
    assert writer.shutdown(2.0) is True
    submitter.join(5)
    assert sink.written == [1]


def test_a_fork_while_the_worker_starts_leaves_the_child_writer_usable(
    make_writer, monkeypatch
) -> None:
    """Under gevent, the greenlet starting the worker lets the others run (the lock released):
    one that forks then, leaves the child with that greenlet, and the state the fork hook made
    anew. Once the worker started, the greenlet must give back the lock it took, not take the
    child's new one, which nothing would ever release: every submit of the child would hang."""
    sink = Sink()
    writer = make_writer(sink)
    real_start = threading.Thread.start

    def start_and_fork(thread: threading.Thread) -> None:
        writer_module._after_fork_in_child()  # what the fork hook does in the child
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_and_fork)
    accepted = writer.submit({"i": 1}, 1)  # from the parent: the child does not write it
    monkeypatch.setattr(threading.Thread, "start", real_start)
    free = writer._lock.acquire(timeout=1)
    writer._lock.release()  # ours, or the one left held (so that the test can end)
    assert free, "the lock of the child's writer was left held"
    assert accepted is True
    assert writer.submit({"i": 2}, 1) is True
    assert writer.flush(5) is True
    assert sink.written == [2]


# ---------------------------------------------------------------- counters and callbacks


def test_counters_invariant_under_concurrent_submitters(make_writer) -> None:
    sink = Sink(["raise", "retry"] + ["ok"] * 5, default="ok")
    writer = make_writer(sink, max_queue_records=50, batch_max_records=7)

    def producer(base: int) -> None:
        for i in range(300):
            writer.submit({"i": base + i}, 10)

    threads = [threading.Thread(target=producer, args=(k * 1000,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.flush(3) is True
    stats = writer.stats()
    assert stats["enqueued"] + stats["dropped_queue_full"] == 1200
    assert stats["pending"] == 0
    check_invariant(stats)
    assert len(sink.written) == len(set(sink.written)) == stats["written"]  # no duplicates
    writer.shutdown(1)
    writer.submit({"i": -1}, 1)
    check_invariant(writer.stats(), refused_only_by_capacity=False)


def test_callbacks_are_called_and_their_exceptions_swallowed(make_writer, caplog) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    written_calls: list[int] = []
    dropped_calls: list[tuple[str, int]] = []

    def on_written(n: int) -> None:
        written_calls.append(n)
        raise ValueError("metrics backend down")

    def on_dropped(reason: str, n: int) -> None:
        dropped_calls.append((reason, n))
        raise ValueError("metrics backend down")

    gate = threading.Event()
    sink = Sink(gate=gate)  # holds the first batch so that the 4th record finds the queue full
    writer = make_writer(
        sink,
        max_queue_records=3,
        batch_max_records=3,
        flush_interval_seconds=30,
        on_written=on_written,
        on_dropped=on_dropped,
    )
    try:
        assert submit_all(writer, range(4)) == [True, True, True, False]
    finally:
        gate.set()
    assert writer.flush(2) is True
    assert written_calls == [3]  # flush returns after the callbacks ran
    assert dropped_calls == [("queue_full", 1)]  # the refusal, signalled by the worker
    # The worker survived the raising callback.
    submit_all(writer, [10])
    assert writer.flush(2) is True
    assert sink.written == [0, 1, 2, 10]
    assert written_calls == [3, 1]
    messages = [r.getMessage() for r in caplog.records]
    assert any("on_written callback raised" in m for m in messages)
    assert any("on_dropped callback raised" in m for m in messages)


def test_flush_returns_only_after_the_callbacks_of_its_records_ran(make_writer) -> None:
    finished: list[int] = []

    def slow_on_written(n: int) -> None:
        time.sleep(0.1)
        finished.append(n)

    writer = make_writer(Sink(), flush_interval_seconds=30, on_written=slow_on_written)
    submit_all(writer, range(2))
    # Counted as written almost at once, but not settled until on_written has returned.
    assert writer.flush(0.05) is False
    assert writer.flush(2) is True
    assert finished == [2]


@pytest.fixture
def steady_refusals(make_writer) -> Iterator:
    """A writer whose queue keeps refusing (records bigger than its byte budget, one every
    millisecond from another thread) while its record_dropped receiver is slow (20 ms)."""
    sink = Sink()
    signalled: list[int] = []

    def slow_on_dropped(reason: str, count: int) -> None:
        time.sleep(0.02)
        signalled.append(count)

    writer = make_writer(sink, max_queue_bytes=100, batch_max_records=1, on_dropped=slow_on_dropped)
    assert writer.submit({"i": -1}, 1)  # starts the worker: refusals are now its to signal
    assert writer.flush(2) is True
    stop = threading.Event()

    def refuse() -> None:
        while not stop.is_set():
            writer.submit({"i": -2}, 1000)
            time.sleep(0.001)

    refuser = threading.Thread(target=refuse)
    refuser.start()
    try:
        assert wait_for(lambda: signalled)
        yield writer, sink
    finally:
        stop.set()
        refuser.join()


def test_steady_refusals_do_not_keep_the_worker_from_writing(steady_refusals) -> None:
    # Each refusal arrives while the worker signals the previous ones: it must still take
    # the records that fit, not go back to signalling every time.
    writer, sink = steady_refusals
    submit_all(writer, range(3))
    assert wait_for(lambda: sink.written == [-1, 0, 1, 2], 2), (sink.written, writer.stats())


def test_flush_returns_while_later_records_keep_being_refused(steady_refusals) -> None:
    # Nothing is pending and the refusals before the call are signalled within one slow
    # receiver call: refusals made after flush() was called must not hold it back.
    writer, _ = steady_refusals
    assert writer.flush(1) is True, writer.stats()


def test_drop_warnings_are_rate_limited_per_reason(make_writer, caplog) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    writer = make_writer(Sink(default="raise"), max_queue_records=1, batch_max_records=1)
    assert writer.submit({"i": 0}, 10**9) is False  # bigger than max_queue_bytes
    for _ in range(50):
        writer.submit({"i": 1}, 10**9)
    for i in range(20):
        writer.submit({"i": i}, 10)
        assert writer.flush(2) is True  # the sink raises: dropped_write_error
    drop_lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len([m for m in drop_lines if "queue_full" in m]) == 1
    assert len([m for m in drop_lines if "write_error" in m]) == 1
    stats = writer.stats()
    assert stats["dropped_queue_full"] == 51
    assert stats["dropped_write_error"] == 20


# ---------------------------------------------------------------- fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_empty_and_writes_only_its_own_records(make_writer) -> None:
    parent_pid = os.getpid()
    gate = threading.Event()
    sink = Sink(gate=gate, block_pid=parent_pid)  # blocks in the parent only
    writer = make_writer(sink, batch_max_records=1, flush_interval_seconds=0.01)
    writer.submit({"i": 0}, 1)
    assert wait_for(lambda: sink.calls)  # record 0 is stuck in flight in the parent
    submit_all(writer, [1, 2])
    assert writer.stats()["pending"] == 3

    def child() -> dict[str, object]:
        reset_by_hook = writer._pid == os.getpid()  # before any public method could
        before = writer.stats()
        accepted = submit_all(writer, [100, 101])
        flushed = writer.flush(3)
        mine = [i for p, ids in sink.batches if p == os.getpid() for i in ids]
        report = {"hook": reset_by_hook, "before": before, "accepted": accepted}
        report["flushed"] = flushed
        report.update({"mine": mine, "after": writer.stats()})
        return report

    report = fork_and_report(child)

    assert report["hook"] is True  # the register_at_fork hook reset it
    assert all(value == 0 for value in report["before"].values()), report["before"]
    assert report["accepted"] == [True, True]
    assert report["flushed"] is True
    assert report["mine"] == [100, 101]  # not the parent's 0, 1, 2
    assert report["after"]["written"] == 2
    assert report["after"]["enqueued"] == 2

    gate.set()
    assert writer.flush(2) is True
    assert [i for p, ids in sink.batches if p == parent_pid for i in ids] == [0, 1, 2]
    assert writer.stats()["written"] == 3


def test_pid_change_detected_by_submit_reinitialises_once(make_writer, monkeypatch) -> None:
    gate = threading.Event()
    sink = Sink(gate=gate)
    writer = make_writer(sink, batch_max_records=1)
    try:
        writer.submit({"i": 0}, 1)
        assert wait_for(lambda: sink.calls)  # record 0 in flight, blocked
        submit_all(writer, [1, 2])
        old_thread = writer._thread
        old_lock = writer._lock
        monkeypatch.setattr(writer, "_pid", -1)  # as if this were a forked child

        assert writer.submit({"i": 100}, 1) is True
        assert writer._pid == os.getpid()
        assert writer._lock is not old_lock
        assert writer._thread is not old_thread
        stats = writer.stats()
        assert stats["enqueued"] == 1  # counters restarted; 1 and 2 were discarded
        assert stats["pending"] <= 1
    finally:
        gate.set()
    assert writer.flush(2) is True
    assert old_thread is not None
    old_thread.join(2)
    assert not old_thread.is_alive()  # the orphaned worker noticed and exited
    assert 1 not in sink.written
    assert 2 not in sink.written
    assert 100 in sink.written
    stats = writer.stats()
    assert stats["written"] == 1  # the old worker's late outcome for record 0 is not counted
    check_invariant(stats)


# ---------------------------------------------------------------- lifetime


def test_an_unreferenced_idle_writer_is_garbage_collected() -> None:
    writer = BatchWriter(Sink())
    ref = weakref.ref(writer)
    del writer
    gc.collect()
    assert ref() is None


def test_a_writer_is_garbage_collected_after_shutdown() -> None:
    sink = Sink()
    writer = BatchWriter(sink, flush_interval_seconds=0.01)
    submit_all(writer, range(3))
    assert writer.shutdown(1) is True
    ref = weakref.ref(writer)
    del writer
    gc.collect()
    assert ref() is None
    assert sink.written == [0, 1, 2]


def test_atexit_hook_holds_the_writer_weakly_and_shuts_it_down(monkeypatch) -> None:
    registered: list = []
    unregistered: list = []
    monkeypatch.setattr(atexit, "register", lambda func, *a, **k: registered.append(func))
    monkeypatch.setattr(atexit, "unregister", unregistered.append)

    sink = Sink()
    writer = BatchWriter(sink, flush_interval_seconds=30, shutdown_timeout_seconds=1.0)
    # Besides its own hook, the module's: it tells every writer to stop, before their hooks.
    assert registered[1:] == [writer_module._stop_every_writer]
    unregistered.clear()
    hook = registered[0]
    submit_all(writer, range(3))
    hook()  # what the interpreter does at exit
    assert sink.written == [0, 1, 2]
    assert writer.submit({"i": 3}, 1) is False  # it really shut down

    ref = weakref.ref(writer)
    del writer
    gc.collect()
    assert ref() is None  # the registered hook did not keep it alive
    assert unregistered == [hook]  # and it took itself out of atexit
    hook()  # harmless once the writer is gone


def test_real_atexit_registration_goes_away_with_the_writer() -> None:
    writer = BatchWriter(Sink())
    hook_ref = weakref.ref(writer._exit_hook)
    del writer
    gc.collect()
    assert hook_ref() is None  # atexit no longer holds the writer's hook


# --- rollups on the writer thread -------------------------------------------------------


class RollupRecorder:
    """A ``write_rollups`` that records each round (and can be told to fail)."""

    def __init__(self) -> None:
        self.rounds: list[list] = []
        self.threads: set[str] = set()
        self.fail = 0

    def __call__(self, aggregates: list) -> RollupOutcome:
        self.threads.add(threading.current_thread().name)
        self.rounds.append(aggregates)
        if self.fail:
            self.fail -= 1
            return RollupOutcome(retry=aggregates)
        return RollupOutcome(written=len(aggregates))

    def counted(self) -> int:
        """Requests written (each is in a minute and an hour rollup: counted once)."""
        return sum(
            aggregate.count
            for aggregates in self.rounds
            for key, aggregate in aggregates
            if key[0] == "minute"
        )


def rollup_sample(at: float = 1_714_557_600.0) -> tuple:
    return (at, "index", "GET", "200 OK", 5.0, False, 0, 2)


def rollup_writer(interval: float = 0.05) -> tuple[BatchWriter, RollupAggregator, RollupRecorder]:
    recorder = RollupRecorder()
    aggregator = RollupAggregator(recorder)
    writer = BatchWriter(
        lambda records: BatchOutcome(written=len(records)),
        flush_interval_seconds=interval,
        retry_initial_backoff_seconds=0.01,
        retry_max_backoff_seconds=0.02,
        rollups=aggregator,
        name="rollup-test-writer",
    )
    return writer, aggregator, recorder


def test_rollups_are_written_every_interval_from_the_writer_thread() -> None:
    writer, aggregator, recorder = rollup_writer()
    try:
        for _ in range(3):
            aggregator.add(rollup_sample())
        writer.ensure_started()  # no record submitted: the request path starts the thread
        deadline = time.monotonic() + 5
        while not recorder.rounds and time.monotonic() < deadline:
            time.sleep(0.01)
        assert recorder.counted() == 3
        assert recorder.threads == {"rollup-test-writer"}
        assert writer.stats()["rollup_requests"] == 3
    finally:
        writer.shutdown(1.0)


def test_ensure_started_starts_another_worker_once_one_was_ended() -> None:
    """Request threads that hand the rollups a sample without a record start the worker
    again too, once a SystemExit (here from write_batch) ended it."""
    recorder = RollupRecorder()
    aggregator = RollupAggregator(recorder)
    writer = BatchWriter(
        Sink(["exit"]), flush_interval_seconds=0.05, rollups=aggregator, name="rollup-ended-test"
    )
    try:
        writer.submit({"i": 0}, 1)  # its batch ends the worker
        worker = next(t for t in threading.enumerate() if t.name == "rollup-ended-test")
        worker.join(2)
        assert not worker.is_alive()
        aggregator.add(rollup_sample())
        writer.ensure_started()
        assert wait_for(lambda: recorder.counted() == 1)
    finally:
        writer.shutdown(1.0)


def test_flush_waits_for_the_rollups() -> None:
    writer, aggregator, recorder = rollup_writer(interval=60.0)
    try:
        writer.submit({"n": 1}, 10)
        aggregator.add(rollup_sample())
        assert writer.flush(5.0)
        assert recorder.counted() == 1
        assert writer.flush(5.0)  # nothing new: no round
        assert len(recorder.rounds) == 1
    finally:
        writer.shutdown(1.0)


def test_flush_writes_the_rollups_of_a_round_that_ended_the_worker() -> None:
    """A SystemExit from a rollup write (a receiver calling sys.exit()) ends the worker in
    the middle of a round: flush() starts another, which writes the same aggregates."""
    writer, aggregator, recorder = rollup_writer(interval=60.0)
    write = aggregator._write_rollups
    exits = [SystemExit(2)]

    def ending(aggregates: list) -> RollupOutcome:
        if exits:
            raise exits.pop()
        return write(aggregates)

    aggregator._write_rollups = ending
    try:
        aggregator.add(rollup_sample())
        assert writer.flush(5.0)
        assert recorder.counted() == 1 and not exits
        assert writer.stats()["rollup_pending"] == 0
    finally:
        writer.shutdown(1.0)


def test_flush_times_out_while_rollups_fail_and_they_are_retried() -> None:
    writer, aggregator, recorder = rollup_writer(interval=0.02)
    recorder.fail = 3
    try:
        aggregator.add(rollup_sample())
        writer.ensure_started()
        assert writer.flush(5.0)  # the fourth round succeeds
        assert len(recorder.rounds) == 4
        assert recorder.counted() == 4  # the same aggregate, four tries
        stats = writer.stats()
        assert stats["rollup_retries"] == 6 and stats["rollup_writes"] == 2  # minute + hour
        assert stats["written"] == 0 and stats["dropped_db_error"] == 0  # records apart
    finally:
        writer.shutdown(1.0)


def test_shutdown_writes_the_rollups_even_without_a_thread() -> None:
    writer, aggregator, recorder = rollup_writer(interval=60.0)
    aggregator.add(rollup_sample())
    assert writer.shutdown(1.0)
    assert recorder.counted() == 1


def test_shutdown_writes_the_last_rollups_of_a_running_thread() -> None:
    writer, aggregator, recorder = rollup_writer(interval=60.0)
    writer.submit({"n": 1}, 10)
    aggregator.add(rollup_sample())
    assert writer.shutdown(1.0)
    assert recorder.counted() == 1


def test_rollups_are_written_while_records_back_off() -> None:
    attempts = []

    def failing(records: list[dict]) -> BatchOutcome:
        attempts.append(len(records))
        return BatchOutcome(retry=records)

    recorder = RollupRecorder()
    aggregator = RollupAggregator(recorder)
    writer = BatchWriter(
        failing,
        flush_interval_seconds=0.02,
        retry_initial_backoff_seconds=5.0,
        retry_max_backoff_seconds=5.0,
        rollups=aggregator,
    )
    try:
        writer.submit({"n": 1}, 10)
        deadline = time.monotonic() + 5
        while not attempts and time.monotonic() < deadline:
            time.sleep(0.01)
        aggregator.add(rollup_sample())
        while not recorder.rounds and time.monotonic() < deadline:
            time.sleep(0.01)
        assert recorder.counted() == 1 and attempts == [1]
    finally:
        writer.shutdown(0.2)


def test_rollups_are_not_starved_by_a_queue_always_full_of_records() -> None:
    def slow(records: list[dict]) -> BatchOutcome:
        time.sleep(0.01)
        return BatchOutcome(written=len(records))

    recorder = RollupRecorder()
    aggregator = RollupAggregator(recorder)
    writer = BatchWriter(slow, batch_max_records=1, flush_interval_seconds=0.02, rollups=aggregator)
    try:
        for index in range(300):  # far more than the writer writes in the time
            writer.submit({"n": index}, 10)
        aggregator.add(rollup_sample())
        deadline = time.monotonic() + 2
        while not recorder.rounds and time.monotonic() < deadline:
            time.sleep(0.01)
        assert recorder.counted() == 1
        assert writer.stats()["pending"] > 100  # the records were still queued meanwhile
    finally:
        writer.shutdown(0.2)


def test_flush_after_shutdown_does_not_wait_for_rollups_no_thread_will_write() -> None:
    # The database was down at shutdown: the last rollup round failed and nothing will ever
    # write the aggregates again. A flush() after Tracking.close() (timeout None by default)
    # must not wait for a write round that never comes.
    writer, aggregator, recorder = rollup_writer()
    recorder.fail = 1_000
    aggregator.add(rollup_sample())
    writer.ensure_started()
    writer.shutdown(0.3)
    assert aggregator.has_work()
    started = time.monotonic()
    writer.flush(2.0)
    assert time.monotonic() - started < 0.5


def test_shutdown_writes_the_rollups_and_settles_the_batch_an_ended_worker_left() -> None:
    """A SystemExit from write_batch ended the worker with nothing else queued: shutdown()
    still writes the rollups the requests added, and counts the batch the worker was
    writing as dropped_write_error, as the worker that takes over would."""
    recorder = RollupRecorder()
    aggregator = RollupAggregator(recorder)
    gate = threading.Event()
    writer = BatchWriter(
        Sink(["exit"], gate=gate),
        batch_max_records=1,
        flush_interval_seconds=60,
        rollups=aggregator,
        name="ended-at-exit",
    )
    writer.submit({"i": 0}, 1)  # its batch ends the worker
    worker = next(t for t in threading.enumerate() if t.name == "ended-at-exit")
    gate.set()
    worker.join(2)
    assert not worker.is_alive()
    aggregator.add(rollup_sample())
    assert writer.shutdown(2.0)
    assert recorder.counted() == 1
    stats = writer.stats()
    assert (stats["dropped_write_error"], stats["dropped_shutdown"], stats["pending"]) == (1, 0, 0)
    check_invariant(stats)
