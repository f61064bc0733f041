"""What belongs to one Trainer's run, shared by the monitors attached to it.

A :class:`RunSession` lives as long as its Trainer (it is keyed weakly by it) and holds the run's once-only facts:
which notices were given (TensorBoard's image sampling, the PNG fallback), whether the layer table was written,
the probe sets built from the trainer's data (monitors with the same size and seed share one), and which loggers
already reported a failure; and what the run's monitors share to write: the image pipeline (one worker thread that
draws, encodes and writes in order) and probelens' own event file in each TensorBoard run directory. Nothing here
is process-wide: a second Trainer in the same process gets its own notices.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lightning_utilities.core.rank_zero import rank_zero_warn

from probelens.probe import ProbeSet
from probelens.writing.event_file import EventFileWriter
from probelens.writing.pipeline import ImagePipeline, JobFailure

PIPELINE_JOBS = 64
"""Pictures queued for the worker at most; a firing that would exceed it waits (back-pressure)."""
PIPELINE_BYTES = 256 * 2**20
"""Bytes the queued pictures' inputs may hold at most (CPU copies of maps and images)."""


class DrawFailed(Exception):
    """A picture (or text) failed on the pipeline's worker; :meth:`report` tells its owner on the training thread."""

    def __init__(
        self, report: Callable[[int, str, Exception], None] | None, step: int, what: str, error: Exception
    ) -> None:
        super().__init__(f"{what}: {type(error).__name__}: {error}")
        self.report_to, self.step, self.what, self.error = report, step, what, error

    def report(self) -> None:
        if self.report_to is not None:
            self.report_to(self.step, self.what, self.error)


def _dispatch(failure: JobFailure) -> None:
    error = failure.error
    if isinstance(error, DrawFailed):
        error.report()
    else:  # not a monitor's picture: say so rather than lose it
        rank_zero_warn(f"probelens: writing {failure.name or 'a picture'} failed ({type(error).__name__}: {error})")


@dataclass(eq=False)
class RunSession:
    """The once-per-run state of one Trainer (see the module docstring)."""

    notices: set[str] = field(default_factory=set)
    """Keys of the one-time notices given in this run (``"tensorboard-sampling"``, ``"png-fallback"``, ...)."""
    architecture_logged: bool = False
    probes: dict[tuple[int, int, int], ProbeSet] = field(default_factory=dict)
    """Probe sets built from the trainer's data, by (id of the dataset, size, seed)."""
    failed_loggers: set[int] = field(default_factory=set)
    """``id`` of each logger whose write failure was reported."""
    event_files: dict[str, EventFileWriter] = field(default_factory=dict)
    """probelens' own event file per TensorBoard run directory (one for all the run's monitors)."""
    _pipeline: ImagePipeline | None = None

    @property
    def pipeline(self) -> ImagePipeline:
        """The run's image pipeline: one worker thread draws, encodes and writes every monitor's pictures in the
        order they were handed over (``PROBELENS_SYNC_IMAGES=1``: on the training thread, for debugging)."""
        if self._pipeline is None or self._pipeline.closed:
            self._pipeline = ImagePipeline(PIPELINE_JOBS, PIPELINE_BYTES, on_error=_dispatch)
        return self._pipeline

    def event_file(self, log_dir: str) -> EventFileWriter:
        """The run's own event file writer in ``log_dir`` (opened on its first write)."""
        writer = self.event_files.get(log_dir)
        if writer is None:
            writer = self.event_files[log_dir] = EventFileWriter(log_dir)
        return writer

    def flush(self) -> None:
        """Wait until every picture handed over is written, and hand the event files to the OS."""
        if self._pipeline is not None and not self._pipeline.closed:
            self._pipeline.flush()
        for writer in self.event_files.values():
            writer.flush()

    def close(self) -> None:
        """Flush, stop the worker and close the event files (a later firing starts them again)."""
        if self._pipeline is not None:
            self._pipeline.close()
        for writer in self.event_files.values():
            writer.close()

    def first_time(self, notice: str) -> bool:
        """True the first time ``notice`` is asked about in this run (then say it), False afterwards."""
        if notice in self.notices:
            return False
        self.notices.add(notice)
        return True


_RUNS: weakref.WeakKeyDictionary[Any, RunSession] = weakref.WeakKeyDictionary()


def run_session(trainer: Any) -> RunSession:
    """The :class:`RunSession` of ``trainer`` (created on first use, freed with the trainer)."""
    run = _RUNS.get(trainer)
    if run is None:
        run = _RUNS[trainer] = RunSession()
    return run
