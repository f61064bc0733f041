"""The image pipeline: a firing's pictures rendered, encoded and written off the training thread, in order.

The training thread does only what needs the model (the shared pass, a copy of what will be drawn, moved off the
device) and hands the rest over as a *job*: a callable, closed over those CPU tensors, that renders, encodes and
writes. One background worker thread runs the jobs one at a time in submission order, so the steps of each tag
reach the event file in the order they were logged.

Wiring (what a monitor, or the session that owns the monitors' writer, does)::

    pipeline = ImagePipeline(on_error=report)       # report(failure): warn once, count; runs on the owner's thread
    ...
    maps = maps.detach().to("cpu", non_blocking=True)        # what the job closes over: CPU copies, never views
    pipeline.submit(lambda: write_grid(writer, tag, maps, step), nbytes=maps.nbytes, name=tag)
    ...
    pipeline.flush()      # on_train_end / on_validation_end / on_exception: waits until everything is written
    pipeline.close()      # teardown (also at interpreter exit, or when the pipeline is garbage-collected)

Guarantees:

- **Bounded.** At most ``max_jobs`` jobs and ``max_bytes`` bytes (the ``nbytes`` the owner declares for each, e.g.
  the tensors it closes over) are queued or running at a time; :meth:`submit` blocks until there is room
  (back-pressure: the training thread waits rather than memory growing). A single job larger than ``max_bytes``
  is admitted when the pipeline is otherwise empty.
- **Ordered.** Jobs run one after the other in submission order.
- **Errors are reported, never raised at the caller.** A job's exception is kept as a :class:`JobFailure`, handed to
  ``on_error`` on the owner's thread (from the next :meth:`submit`, :meth:`flush` or :meth:`close`), and listed by
  the :meth:`flush` that follows (at most :data:`MAX_KEPT_FAILURES` between two flushes; :attr:`ImagePipeline.failed`
  counts all). Its traceback is kept without the frames' locals. Exceptions of ``on_error`` itself are the owner's
  and do propagate. A job must not call :meth:`submit` or :meth:`flush` of its own pipeline (refused: it would wait
  for itself).
- **Flushed** by :meth:`flush`, :meth:`close`, leaving a ``with`` block (also on an exception), at interpreter exit
  and when the pipeline is garbage-collected. The worker is a daemon thread, so a pipeline that is never closed
  does not keep the interpreter alive; the exit hook drains it first.
- **Synchronous mode** for debugging: ``ImagePipeline(sync=True)``, or ``PROBELENS_SYNC_IMAGES=1`` in the
  environment when ``sync`` is not given, runs each job at once on the caller's thread, with the same error
  reporting; no thread is started. The bytes written are the same either way (a job owns everything it uses).

Why a thread and not a process (measured, ``benchmarks/event_writer_bench.py``): the heavy parts of a job (zlib or
ISA-L deflate, Pillow, torch ops) release the GIL, so a worker thread runs them beside the training thread; a worker
process would need every tensor pickled across, the PNG bytes sent back to the one writer of the event file, and a
second interpreter's memory.

Torch threads: the worker leaves them alone. ``torch.set_num_threads`` is not per thread: called in a worker thread
before the training thread's first parallel op, it sets the count that the training thread's ops then run with
(measured with torch 2.14, OpenMP: after a worker thread's ``set_num_threads(1)`` the main thread's
``get_num_threads()`` reads 1 and a conv uses one core, process CPU time / thread CPU time 1.0 instead of 2.0). So a
job's torch ops share the process' intra-op threads; keep them small (maps of the probe images, not batches).
"""

from __future__ import annotations

import collections
import os
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_KEPT_FAILURES", "SYNC_ENV_VAR", "ImagePipeline", "JobFailure"]

MAX_KEPT_FAILURES = 100
"""Failures kept between two flushes (and handed to ``on_error`` between two calls); the rest are only counted
(:attr:`ImagePipeline.failed`), so a job that fails at every firing of a long run holds no growing memory."""

SYNC_ENV_VAR = "PROBELENS_SYNC_IMAGES"
"""Set to ``1`` to run every pipeline's jobs synchronously (when ``ImagePipeline(sync=...)`` is not given)."""


