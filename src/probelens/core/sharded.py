"""Monitors under sharded parameters (FSDP, FSDP2): every rank computes, rank 0 alone writes.

Under DDP the monitors explain the unwrapped module on rank 0 while the other ranks return (see
``docs/distributed.md``). With sharded parameters that cannot work: no rank holds the whole model, and each forward
pass all-gathers parameters, so it has to run on every rank, through the sharded root module. Here, therefore:

1. every rank enters the monitor's ``explain`` together, with the sharded root (``trainer.model``) as the module; the
   shared probe pass is split across the ranks and gathered (:mod:`probelens.methods.sharded`), other methods run
   the whole probe on every rank, so every rank holds the same results and takes the same code path;
2. images go into a buffer instead of the logger; weight images are read inside ``full_weights`` (FSDP's
   ``summon_full_params(rank0_only=True, writeback=False)``), entered on every rank, and drawn on rank 0 only;
3. the ranks agree on success with one ``all_reduce`` of a failure flag; then rank 0 writes the buffered images, or,
   if any rank failed, nothing is written, every rank counts the failure, and rank 0 warns.

No collective is called by one rank alone: a failure skips the step on all ranks at the same point.
"""

from __future__ import annotations

from torch import Tensor, nn

from probelens.core.run import Run
from probelens.methods.layers import named_modules
from probelens.methods.sharded import full_weights, is_sharded
from probelens.methods.summary import LayerInfo, layer_summary


def sharded_root(trainer: Run) -> nn.Module | None:
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
