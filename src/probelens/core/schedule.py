"""When a monitor fires, and on which step it writes.

A :class:`Schedule` holds a monitor's ``every_n_epochs`` / ``every_n_steps`` / ``log_at_start`` options (checked at
construction), answers whether a Lightning hook is a firing point, and keeps the bookkeeping that makes one firing
per optimizer step or epoch. :func:`log_step` is the step Lightning's own loggers write at the moment of a hook.
"""

from __future__ import annotations

import math

from lightning_utilities.core.rank_zero import rank_zero_warn

from probelens.core.options import check_bool, check_int
from probelens.core.run import Run

STAGES = ("fit", "validate", "test")


def log_step(trainer: Run, epoch_end: bool = False) -> int:
    """The step Lightning's own loggers write at this moment, so images land on the loss curves' step axis.

    Lightning logs with ``fit_loop.epoch_loop._batches_that_stepped``, which runs one behind ``trainer.global_step``
    while a batch ends and while validation runs (the optimizer has stepped, the counter not yet), and logs epoch-end
    training metrics at that counter minus one (``on_train_epoch_end`` sees it already advanced). A training step
    logged at step ``s`` by ``self.log`` and an explanation fired after the same batch therefore share ``s``;
    ``every_n_steps=100`` writes at 99, 199, ... exactly like ``log_every_n_steps=100``. Falls back to
    ``trainer.global_step`` where the counter is missing.
    """
    counter = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "_batches_that_stepped", None)
    if not isinstance(counter, int):
        return int(trainer.global_step)
    return max(0, counter - 1) if epoch_end else counter


def stage_of(trainer: Run) -> str:
    """``"validate"`` or ``"test"`` inside ``trainer.validate``/``trainer.test``, else ``"fit"``."""
    fn = str(getattr(trainer.state.fn, "value", trainer.state.fn))  # TrainerFn is a str enum in both namespaces
    return fn if fn in ("validate", "test") else "fit"


class Schedule:
    """The firing points of one monitor.

    Args:
        owner: the monitor's class name, for error messages.
        every_n_epochs: fire at the end of every n-th epoch (``None`` to disable).
        every_n_steps: fire every n optimizer steps instead (takes precedence over ``every_n_epochs``).
        log_at_start: also fire once when training starts (step 0).
    """

    def __init__(self, owner: str, every_n_epochs: int | None, every_n_steps: int | None, log_at_start: bool) -> None:
        check_int(
            owner, "every_n_epochs", every_n_epochs, none_ok=True, fix="every_n_epochs=None fires on every_n_steps only"
        )
        check_int(owner, "every_n_steps", every_n_steps, none_ok=True)
        check_bool(owner, "log_at_start", log_at_start)
        if every_n_epochs is None and every_n_steps is None and not log_at_start:
            raise ValueError(
                f"{owner}: every_n_epochs and every_n_steps are both None, so the monitor would never fire; set one "
                "of them (or log_at_start=True for a single picture of the untrained model)"
            )
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.log_at_start = log_at_start
        self.reset()

    def reset(self) -> None:
        """Forget the firings of an earlier run."""
        self._batch_fired_step = -1
        self._val_fired_epoch = -1

    def after_batch(self, trainer: Run) -> bool:
        """Due after this training batch: a multiple of ``every_n_steps``, once per optimizer step (with
        ``accumulate_grad_batches > 1`` the batches after an optimizer step see the same ``global_step``)."""
        n, step = self.every_n_steps, trainer.global_step
        if n is None or step <= 0 or step % n != 0 or step == self._batch_fired_step:
            return False
        self._batch_fired_step = step
        return True

    def _epoch_due(self, trainer: Run) -> bool:
        n = self.every_n_epochs
        return self.every_n_steps is None and n is not None and (trainer.current_epoch + 1) % n == 0

    def after_fit_validation(self, trainer: Run) -> bool:
        """Due at the end of a validation inside ``fit``: a due epoch, at the validation after its last batch (one
        inside the epoch, ``val_check_interval < 1``, is not the epoch's end)."""
        progress = getattr(getattr(trainer.fit_loop, "epoch_loop", None), "batch_progress", None)
        if not (self._epoch_due(trainer) and bool(getattr(progress, "is_last_batch", True))):
            return False
        self._val_fired_epoch = trainer.current_epoch
        return True

    def after_train_epoch(self, trainer: Run) -> bool:
        """Due at the end of a training epoch that was due and had no validation firing (no validation loop)."""
        return self._epoch_due(trainer) and self._val_fired_epoch != trainer.current_epoch

    def warn_if_never(self, trainer: Run, name: str) -> None:
        """Warn when the schedule cannot fire within the run (``every_n_steps`` beyond its optimizer steps,
        ``every_n_epochs`` beyond ``max_epochs``): otherwise the user learns it from an empty dashboard."""
        every: int | None
        runs: float | None
        if self.every_n_steps is not None:
            try:
                total = float(trainer.estimated_stepping_batches)
            except Exception:  # an unsized loader: nothing to compare with
                total = math.inf
            beyond = math.isfinite(total) and self.every_n_steps > total
            option, every, runs, unit = "every_n_steps", self.every_n_steps, total, "optimizer steps"
        else:
            max_epochs = trainer.max_epochs
            every = self.every_n_epochs
            beyond = every is not None and max_epochs is not None and 0 <= max_epochs < every
            option, runs, unit = "every_n_epochs", max_epochs, "epochs"
        if beyond:
            rank_zero_warn(
                f"{name}: {option}={every} but this run has only {int(runs or 0)} {unit}, so the monitor never "
                f"fires{' after the start' if self.log_at_start else ''}; use a smaller {option}."
            )