@dataclass(frozen=True)
class JobFailure:
    """A job that raised.

    Attributes:
        index: The job's submission number (0 for a pipeline's first job).
        name: The name given to :meth:`ImagePipeline.submit`.
        error: What it raised (with its traceback).
    """

    index: int
    name: str
    error: BaseException


def sync_choice() -> bool | None:
    """What :data:`SYNC_ENV_VAR` asks for: ``True`` (``1``/``true``/``yes``/``on``: synchronous), ``False``
    (``0``/``false``/``no``/``off``: a worker thread) or ``None`` (unset or empty: the caller decides).

    Raises:
        ValueError: any other value, naming it (read when a monitor attaches to a Trainer, so at fit start).
    """
    raw = os.environ.get(SYNC_ENV_VAR, "")
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    if value:
        raise ValueError(
            f"{SYNC_ENV_VAR}={raw!r} is not understood; set it to 1 (draw pictures on the training thread), 0 (draw "
            "them on a worker thread) or leave it unset (a worker only where the model trains on an accelerator)"
        )
    return None


def _env_sync() -> bool:
    return sync_choice() is True


class _State:
    """Everything the worker thread touches; the pipeline object itself is not referenced by the worker, so that
    dropping the last reference to the pipeline lets its finaliser run and stop the worker."""

    def __init__(self, max_jobs: int, max_bytes: int | None) -> None:
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.cond = threading.Condition()
        self.queue: collections.deque[tuple[int, str, int, Callable[[], object]]] = collections.deque()
        self.in_flight_jobs = 0  # queued + running
        self.in_flight_bytes = 0
        self.submitted = 0
        self.done = 0
        self.stopping = False
        self.failed = 0  # ever
        self.failures: list[JobFailure] = []  # since the last flush
        self.unreported: list[JobFailure] = []  # not yet handed to on_error
        self.thread: threading.Thread | None = None

    def has_room(self, nbytes: int) -> bool:
        if self.in_flight_jobs == 0:
            return True
        if self.in_flight_jobs >= self.max_jobs:
            return False
        return self.max_bytes is None or self.in_flight_bytes + nbytes <= self.max_bytes

    def record(self, failure: JobFailure) -> None:
        # the traceback stays (file, line, function) but its frames drop their locals: a failed job's tensors are
        # freed now, not when the owner gets round to flushing
        traceback.clear_frames(failure.error.__traceback__)
        self.failed += 1
        if len(self.failures) < MAX_KEPT_FAILURES:
            self.failures.append(failure)
        if len(self.unreported) < MAX_KEPT_FAILURES:
            self.unreported.append(failure)

    def stop(self) -> None:
        """Lets the worker finish what is queued, then end; waits for it (used by close and the finaliser)."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
            thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


def _work(state: _State) -> None:
    while True:
        with state.cond:
            while not state.queue and not state.stopping:
                state.cond.wait()
            if not state.queue:  # stopping, and nothing left
                return
            index, name, nbytes, job = state.queue.popleft()
        failure = None
        try:
            job()
        except BaseException as err:  # a job must never end the worker; KeyboardInterrupt only reaches the main thread
            failure = JobFailure(index, name, err)
        del job  # the job's tensors are freed before the bytes are given back
        with state.cond:
            if failure is not None:
                state.record(failure)
            state.in_flight_jobs -= 1
            state.in_flight_bytes -= nbytes
            state.done += 1
            state.cond.notify_all()


class ImagePipeline:
    """Runs jobs on one background thread, in order, with a bounded queue (see the module docstring).

    Args:
        max_jobs: Most jobs queued or running at a time (>= 1).
        max_bytes: Most bytes (as declared by ``submit(..., nbytes=)``) queued or running at a time; ``None``: no
            byte bound.
        sync: Run each job at once on the caller's thread; ``None`` reads ``PROBELENS_SYNC_IMAGES``.
        on_error: Called with each :class:`JobFailure`, on the owner's thread, once.
        name: The worker thread's name.
    """

    def __init__(
        self,
        max_jobs: int = 8,
        max_bytes: int | None = 256 * 2**20,
        *,
        sync: bool | None = None,
        on_error: Callable[[JobFailure], Any] | None = None,
        name: str = "probelens-images",
    ) -> None:
        if max_jobs < 1:
            raise ValueError(f"max_jobs must be >= 1, got {max_jobs}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1 or None, got {max_bytes}")
        self.sync = _env_sync() if sync is None else bool(sync)
        self.on_error = on_error
        self.name = name
        self._state = _State(max_jobs, max_bytes)
        self._closed = False
        self._finalizer = weakref.finalize(self, self._state.stop)

    @property
    def max_jobs(self) -> int:
        return self._state.max_jobs

    @property
    def max_bytes(self) -> int | None:
        return self._state.max_bytes

    @property
    def pending(self) -> int:
        """Jobs submitted and not finished yet (queued or running)."""
        with self._state.cond:
            return self._state.in_flight_jobs

    @property
    def pending_bytes(self) -> int:
        """The declared bytes of the jobs not finished yet."""
        with self._state.cond:
            return self._state.in_flight_bytes

    @property
    def failed(self) -> int:
        """How many jobs have raised since the pipeline was made."""
        with self._state.cond:
            return self._state.failed

    @property
    def closed(self) -> bool:
        return self._closed

    def _start(self) -> None:
        state = self._state
        if state.thread is None:
            state.thread = threading.Thread(target=_work, args=(state,), name=self.name, daemon=True)
            state.thread.start()

    def _not_from_a_job(self, what: str) -> None:
        if self._state.thread is not None and threading.current_thread() is self._state.thread:
            raise RuntimeError(f"ImagePipeline.{what}() called from one of its own jobs (it would wait for itself)")

    def _report(self) -> None:
        """Hands the failures not reported yet to ``on_error`` (on the calling, i.e. the owner's, thread)."""
        with self._state.cond:
            unreported, self._state.unreported = self._state.unreported, []
        if self.on_error is not None:
            for failure in unreported:
                self.on_error(failure)

    def submit(self, job: Callable[[], object], *, nbytes: int = 0, name: str = "") -> int:
        """Queues ``job`` (blocks while the pipeline is full); returns its submission number.

        Args:
            job: Takes no argument; what it returns is ignored. It must own what it uses (CPU copies, not views of
                tensors the training goes on changing).
            nbytes: The memory the job holds until it has run (counted against ``max_bytes``).
            name: A label for error reports (a tag, say).

        Raises:
            RuntimeError: The pipeline is closed.
        """
        if self._closed:
            raise RuntimeError(f"ImagePipeline {self.name!r} is closed; a job was submitted after close()")
        self._not_from_a_job("submit")
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        state = self._state
        if self.sync:
            with state.cond:
                index = state.submitted
                state.submitted += 1
            try:
                job()
            except Exception as err:
                with state.cond:
                    state.record(JobFailure(index, name, err))
            with state.cond:
                state.done += 1
            self._report()
            return index
        self._start()
        with state.cond:
            while not state.has_room(nbytes):
                state.cond.wait()
            index = state.submitted
            state.submitted += 1
            state.in_flight_jobs += 1
            state.in_flight_bytes += nbytes
            state.queue.append((index, name, nbytes, job))
            state.cond.notify_all()
        self._report()
        return index

    def flush(self, timeout: float | None = None) -> list[JobFailure]:
        """Waits until every job submitted so far has run; returns the jobs that failed since the last flush.

        Args:
            timeout: Seconds to wait at most (``None``: as long as it takes).

        Raises:
            TimeoutError: Jobs were still pending after ``timeout`` seconds.
        """
        self._not_from_a_job("flush")
        state = self._state
        deadline = None if timeout is None else time.monotonic() + timeout
        with state.cond:
            target = state.submitted
            while state.done < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{target - state.done} image job(s) still pending after {timeout} s")
                state.cond.wait(remaining)
            failures, state.failures = state.failures, []
        self._report()
        return failures

    def close(self) -> list[JobFailure]:
        """Flushes, then stops the worker thread (idempotent); returns what :meth:`flush` returned."""
        failures = self.flush()
        self._closed = True
        self._finalizer()  # stops and joins the worker; runs once
        return failures

    def __enter__(self) -> ImagePipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "sync" if self.sync else f"max_jobs={self.max_jobs}, max_bytes={self.max_bytes}"
        return f"ImagePipeline({mode}, pending={self.pending}, closed={self._closed})"
