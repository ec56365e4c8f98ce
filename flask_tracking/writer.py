"""Bounded background batch writer: buffer records in memory, write them in batches off-thread.

Nothing here knows about Flask or MongoDB. The writer is handed a ``write_batch`` callable and
only deals with buffering, batching, retry backoff, counters, shutdown and fork safety. The
design follows OpenTelemetry's ``BatchProcessor`` and sentry-python's background worker.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .logs import EventLimiter
from .uwsgi_support import run_at_uwsgi_exit, warn_about_uwsgi_settings

if TYPE_CHECKING:
    from .aggregate import RollupAggregator

__all__ = ["BatchOutcome", "BatchWriter"]

#: Drop reasons that ``BatchWriter.stats()`` always reports, even at zero.
BASE_DROP_REASONS: tuple[str, ...] = (
    "queue_full",
    "db_error",
    "encode_error",
    "hook_error",
    "write_error",
    "shutdown",
)

#: A warning about a given drop reason (or failing callback) is logged at most this often.
LOG_INTERVAL_SECONDS = 60.0

# One buffered record: (sequence number, record, size in bytes). Records are opaque here: the
# writer hands them to write_batch as they came. The sequence number orders
# records for flush() and lets retried records go back to the head of the queue in order.
_Entry = tuple[int, Any, int]


@dataclass
class BatchOutcome:
    """What write_batch did with one batch.

    ``written + sum(dropped.values()) + len(retry)`` should equal the batch size; the writer
    corrects an outcome that does not add up (see ``BatchWriter``) so its counters stay exact.
    """

    written: int = 0
    """Records stored."""

    dropped: dict[str, int] = field(default_factory=dict)
    """Records given up on, by reason, e.g. ``{"encode_error": 1, "db_error": 3}``."""

    retry: list[Any] = field(default_factory=list)
    """Records to try again later (transient failure, e.g. network), in batch order: normally the
    same dict objects that were passed in. A dict that is not one of them (e.g. the record
    already converted to its stored form) replaces a record of the batch: it takes the place,
    and size, of the earliest batch record not otherwise accounted for as retried."""


class _ExitHook:
    """The atexit callback of one writer.

    It holds the writer weakly, so registering it does not keep an unused writer alive, and it
    unregisters itself when the writer is garbage collected, so nothing is left behind.
    """

    def __init__(self, writer: BatchWriter) -> None:
        self._ref = weakref.ref(writer, self._forget)
        atexit.register(self)
        # Registered again after every writer's hook, so that it runs before all of them
        # (atexit is last-in, first-out): every writer then drains at once, not in turn.
        atexit.unregister(_stop_every_writer)
        atexit.register(_stop_every_writer)

    def _forget(self, _ref: weakref.ref[BatchWriter]) -> None:
        # May run during interpreter teardown, when atexit can already be half gone.
        with contextlib.suppress(Exception):
            atexit.unregister(self)

    def __call__(self) -> None:
        writer = self._ref()
        if writer is not None:
            deadline = writer._exit_deadline
            if deadline is None:
                writer.shutdown(writer._shutdown_timeout)
            else:  # told to stop with the others: what is left of its own timeout
                writer.shutdown(max(0.0, deadline - time.monotonic()))


class BatchWriter:
    """Buffer records in memory and write them in batches from one background daemon thread.

    ``submit`` only appends to a bounded in-memory FIFO and never blocks on I/O. A daemon
    thread, started by the first ``submit`` in the process, hands batches of at most
    ``batch_max_records`` records to ``write_batch`` when a full batch is ready, every
    ``flush_interval_seconds``, on ``flush()`` and on ``shutdown()``. ``write_batch`` is always
    called outside the lock, from that thread only. Records it returns in ``BatchOutcome.retry``
    go back to the head of the queue and are retried after a backoff that starts at
    ``retry_initial_backoff_seconds``, doubles up to ``retry_max_backoff_seconds`` and resets
    after a batch that needs no retry. If ``write_batch`` raises (or returns something that is
    not a ``BatchOutcome``) the whole batch counts as ``dropped_write_error``. A SystemExit or
    KeyboardInterrupt from ``write_batch`` or a callback (or gevent's kill) ends the thread: that
    is logged (rate-limited), and the next ``submit``, ``flush`` or ``shutdown`` starts another,
    which counts the batch being written then as ``dropped_write_error``.

    Counters (``stats()``): every record is counted exactly once. One passed to ``submit`` is
    either refused (``dropped_queue_full``, or ``dropped_shutdown`` once shut down) or
    ``enqueued`` and later ``written``, ``dropped_<reason>`` or still ``pending``. Refused
    records also count in ``not_enqueued``, so once the writer is idle::

        enqueued + not_enqueued == written + pending + sum(dropped_*)

    which is ``enqueued == written + pending + sum(dropped_* except dropped_queue_full)`` as
    long as nothing was submitted after shutdown. If an outcome does not add up to the batch
    size, it is corrected: counts are clamped to the batch, and records nobody accounted for
    are counted as ``dropped_unaccounted``.

    Fork safety: after ``os.fork()`` the child starts from a fresh state. The buffer is emptied
    (the records belong to the parent, which writes them; writing them in the child too would
    duplicate them), the lock and conditions are new (a parent thread may have held them at the
    fork and that thread does not exist in the child), all counters restart at zero, and no
    thread runs until the child's first ``submit``. This is done by an ``os.register_at_fork``
    hook and, for forks that bypass it, by a process id check in every public method. A writer
    that was shut down before the fork stays shut down in the child.

    Exit: an ``atexit`` hook that holds the writer only weakly calls
    ``shutdown(shutdown_timeout_seconds)``, so process exit waits at most about that long.
    An unreferenced writer without a running thread is garbage collected; a running worker
    thread keeps its writer alive until ``shutdown()``.

    Rollups: given a :class:`~flask_tracking.aggregate.RollupAggregator`, the same thread
    writes its aggregates every ``flush_interval_seconds`` (when it has any), on ``flush()``
    (which then also waits for them) and on ``shutdown()``; its counters join ``stats()``,
    and it is emptied in a forked child like the queue. Request threads that add samples to
    it without submitting a record call ``ensure_started()``.
    """

    _due_seq: int  # set with the rest of the state in _reset(); declared for flush()

    def __init__(
        self,
        write_batch: Callable[[list[Any]], BatchOutcome],
        *,
        max_queue_records: int = 10_000,
        max_queue_bytes: int = 64 * 1024 * 1024,
        batch_max_records: int = 500,
        flush_interval_seconds: float = 1.0,
        retry_initial_backoff_seconds: float = 0.5,
        retry_max_backoff_seconds: float = 30.0,
        shutdown_timeout_seconds: float = 5.0,
        on_written: Callable[[int], None] | None = None,
        on_dropped: Callable[[str, int], None] | None = None,
        logger: logging.Logger | None = None,
        name: str = "flask-tracking-writer",
        rollups: RollupAggregator | None = None,
    ) -> None:
        """Configure the writer; no thread is started until the first ``submit``.

        Raises ``ValueError`` for a size or duration that is not positive (``shutdown_timeout_
        seconds`` may be 0: do not wait at exit), for ``batch_max_records > max_queue_records``
        and for an initial backoff above the maximum backoff; ``TypeError`` for a callback that
        is not callable.
        """
        if not callable(write_batch):
            raise TypeError(f"write_batch must be callable, got {write_batch!r}.")
        for hook_name, hook in (("on_written", on_written), ("on_dropped", on_dropped)):
            if hook is not None and not callable(hook):
                raise TypeError(f"{hook_name} must be callable or None, got {hook!r}.")
        _check_count("max_queue_records", max_queue_records)
        _check_count("max_queue_bytes", max_queue_bytes)
        _check_count("batch_max_records", batch_max_records)
        _check_seconds("flush_interval_seconds", flush_interval_seconds)
        _check_seconds("retry_initial_backoff_seconds", retry_initial_backoff_seconds)
        _check_seconds("retry_max_backoff_seconds", retry_max_backoff_seconds)
        _check_seconds("shutdown_timeout_seconds", shutdown_timeout_seconds, allow_zero=True)
        if batch_max_records > max_queue_records:
            raise ValueError(
                f"batch_max_records ({batch_max_records}) must not be larger than "
                f"max_queue_records ({max_queue_records})."
            )
        if retry_initial_backoff_seconds > retry_max_backoff_seconds:
            raise ValueError(
                f"retry_initial_backoff_seconds ({retry_initial_backoff_seconds}) must not be "
                f"larger than retry_max_backoff_seconds ({retry_max_backoff_seconds})."
            )

        self._write_batch = write_batch
        self._max_records = max_queue_records
        self._max_bytes = max_queue_bytes
        self._batch_max = batch_max_records
        self._interval = float(flush_interval_seconds)
        self._initial_backoff = float(retry_initial_backoff_seconds)
        self._max_backoff = float(retry_max_backoff_seconds)
        self._shutdown_timeout = float(shutdown_timeout_seconds)
        self._on_written = on_written
        self._on_dropped = on_dropped
        self._logger = logger if logger is not None else logging.getLogger("flask_tracking")
        self._name = name
        self._rollups = rollups

        # Shutdown state survives a fork: a writer closed in the parent stays closed.
        self._stopping = False
        self._stop_requested = False  # stop_soon(): the worker turns it into a shutdown
        self._deadline = 0.0
        self._shutdown_result: bool | None = None
        self._exit_deadline: float | None = None  # set at interpreter exit
        self._reset_state()

        _LIVE_WRITERS.add(self)
        self._exit_hook = _ExitHook(self)
        warn_about_uwsgi_settings(self._logger)

    # ------------------------------------------------------------------ public API

    def submit(self, record: Any, size_bytes: int) -> bool:
        """Queue ``record`` (``size_bytes`` long once encoded) for writing; never blocks or raises.

        Returns False, and counts the record as ``dropped_queue_full``, when accepting it would
        take the pending records (queued, in flight or waiting for a retry) over
        ``max_queue_records`` or ``max_queue_bytes``: the newest record is the one dropped.
        After ``shutdown()`` returns False and counts ``dropped_shutdown``. A ``size_bytes`` that
        is not a non-negative integer counts as 0.
        """
        try:
            if self._pid != os.getpid():
                self._check_pid()
            size = size_bytes if type(size_bytes) is int and size_bytes > 0 else 0
            with self._lock:
                if self._stopping:
                    reason = "shutdown"
                elif (
                    len(self._queue) + len(self._in_flight) >= self._max_records
                    or self._queue_bytes + size > self._max_bytes
                ):
                    reason = "queue_full"
                else:
                    self._submitted_seq += 1
                    self._queue.append((self._submitted_seq, record, size))
                    self._queue_bytes += size
                    if self._thread is None or self._worker_ended:
                        self._ensure_thread()
                    elif len(self._queue) % self._batch_max == 0:
                        # One wake-up per full batch; smaller batches wait for the interval tick.
                        self._work_cond.notify()
                    return True
                self._dropped[reason] += 1
                self._not_enqueued += 1
                if reason == "queue_full" and self._thread is not None:
                    # Signalled and logged by the worker: a slow record_dropped receiver must
                    # not cost the request. One wake-up until the worker has reported it.
                    if not self._unreported:
                        self._work_cond.notify()
                    self._unreported[reason] = self._unreported.get(reason, 0) + 1
                    self._refusals_counted += 1
                    return False
            self._notify_dropped(reason, 1)
        except Exception:
            # Tracking must never break the request being tracked.
            self._log_limited("submit", "BatchWriter.submit failed", exc_info=True)
        return False

    def ensure_started(self) -> None:
        """Start the worker thread if it is not running in this process (cheap when it is);
        for request threads that hand the rollups a sample without submitting a record."""
        if self._thread is not None and not self._worker_ended and self._pid == os.getpid():
            return
        try:
            self._check_pid()
            with self._lock:
                if not self._stopping:
                    self._ensure_thread()
        except Exception:
            self._log_limited("submit", "BatchWriter.ensure_started failed", exc_info=True)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every record submitted before this call is written or dropped, and the
        rollups (if any) of every request before this call are written.

        Wakes the worker at once, unless it is backing off before a retry (the backoff is kept).
        Returns True when those records are settled, False if ``timeout`` seconds passed first
        (``None``: wait as long as needed). Never raises. Called from a ``write_batch`` or
        callback running on the worker thread it cannot wait and only reports the current state.
        """
        try:
            self._check_pid()
            deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
            rollups = self._rollups
            with self._lock:
                target = self._submitted_seq
                # Refusals before this call must be signalled; later ones do not hold it back.
                refusals_target = self._refusals_counted
                # Rollups: a write round started after this call must complete.
                round_target = 0
                if rollups is not None and not self._rounds_over and rollups.has_work():
                    round_target = self._rollup_started + 1

                def settled() -> bool:
                    return (
                        self._settled_through() >= target
                        and (self._rollup_done >= round_target or self._rounds_over)
                        and self._refusals_signalled() >= refusals_target
                    )

                if settled():
                    return True
                if self._thread is threading.current_thread():
                    return False
                if self._due_seq < target:
                    self._due_seq = target
                    self._work_cond.notify()
                if round_target:
                    self._rollups_due = True
                    self._work_cond.notify()
                while True:
                    if not self._stopping:
                        # Starts the worker, and another if it ended meanwhile (see _run);
                        # releases the lock while it starts one, so settled() comes after.
                        self._ensure_thread()
                    if settled():
                        return True
                    if deadline is None:
                        self._settled_cond.wait()
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._settled_cond.wait(_waitable(remaining))
        except Exception:
            self._log_limited("flush", "BatchWriter.flush failed", exc_info=True)
            return False

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop accepting records, write what is pending within ``timeout``, stop the thread.

        ``timeout`` defaults to ``shutdown_timeout_seconds``. Records still pending at the
        deadline (database down, batch waiting for a retry, ``write_batch`` stuck) are counted
        as ``dropped_shutdown`` and a warning gives their number; a batch stuck in
        ``write_batch`` is abandoned and its eventual outcome ignored. Returns True when nothing
        had to be dropped that way. Idempotent: later calls return the first call's result.
        Never raises.
        """
        try:
            self._check_pid()
            budget = self._shutdown_timeout if timeout is None else max(0.0, float(timeout))
            deadline = time.monotonic() + budget
            lock = self._shutdown_lock
            if budget > 0:
                acquired = lock.acquire(timeout=_waitable(budget))
            else:
                acquired = lock.acquire(blocking=False)
            if not acquired:
                # Another thread is shutting the writer down and has not finished in time.
                return False
            try:
                if self._shutdown_result is None:
                    self._shutdown_result = self._shut_down(deadline)
                return self._shutdown_result
            finally:
                lock.release()
        except Exception:
            self._log_limited("shutdown", "BatchWriter.shutdown failed", exc_info=True)
            return False

    def stop_soon(self) -> None:
        """Ask the writer to stop, without waiting and without taking a lock.

        Safe from a garbage-collector callback (such as the finalizer of the app the writer
        served), which may run on any thread, even one holding this writer's lock. At its next
        wake-up (within ``flush_interval_seconds``) the worker stops accepting records as after
        ``shutdown()``, writes what is pending within ``shutdown_timeout_seconds``, counts
        anything left as ``dropped_shutdown`` and exits. A writer without a running worker has
        nothing pending and simply stays idle.
        """
        self._stop_requested = True

    def begin_shutdown(self, timeout: float | None = None) -> float:
        """Stop accepting records and start writing what is pending, for at most ``timeout``
        seconds (default ``shutdown_timeout_seconds``), without waiting; return that deadline
        (``time.monotonic()``). ``shutdown()`` then waits: several writers told first drain at
        once. No effect on a writer stopping already. Never raises."""
        budget = self._shutdown_timeout if timeout is None else max(0.0, float(timeout))
        deadline = time.monotonic() + budget
        try:
            self._check_pid()
            with self._lock:
                if not self._stopping:
                    self._stopping = True
                    self._deadline = deadline
                    self._work_cond.notify()
        except Exception:
            self._log_limited("shutdown", "BatchWriter.begin_shutdown failed", exc_info=True)
        return deadline

    def stats(self) -> dict[str, int]:
        """Return a new dict of counters.

        Keys: ``enqueued``, ``written``, ``pending`` (queued, in flight or waiting for a retry),
        ``not_enqueued`` (see the class docstring), and ``dropped_<reason>`` for every reason in
        ``BASE_DROP_REASONS`` plus any other reason seen so far. Keys are only ever added.
        """
        self._check_pid()
        with self._lock:
            result = {
                "enqueued": self._submitted_seq,
                "written": self._written,
                "pending": len(self._queue) + len(self._in_flight),
                "not_enqueued": self._not_enqueued,
            }
            for reason, count in self._dropped.items():
                result["dropped_" + reason] = count
        if self._rollups is not None:
            result.update(self._rollups.stats())
        return result

    # ------------------------------------------------------------------ state and fork

    def _reset_state(self) -> None:
        """(Re)create the lock, buffer, counters and thread slot: on init and after a fork."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        # Two conditions on one lock: submit() wakes only the worker, and the worker's
        # "records settled" broadcasts wake only flush()/shutdown() callers.
        self._work_cond = threading.Condition(self._lock)
        self._settled_cond = threading.Condition(self._lock)
        self._shutdown_lock = threading.Lock()
        self._queue: deque[_Entry] = deque()
        # The batch being written. The worker checks its identity when write_batch returns:
        # a new list means shutdown() or a fork reset gave up on that batch.
        self._in_flight: list[_Entry] = []
        self._queue_bytes = 0  # queued + in flight
        self._submitted_seq = 0  # == enqueued
        self._due_seq = 0  # records with seq <= this should be written without waiting
        # First seq of a batch whose counters are updated but whose callbacks still run;
        # flush() waits for them so that callbacks have run by the time it returns.
        self._settling_floor: int | None = None
        # Refused records (a full queue) the worker has yet to signal, by reason. Refusals are
        # numbered: counted so far, taken by a _report_refused call, and the first number of
        # every call still running its callbacks (flush() waits for those before its call).
        self._unreported: dict[str, int] = {}
        self._refusals_counted = 0
        self._refusals_taken = 0
        self._reporting: list[int] = []
        self._written = 0
        self._dropped: dict[str, int] = dict.fromkeys(BASE_DROP_REASONS, 0)
        self._not_enqueued = 0
        self._leftovers_dropped = 0  # pending records counted dropped_shutdown when stopping
        self._backoff = self._initial_backoff
        self._backoff_until = 0.0
        self._next_tick = 0.0
        self._thread: threading.Thread | None = None
        self._worker_ended = False  # the worker in _thread has left _run()
        self._log_limiter = EventLimiter(LOG_INTERVAL_SECONDS)
        # Rollup write rounds: started and completed with nothing left to retry (flush()
        # waits for a round started after its call); due: the worker should run one now.
        self._rollup_started = 0
        self._rollup_done = 0
        self._rollups_due = False
        # Once stopped, no rollup round will run any more: flush() waits for none.
        self._rounds_over: bool = self._stopping
        self._batch_before_rollups = False  # a record batch was taken while rollups were due
        self._rollup_tick = math.inf if self._rollups is None else 0.0
        if self._rollups is not None:
            self._rollups.reset()
            if self._stopping:  # shut down before a fork: the child takes no samples either
                self._rollups.close()

    def _check_pid(self) -> None:
        # Fallback for a fork that skipped the register_at_fork hooks (e.g. a C-level fork).
        if self._pid != os.getpid():
            with _REINIT_LOCK:
                if self._pid != os.getpid():
                    self._reset_state()

    # ------------------------------------------------------------------ worker side

    def _ensure_thread(self) -> None:
        """Start the worker if it is not running (lock held, released while it starts)."""
        if self._thread is not None and not self._worker_ended:
            # Being started, or running. Not asked with is_alive(): under gevent that lets the
            # other greenlets run (a non-blocking acquire that fails yields), one of which may
            # then wait for this lock, a real one when it was made before monkey-patching
            # (gunicorn --preload -k gevent): that wait blocks the whole process.
            return
        thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._worker_ended = False
        self._next_tick = time.monotonic() + self._interval
        if self._rollups is not None:
            self._rollup_tick = self._next_tick
        # Named the writer's worker before it starts, so that it sees itself as such; started
        # with the lock released: under gevent, start() lets the new greenlet run, and a lock
        # made before monkey-patching (gunicorn --preload -k gevent) is a real one, which that
        # greenlet would wait for forever, and the whole process with it.
        self._thread = thread
        # The caller's lock, taken back below: a fork meanwhile (another greenlet's) leaves the
        # child a new one, which this caller must not take and leave held.
        lock = self._lock
        lock.release()
        try:
            thread.start()
        except RuntimeError:
            # Thread limit, or interpreter shutdown; the records stay queued, a later submit
            # or flush tries again and shutdown() counts whatever is left.
            started = False
            self._log_limited("thread", "cannot start the tracking writer thread", exc_info=True)
        else:
            started = True
        finally:
            lock.acquire()
        if not started and self._thread is thread:
            self._thread = None

    def _settled_through(self) -> int:
        """Highest seq such that every record up to it is settled (lock held)."""
        if self._settling_floor is not None:
            return self._settling_floor - 1
        if self._in_flight:
            return self._in_flight[0][0] - 1
        if self._queue:
            return self._queue[0][0] - 1
        return self._submitted_seq

    def _run(self) -> None:
        """Worker thread body: take due batches and write them until told to stop."""
        me = threading.current_thread()
        try:
            with self._lock:
                orphan = self._in_flight if self._thread is me else []
            if orphan:
                # The batch a previous worker was writing when it was ended (see below):
                # counted as when write_batch raises.
                self._settle(orphan, None)
            while True:
                cond = self._work_cond
                with cond:
                    entries = self._next_batch(cond, me)
                    rollups_due, self._rollups_due = self._rollups_due, False
                    if rollups_due:
                        self._batch_before_rollups = False
                self._report_refused()
                if rollups_due or (entries is None and self._stopping):
                    self._write_rollups()
                if entries is None:
                    if self._stopping and self._thread is me:
                        self._drop_leftovers()  # a stop_soon() that ran out of time
                    return
                if entries:
                    self._write(entries)
        except BaseException as error:
            # Every Exception is caught where it is raised: this is a SystemExit or a
            # KeyboardInterrupt from write_batch or a callback (a before_save hook or a signal
            # receiver calling sys.exit()), or gevent's kill. The thread ends, as it was told;
            # the next submit, flush or shutdown starts another, which counts the batch this
            # one was writing, if any, as dropped_write_error.
            self._log_limited(
                "ended",
                "flask_tracking: the writer thread was ended by %s; another one takes over",
                type(error).__name__,
                exc_info=True,
            )
        finally:
            with self._lock:
                if self._thread is me:
                    self._worker_ended = True  # the next submit, flush or shutdown starts another
                    self._settled_cond.notify_all()  # a flush() waiting starts it

    def _report_refused(self) -> None:
        """Signal and log the records refused since the last call (lock not held)."""
        with self._lock:
            unreported, self._unreported = self._unreported, {}
            if not unreported:
                return
            first = self._refusals_taken
            self._refusals_taken = self._refusals_counted
            self._reporting.append(first)
        try:
            for reason, count in unreported.items():
                self._notify_dropped(reason, count)
        finally:
            with self._lock:
                self._reporting.remove(first)
                self._settled_cond.notify_all()

    def _refusals_signalled(self) -> int:
        """Number up to which every refusal is signalled (lock held)."""
        return min(self._reporting) if self._reporting else self._refusals_taken

    def _write_rollups(self) -> None:
        """One rollup write round (lock not held): fold the samples, write the aggregates."""
        rollups = self._rollups
        if rollups is None:
            return
        with self._lock:
            self._rollup_started += 1
            number = self._rollup_started
        try:
            done = rollups.write()
        except Exception:
            done = False
            self._log_limited("rollups", "writing the rollups failed", exc_info=True)
        except BaseException:  # ends this thread (see _run): the next one does the round
            with self._lock:
                self._rollups_due = True
            raise
        with self._lock:
            if done and number > self._rollup_done:
                self._rollup_done = number
            self._settled_cond.notify_all()

    def _next_batch(self, cond: threading.Condition, me: threading.Thread) -> list[_Entry] | None:
        """Wait until a batch is due and take it (lock held); None tells the worker to exit."""
        while True:
            if self._thread is not me or self._work_cond is not cond:
                return None  # a fork reset replaced the state this thread served
            now = time.monotonic()
            if self._stop_requested and not self._stopping:
                self._stopping = True
                self._deadline = now + self._shutdown_timeout
            if self._stopping and (not self._queue or now >= self._deadline):
                return None  # done, or out of time: shutdown() counts what is left
            if self._rollups is not None and now >= self._rollup_tick:
                self._rollup_tick = now + self._interval
                self._rollups_due = self._rollups_due or self._rollups.has_work()
            if now < self._backoff_until:
                if self._stopping and self._backoff_until >= self._deadline:
                    return None  # no retry can happen before the deadline
                if self._rollups_due:
                    return []  # the caller writes the rollups while the records back off
                if self._unreported:
                    return []  # the caller signals the refused records, then comes back
                # Only the end of the backoff or a shutdown lets us continue; flush() and
                # submit() wake-ups just come back here, so they cannot speed up retries.
                cond.wait(_waitable(min(self._backoff_until, self._rollup_tick) - now))
                continue
            if now >= self._next_tick:
                self._due_seq = max(self._due_seq, self._submitted_seq)
                self._next_tick = now + self._interval
            queue = self._queue
            if queue and (
                self._stopping or len(queue) >= self._batch_max or queue[0][0] <= self._due_seq
            ):
                if self._rollups_due:
                    if self._batch_before_rollups:
                        return []  # one batch went first; now the rollups, so neither starves
                    self._batch_before_rollups = True
                batch = [queue.popleft() for _ in range(min(self._batch_max, len(queue)))]
                self._in_flight = batch
                return batch
            if self._rollups_due:
                return []  # no batch due: the caller writes the rollups, then comes back
            if self._unreported:
                # Only before waiting: a due batch goes first (the caller signals them before
                # writing it), or refusals that keep coming would keep the records waiting.
                return []
            cond.wait(_waitable(min(self._next_tick, self._rollup_tick) - now))

    def _write(self, entries: list[_Entry]) -> None:
        """Hand one batch to write_batch (lock not held) and account for the outcome."""
        outcome: BatchOutcome | None = None
        error_logged = False
        try:
            result = self._write_batch([entry[1] for entry in entries])
        except Exception:
            # Logged here, inside the except block, so no traceback (which references this
            # frame and thus the writer) outlives it.
            error_logged = True
            self._log_drop("write_error", len(entries), exc_info=True)
        else:
            if isinstance(result, BatchOutcome):
                outcome = result
            else:
                self._log_limited(
                    "outcome", "write_batch returned %r instead of a BatchOutcome", result
                )
        self._settle(entries, outcome, error_logged=error_logged)

    def _settle(
        self, entries: list[_Entry], outcome: BatchOutcome | None, *, error_logged: bool = False
    ) -> None:
        """Account for the ``outcome`` of the batch ``entries`` (None: write_batch raised, the
        write_error drop logged already if ``error_logged``) and call the callbacks (lock not
        held)."""
        try:
            retry, written, drops, problem = _reconcile(entries, outcome)
        except Exception:
            retry, written, drops, problem = [], 0, {"write_error": len(entries)}, None
            self._log_limited("outcome", "write_batch returned a malformed BatchOutcome")
        if problem:
            self._log_limited("outcome", "%s", problem)

        now = time.monotonic()
        with self._lock:
            if self._in_flight is not entries:
                # shutdown() gave up on this batch (already counted as dropped_shutdown) or a
                # fork reset dropped it: its outcome must not be counted twice.
                return
            self._in_flight = []
            self._settling_floor = entries[0][0]
            self._queue_bytes -= sum(entry[2] for entry in entries) - sum(e[2] for e in retry)
            if retry:
                self._queue.extendleft(reversed(retry))
                self._due_seq = max(self._due_seq, retry[-1][0])
                self._backoff_until = now + self._backoff
                self._backoff = min(self._backoff * 2, self._max_backoff)
            elif outcome is not None:
                self._backoff = self._initial_backoff
            self._written += written
            for reason, count in drops.items():
                self._dropped[reason] = self._dropped.get(reason, 0) + count
        try:
            if written and self._on_written is not None:
                self._call_hook("on_written", self._on_written, written)
            for reason, count in drops.items():
                self._notify_dropped(
                    reason, count, log=not (error_logged and reason == "write_error")
                )
        finally:
            with self._lock:
                self._settling_floor = None
                self._settled_cond.notify_all()

    def _shut_down(self, deadline: float) -> bool:
        """Drain until ``deadline``, then count what is left as dropped_shutdown."""
        with self._lock:
            self._stopping = True
            self._deadline = deadline
            if self._worker_ended and (
                self._queue
                or self._in_flight
                or (self._rollups is not None and self._rollups.has_work())
            ):
                # The worker was ended (see _run): another writes the records and the rollups
                # left, and counts the batch it was writing.
                self._ensure_thread()
            thread = self._thread
            self._work_cond.notify()
        if thread is not None and thread is not threading.current_thread():
            self._join(thread, deadline)
        if thread is None and self._rollups is not None and time.monotonic() < deadline:
            self._write_rollups()  # no worker ever ran: write what the request threads added
        self._drop_leftovers()
        with self._lock:  # the worker may have counted the leftovers itself, on its way out,
            # even before this call (after begin_shutdown() or stop_soon())
            return self._leftovers_dropped == 0

    def _join(self, thread: threading.Thread, deadline: float) -> None:
        """Wait until ``deadline`` for the worker ``thread`` to end; one that another caller
        is starting (see ``_ensure_thread``) is waited for too, once started."""
        while True:
            try:
                thread.join(_waitable(max(0.0, deadline - time.monotonic())))
                return
            except RuntimeError:  # not started yet
                if self._thread is not thread or time.monotonic() >= deadline:
                    return  # its start failed, or no time is left
                time.sleep(0.001)

    def _drop_leftovers(self) -> int:
        """Count what is still pending as dropped_shutdown (once stopping); how many."""
        with self._lock:
            left = len(self._queue) + len(self._in_flight)
            if left:
                self._queue.clear()
                self._in_flight = []  # a new list: a stuck batch's late outcome is ignored
                self._queue_bytes = 0
                self._dropped["shutdown"] += left
                self._leftovers_dropped += left
            self._settling_floor = None
            self._rounds_over = True
            self._work_cond.notify()
            self._settled_cond.notify_all()
        if self._rollups is not None:  # their last write round is over; no thread folds more
            self._rollups.close()
        self._report_refused()  # what the worker had no time to signal
        if left:
            self._logger.warning(
                "flask_tracking writer shut down with %d record(s) still pending; "
                "they were dropped (dropped_shutdown).",
                left,
            )
            self._notify_dropped("shutdown", left, log=False)
        return left

    # ------------------------------------------------------------------ callbacks and logs

    def _notify_dropped(self, reason: str, count: int, *, log: bool = True) -> None:
        """Log (rate-limited) and call on_dropped for a drop; lock not held."""
        if log:
            self._log_drop(reason, count)
        if self._on_dropped is not None:
            self._call_hook("on_dropped", self._on_dropped, reason, count)

    def _log_drop(self, reason: str, count: int, *, exc_info: bool = False) -> None:
        reported = self._log_limiter.take("drop:" + reason, count)
        if reported:
            self._logger.warning(
                "flask_tracking dropped %d record(s): %s (reported at most every %d s).",
                reported,
                reason,
                int(LOG_INTERVAL_SECONDS),
                exc_info=exc_info,
            )

    def _log_limited(self, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        if self._log_limiter.take(key):
            self._logger.warning(message, *args, exc_info=exc_info)

    def _call_hook(self, name: str, hook: Callable[..., object], *args: object) -> None:
        try:
            hook(*args)
        except Exception:
            # A broken metrics callback must not stop records from being written.
            self._log_limited("hook:" + name, "%s callback raised", name, exc_info=True)


def _reconcile(
    entries: list[_Entry], outcome: BatchOutcome | None
) -> tuple[list[_Entry], int, dict[str, int], str | None]:
    """Turn an outcome into (entries to retry, written, drops by reason, problem to log).

    The counts are clamped so that they add up to the batch size exactly: the writer's
    counters must stay exact even if write_batch miscounts.
    """
    total = len(entries)
    if outcome is None:
        return [], 0, {"write_error": total}, None
    retry: list[_Entry] = []
    extra = 0
    if outcome.retry:
        # Match by identity: records are dicts (not hashable) and may be equal to each other.
        by_id: dict[int, list[_Entry]] = {}
        for entry in entries:
            by_id.setdefault(id(entry[1]), []).append(entry)
        replacements = []
        for record in outcome.retry:
            candidates = by_id.get(id(record))
            if candidates:
                retry.append(candidates.pop(0))
            else:
                replacements.append(record)
        if replacements:
            # Replacements take the lowest free sequence numbers: flush() may then wait a bit
            # longer than needed, but can never return while an older record is pending.
            taken = {entry[0] for entry in retry}
            free = [entry for entry in entries if entry[0] not in taken]
            for (seq, _, size), record in zip(free, replacements):
                retry.append((seq, record, size))
            extra = max(0, len(replacements) - len(free))
        retry.sort(key=lambda entry: entry[0])
    settled = total - len(retry)
    reported_written = int(outcome.written)
    written = min(max(reported_written, 0), settled)
    left = settled - written
    drops: dict[str, int] = {}
    reported_dropped = 0
    for reason, raw_count in outcome.dropped.items():
        count = int(raw_count)
        reported_dropped += count
        count = min(max(count, 0), left)
        if count:
            drops[str(reason)] = drops.get(str(reason), 0) + count
            left -= count
    if left:
        drops["unaccounted"] = drops.get("unaccounted", 0) + left
    problem = None
    if extra or reported_written + reported_dropped + len(outcome.retry) != total:
        problem = (
            f"write_batch reported {reported_written} written, {reported_dropped} dropped and "
            f"{len(outcome.retry)} to retry ({extra} more than the batch holds) for a "
            f"batch of {total}; counted {written} written, {drops} dropped, {len(retry)} retried"
        )
    return retry, written, drops, problem


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def _waitable(seconds: float) -> float:
    """``seconds`` cut to what a thread can wait: beyond ``threading.TIMEOUT_MAX`` a wait
    raises OverflowError, which would end the writer thread. Waking early is harmless: the
    worker checks the time again."""
    return min(seconds, threading.TIMEOUT_MAX)


def _check_seconds(name: str, value: object, *, allow_zero: bool = False) -> None:
    valid = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not valid:
        kind = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"{name} must be {kind} finite number of seconds, got {value!r}.")


# Every writer of this process, weakly: the fork hook below resets them in the child. One
# module-level hook rather than one per writer, because os.register_at_fork hooks can never be
# unregistered and would pile up as writers come and go.
_LIVE_WRITERS: weakref.WeakSet[BatchWriter] = weakref.WeakSet()
_REINIT_LOCK = threading.Lock()


def _stop_every_writer() -> None:
    """The first exit hook to run: tell every writer of this process to stop at once."""
    for writer in list(_LIVE_WRITERS):
        writer._exit_deadline = writer.begin_shutdown()


def _exit_every_writer() -> None:
    """What Python's exit hooks do for the writers of this process (see ``_ExitHook``): tell
    them all to stop, then wait for each within its own timeout."""
    _stop_every_writer()
    for writer in list(_LIVE_WRITERS):
        writer._exit_hook()


def _after_fork_in_child() -> None:
    global _REINIT_LOCK
    _REINIT_LOCK = threading.Lock()  # may have been held by a parent thread at the fork
    for writer in list(_LIVE_WRITERS):
        writer._reset_state()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
run_at_uwsgi_exit(_exit_every_writer)
