"""The monitors in a training loop of your own: Lightning Fabric, or plain PyTorch.

A :class:`Lens` drives any probelens monitor from a loop that has no Lightning ``Trainer``: call :meth:`Lens.step`
after each optimizer step and :meth:`Lens.epoch_end` after each epoch; the monitors fire on their own schedule
(``every_n_steps`` / ``every_n_epochs``) and write the same pictures, under the same tags, as they do as callbacks.
Everything a monitor does is the same code: the Lens feeds it a :class:`LoopRun`, the few facts of the run that a
monitor reads (its loggers and log dir, the step and epoch, whether this process writes, whether to stop), in place
of the Trainer that Lightning gives a callback.

Example (plain PyTorch; with Fabric, pass ``logger=fabric.logger`` and ``is_global_zero=fabric.is_global_zero``)::

    from lightning_fabric.loggers import TensorBoardLogger
    from probelens import GradCAMMonitor, ProbeSet, ShortcutMonitor
    from probelens.loop import Lens

    lens = Lens([GradCAMMonitor(probe, every_n_steps=50), ShortcutMonitor(probe)], TensorBoardLogger("runs"))
    step = 0
    for epoch in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            step += 1
            lens.step(model, step)
        lens.epoch_end(model, epoch)
        if lens.should_stop:  # ShortcutMonitor(on_shortcut="stop") asked for it
            break
    lens.close(model)

Loggers: any Lightning or Fabric logger (``lightning_fabric.loggers.TensorBoardLogger``,
``pytorch_lightning.loggers.TensorBoardLogger``, W&B, MLflow, CSV), as for the callbacks: pictures go to the loggers
that take images, scalars to every logger. Checkpoints: :meth:`Lens.state_dict` / :meth:`Lens.load_state_dict`.
A monitor built with ``probe=None`` needs the Trainer's data: give a Lens monitors a probe set.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from torch import nn

from probelens.core.base import MonitorCore


class _OneProcess:
    """The strategy of a run in one process: a broadcast is the value itself."""

    @staticmethod
    def broadcast(obj: Any, src: int = 0) -> Any:
        return obj


class LoopRun:
    """What a monitor reads of the run it watches, for a loop without a Trainer (see the module docstring).

    Attributes:
        loggers: the run's loggers. logger: the first one, or ``None``.
        log_dir: where pictures go without an image logger (``<log_dir>/probelens_images``).
        global_step, current_epoch: the step (as the user counts it) and the 0-based epoch.
        is_global_zero: whether this process writes (rank 0 under Fabric's strategies).
        should_stop: set by a monitor whose alert stops the run (``on_shortcut="stop"``).
        callbacks: the monitors of this run (two monitors with one name are refused, as on a Trainer).
    """

    def __init__(
        self,
        loggers: Sequence[Any],
        log_dir: str,
        monitors: Sequence[MonitorCore],
        *,
        is_global_zero: bool = True,
        max_epochs: int | None = None,
        max_steps: int | None = None,
    ) -> None:
        self.loggers = list(loggers)
        self.logger = self.loggers[0] if self.loggers else None
        self.log_dir = log_dir
        self.default_root_dir = log_dir
        self.callbacks = list(monitors)
        self.global_step = 0
        self.current_epoch = 0
        self.is_global_zero = is_global_zero
        self.world_size = 1
        self.should_stop = False
        self.sanity_checking = False
        self.state = SimpleNamespace(fn="fit")
        self.strategy = _OneProcess()
        self.max_epochs = max_epochs
        self.estimated_stepping_batches = float(max_steps) if max_steps is not None else math.inf
        self.model: nn.Module | None = None  # no sharded root: the monitors explain the module they are given
        self.fit_loop = None  # the pictures' step is global_step itself
        self.datamodule = None
        self.train_dataloader = None
        self.val_dataloaders = None


def _module(model: nn.Module) -> nn.Module:
    """The module to explain: Fabric's wrapper (``fabric.setup(model)``) is looked through to the user's module."""
    inner = getattr(model, "_original_module", None) or getattr(model, "module", None)
    return inner if type(model).__name__ == "_FabricModule" and isinstance(inner, nn.Module) else model


class Lens:
    """Drives probelens monitors from a training loop of your own (see the module docstring).

    Args:
        monitors: the monitors (``probelens.GradCAMMonitor`` etc., or their cores in :mod:`probelens.core`), each with
            a probe set.
        logger: a Lightning or Fabric logger, or a sequence of them; ``None`` writes PNG files under ``log_dir``.
        log_dir: where PNG files go when no logger takes images; default the logger's ``log_dir``.
        is_global_zero: whether this process writes (``fabric.is_global_zero``); other processes do nothing.
        max_epochs, max_steps: the run's length, if known: a monitor whose schedule never fires within it says so.

    Raises:
        TypeError: a monitor that is not a probelens monitor.
        ValueError: no monitor, a monitor without a probe set, or no ``log_dir`` to write to.
    """

    def __init__(
        self,
        monitors: Sequence[MonitorCore],
        logger: Any = None,
        log_dir: str | os.PathLike[str] | None = None,
        *,
        is_global_zero: bool = True,
        max_epochs: int | None = None,
        max_steps: int | None = None,
    ) -> None:
        monitors = list(monitors)
        if not monitors:
            raise ValueError("Lens needs at least one monitor, got none; e.g. Lens([GradCAMMonitor(probe)], logger)")
        for monitor in monitors:
            if not isinstance(monitor, MonitorCore):
                raise TypeError(f"Lens takes probelens monitors, got {type(monitor).__name__}: {monitor!r}")
            if monitor.needs_probe and monitor.probe is None:
                raise ValueError(
                    f"Lens: {monitor.name} has no probe set; without a Trainer there is no data to build one from, so "
                    f"pass one: {type(monitor).__name__}(ProbeSet.from_dataset(val_dataset, num_samples=16), ...)"
                )
        loggers = [] if logger is None else list(logger) if isinstance(logger, (list, tuple)) else [logger]
        if log_dir is None:
            found = next((getattr(lg, "log_dir", None) for lg in loggers if getattr(lg, "log_dir", None)), None)
            if found is None:
                raise ValueError("Lens: give log_dir= (where pictures go) or a logger with a log_dir")
            log_dir = found
        self.monitors = monitors
        self.run = LoopRun(
            loggers,
            os.fspath(log_dir),
            monitors,
            is_global_zero=is_global_zero,
            max_epochs=max_epochs,
            max_steps=max_steps,
        )
        self._started_for: int | None = None
        self._pending_state: dict[str, Any] | None = None

    @property
    def should_stop(self) -> bool:
        """True once a monitor's alert asked the run to stop (``on_shortcut="stop"``, ``on_concept="stop"``)."""
        return bool(self.run.should_stop)

    def _start(self, model: nn.Module) -> nn.Module:
        module = _module(model)
        if self._started_for != id(module):
            for monitor in self.monitors:
                monitor.setup(self.run, module, "fit")
            if self._pending_state is not None:  # Lightning's order: setup, then the checkpoint, then fit start
                for monitor in self.monitors:
                    if monitor.state_key in self._pending_state:
                        monitor.load_state_dict(self._pending_state[monitor.state_key])
                self._pending_state = None
            for monitor in self.monitors:
                monitor.on_fit_start(self.run, module)
                monitor.on_train_start(self.run, module)
            self._started_for = id(module)
        return module

    def step(self, model: nn.Module, global_step: int) -> None:
        """Call after each optimizer step: the monitors due at ``global_step`` (``every_n_steps``) fire."""
        if isinstance(global_step, bool) or not isinstance(global_step, int) or global_step < 0:
            raise ValueError(f"Lens.step: global_step must be an integer >= 0, got {global_step!r}")
        module = self._start(model)
        self.run.global_step = global_step
        for monitor in self.monitors:
            monitor.on_train_batch_start(self.run, module, None, 0)
            monitor.on_train_batch_end(self.run, module, None, None, 0)

    def epoch_end(self, model: nn.Module, epoch: int) -> None:
        """Call after each epoch (``epoch`` counts from 0): the monitors due (``every_n_epochs``) fire."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"Lens.epoch_end: epoch must be an integer >= 0 (counting from 0), got {epoch!r}")
        module = self._start(model)
        self.run.current_epoch = epoch
        for monitor in self.monitors:
            monitor.on_train_epoch_end(self.run, module)

    def close(self, model: nn.Module) -> None:
        """Call once training ends: what is written once at the end is written, and every file is closed."""
        if self._started_for is None:
            return
        module = _module(model)
        for monitor in self.monitors:
            monitor.on_train_end(self.run, module)
        for monitor in self.monitors:
            monitor.teardown(self.run, module, "fit")
        for logger in self.run.loggers:
            finalize = getattr(logger, "finalize", None)
            if callable(finalize):
                finalize("success")
        self._started_for = None

    def state_dict(self) -> dict[str, Any]:
        """Each monitor's checkpoint state, by its ``state_key`` (as Lightning stores callbacks)."""
        return {monitor.state_key: monitor.state_dict() for monitor in self.monitors}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; call it before the first :meth:`step` of the resumed loop (it is
        applied when the monitors attach to the run, as Lightning restores callbacks after their ``setup``)."""
        self._pending_state = dict(state)
