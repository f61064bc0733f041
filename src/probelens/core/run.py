"""What belongs to one Trainer's run, shared by the monitors attached to it.

A :class:`RunSession` lives as long as its Trainer (it is keyed weakly by it) and holds the run's once-only facts:
which notices were given (TensorBoard's image sampling, the PNG fallback), whether the layer table was written,
the probe sets built from the trainer's data (monitors with the same size and seed share one), and which loggers
already reported a failure. Nothing here is process-wide: a second Trainer in the same process gets its own notices.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from probelens.probe import ProbeSet


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
