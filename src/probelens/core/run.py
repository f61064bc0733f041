"""What belongs to one Trainer's run, shared by the monitors attached to it.

A :class:`SharedRun` holds the run's once-only facts: which notices were given (TensorBoard's image sampling, the
PNG fallback), whether the layer table was written, the probe sets built from the trainer's data (monitors with the
same size and seed share one), which loggers already reported a failure; and what the run's monitors share: the
shared pass of each model (:class:`~probelens.core.session.SharedPass`) and probelens' own event file in each
TensorBoard run directory.

It lives on the monitors, not in a module global: each monitor holds the run it is attached to, and
:func:`shared_run` finds it among the Trainer's callbacks (a :class:`~probelens.loop.LoopRun` lists the Lens'
monitors the same way), so it lives exactly as long as the run's monitors do, and a second Trainer in the same
process gets its own.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from probelens.core.session import SharedPass
from probelens.probe import ProbeSet
from probelens.writing.event_file import EventFileWriter


class Run(Protocol):
    """What a monitor reads of the run it watches, and all it reads: a Lightning ``Trainer`` of either namespace has
    it, and so has :class:`probelens.loop.LoopRun` (a Fabric or plain PyTorch loop). The monitors in
    :mod:`probelens.core` are typed against this, never against a Trainer class. (The monitors of a run are found
    through its ``callbacks``, read with ``getattr``: Lightning declares that attribute on no class.)"""

    @property
    def global_step(self) -> int: ...
    @property
    def current_epoch(self) -> int: ...
    @property
    def is_global_zero(self) -> bool: ...
    @property
    def world_size(self) -> int: ...
    @property
    def loggers(self) -> Sequence[Any]: ...
    @property
    def log_dir(self) -> str | None: ...
    @property
    def default_root_dir(self) -> str: ...
    @property
    def sanity_checking(self) -> bool: ...
    @property
    def max_epochs(self) -> int | None: ...
    @property
    def estimated_stepping_batches(self) -> int | float: ...
    @property
    def fit_loop(self) -> Any: ...
    @property
    def state(self) -> Any: ...
    @property
    def strategy(self) -> Any: ...
    @property
    def model(self) -> Any: ...

    should_stop: bool


@dataclass(eq=False)
class SharedRun:
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
    trainer: Any = None
    """A weak reference to the Trainer (or :class:`~probelens.loop.LoopRun`) of this run."""
    passes: weakref.WeakKeyDictionary[nn.Module, SharedPass] = field(default_factory=weakref.WeakKeyDictionary)
    """The shared pass of each model this run's monitors explain (freed with the model)."""

    def is_for(self, trainer: Run) -> bool:
        """Whether this is the run of ``trainer``."""
        return self.trainer is not None and self.trainer() is trainer

    def shared_pass(self, model: nn.Module) -> SharedPass:
        """The shared pass of ``model`` in this run (created on first use)."""
        session = self.passes.get(model)
        if session is None:
            session = self.passes[model] = SharedPass()
        return session

    def event_file(self, log_dir: str) -> EventFileWriter:
        """The run's own event file writer in ``log_dir`` (opened on its first write)."""
        writer = self.event_files.get(log_dir)
        if writer is None:
            writer = self.event_files[log_dir] = EventFileWriter(log_dir)
        return writer

    def flush(self) -> None:
        """Hand the event files' pending records to the OS."""
        for writer in self.event_files.values():
            writer.flush()

    def close(self) -> None:
        """Flush and close the event files (a later firing opens them again)."""
        for writer in self.event_files.values():
            writer.close()

    def first_time(self, notice: str) -> bool:
        """True the first time ``notice`` is asked about in this run (then say it), False afterwards."""
        if notice in self.notices:
            return False
        self.notices.add(notice)
        return True


def shared_run(trainer: Run) -> SharedRun:
    """The run of ``trainer``: the one a monitor among its callbacks already holds (``_run``), else a new one."""
    for callback in getattr(trainer, "callbacks", None) or ():
        run = getattr(callback, "_run", None)
        if isinstance(run, SharedRun) and run.is_for(trainer):
            return run
    return SharedRun(trainer=weakref.ref(trainer))
