"""Monitors under sharded parameters (FSDP, FSDP2): every rank computes, rank 0 alone writes.

Under DDP the monitors explain the unwrapped module on rank 0 while the other ranks return (see
``docs/distributed.md``). With sharded parameters that cannot work: no rank holds the whole model, and each forward
pass all-gathers parameters, so it has to run on every rank, through the sharded root module. Here, therefore:

1. every rank enters the monitor's ``_log`` together, with the sharded root (``trainer.model``) as the module; the
   shared probe pass is split across the ranks and gathered (:mod:`probelens.methods._sharded`), other methods run
   the whole probe on every rank, so every rank holds the same results and takes the same code path;
2. images go into a buffer instead of the logger; weight images are read inside ``full_weights`` (FSDP's
   ``summon_full_params(rank0_only=True, writeback=False)``), entered on every rank, and drawn on rank 0 only;
3. the ranks agree on success with one ``all_reduce`` of a failure flag; then rank 0 writes the buffered images, or,
   if any rank failed, nothing is written, every rank counts the failure, and rank 0 warns.

No collective is called by one rank alone: a failure skips the step on all ranks at the same point.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from probelens.callbacks._sinks import write_image
from probelens.methods._sharded import failed_ranks, failure_messages, full_weights, is_sharded
from probelens.methods.layers import named_modules
from probelens.methods.summary import LayerInfo, layer_summary
from probelens.render import Cell

if TYPE_CHECKING:
    from probelens.callbacks.base import ProbeMonitor


def sharded_root(trainer: Any) -> nn.Module | None:
    """The module a forward pass must go through when the trainer's strategy shards parameters (``trainer.model``:
    the FSDP wrapper, or the module with ``fully_shard`` submodules), else ``None``."""
    model = getattr(trainer, "model", None)
    if isinstance(model, nn.Module) and is_sharded(model):
        return model
    return None


def sharded_layer_summary(model: nn.Module, example: Tensor) -> list[LayerInfo]:
    """:func:`~probelens.methods.summary.layer_summary` of a sharded model: collective, call it on every rank.

    Receptive fields are not measured (that takes one backward pass per layer through a retained graph, whose saved
    weights FSDP frees after the first), and parameters are counted inside ``full_weights``, so rank 0's rows show
    the full counts rather than its shard's.
    """
    rows = layer_summary(model, example, receptive_field=False)
    modules = named_modules(model)
    with full_weights(model, rank0_only=True):
        for row in rows:
            row.parameters = sum(p.numel() for p in modules[row.name].parameters())
    return rows


class _BufferedSink:
    """Holds what a monitor draws during a step until the ranks have agreed that the step succeeded."""

    def __init__(self) -> None:
        self.images: list[tuple[str, Tensor, int, Sequence[Cell]]] = []
        self.texts: list[tuple[str, str, int]] = []

    def add_image(self, tag: str, image: Tensor, step: int, cells: Sequence[Cell] = ()) -> None:
        self.images.append((tag, image, step, cells))

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.texts.append((tag, text, step))

    def flush(self, sink: Any) -> None:
        for tag, text, step in self.texts:
            sink.add_text(tag, text, step)
        for tag, image, step, cells in self.images:
            write_image(sink, tag, image, step, cells)


def fire_sharded(monitor: ProbeMonitor, trainer: Any, model: nn.Module, step: int) -> None:
    """One firing of ``monitor`` on the sharded ``model``: collective, called on every rank at the same hook."""
    monitor._ensure_configured(trainer, model, required=True)
    rank_zero = bool(trainer.is_global_zero)
    weights_only = not monitor.needs_probe  # FilterMonitor: weights are read, no forward pass
    sink, buffer = monitor._sink, _BufferedSink()
    monitor._sink = buffer
    start = time.perf_counter()
    error: Exception | None = None
    try:
        with full_weights(model, rank0_only=True) if weights_only else contextlib.nullcontext():
            if rank_zero or not weights_only:  # with rank0_only, ranks != 0 still hold shards: nothing to draw
                monitor._log(step, model, trainer)
    except Exception as err:  # reported below, once the ranks agree
        error = err
    finally:
        monitor._sink = sink
    failed = failed_ranks(error is None)
    if failed:  # every rank sees the same list, so this gather is entered by all of them
        messages = failure_messages(None if error is None else f"{type(error).__name__}: {error}")
        monitor._record_failure(trainer, step, f"on rank(s) {failed} and was skipped on every rank ({messages[0]})")
        return
    if rank_zero:
        try:
            buffer.flush(sink)
        except Exception as err:  # rank 0 only, after the last collective: safe to fail alone
            monitor._record_failure(trainer, step, f"while writing its images ({type(err).__name__}: {err})")
            return
    monitor._record_success(trainer, step, start)
