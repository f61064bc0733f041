"""Explanations of a model whose parameters are sharded across processes (FSDP, FSDP2 / DTensor).

No rank holds the whole model, so a forward pass is a collective: every rank must run it, through the sharded root
module, in the same order. This module provides the pieces the monitors need for that, in torch only:

- :func:`is_sharded` recognises such a model by duck typing (an FSDP wrapper, an FSDP2 module or a DTensor
  parameter), without importing the wrapper classes;
- :func:`sharded_forward_backward` splits the probe batch across the ranks, runs each slice through the sharded
  model, agrees on success, and all-gathers the slices into one :class:`~probelens.methods.engine.ProbePass` that
  every rank holds, so the ranks' later control flow stays identical;
- :func:`full_weights` makes the unsharded weights readable (on rank 0 for FSDP) for weight images;
- :func:`failed_ranks` is the agreement step: an ``all_reduce`` of a per-rank failure flag.

Slicing is exact for per-sample computations, which the probe pass is: it runs in eval mode, so BatchNorm uses its
running statistics, and the gradient of ``sum_i score_i`` with respect to image ``i``'s activations depends on image
``i`` alone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping

import torch
import torch.distributed as dist
from torch import Tensor, nn

from probelens.methods.engine import ProbePass, TargetSpec, forward_backward
from probelens.methods.hooks import cloning_every_output


def _is_dtensor(t: Tensor) -> bool:
    return hasattr(t, "device_mesh") and hasattr(t, "placements") and hasattr(t, "full_tensor")


def _is_fsdp1(module: nn.Module) -> bool:
    return "_fsdp_wrapped_module" in module._modules


def _is_fsdp2(module: nn.Module) -> bool:
    return any(cls.__name__ == "FSDPModule" for cls in type(module).__mro__)


def is_sharded(model: nn.Module) -> bool:
    """True if ``model`` (or a submodule) is wrapped by FSDP, is an FSDP2 (``fully_shard``) module, or holds DTensor
    parameters: a forward pass then needs every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    if any(_is_fsdp1(m) or _is_fsdp2(m) for m in model.modules()):
        return True
    return any(_is_dtensor(p) for p in model.parameters())


def _can_slice(model: nn.Module) -> bool:
    """Whether ranks may feed different images: yes for FSDP (data parallel); with DTensor parameters only when every
    mesh is one-dimensional and every placement a shard (FSDP2). Tensor parallelism needs the same input on the
    ranks of a group, so there every rank runs the whole probe."""
    for p in model.parameters():
        if _is_dtensor(p):
            mesh = p.device_mesh  # type: ignore[attr-defined]
            if mesh.ndim != 1 or not all(type(pl).__name__ == "Shard" for pl in p.placements):  # type: ignore[attr-defined]
                return False
    return True


def _flag_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def failed_ranks(ok: bool) -> list[int]:
    """Collective: every rank passes whether its part succeeded; every rank gets the sorted list of ranks that failed.

    Call it on every rank at the same point; it is the only way to turn a failure on one rank into a decision all
    ranks share.
    """
    flags = torch.zeros(dist.get_world_size(), device=_flag_device())
    flags[dist.get_rank()] = 0.0 if ok else 1.0
    dist.all_reduce(flags)
    return [int(r) for r in flags.nonzero().flatten().tolist()]


def failure_messages(message: str | None) -> list[str]:
    """Collective: the non-``None`` messages of all ranks, prefixed with the rank, in rank order."""
    gathered: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, message)
    return [f"rank {rank}: {m}" for rank, m in enumerate(gathered) if m is not None] or ["no message"]


def _slice_bounds(n: int, world: int, rank: int) -> Tensor:
    """Indices of this rank's slice: ``ceil(n / world)`` of them, padded by repeating the last image, so that every
    rank runs a batch of the same size (the same kernels, the same collectives)."""
    per_rank = math.ceil(n / world)
    return torch.arange(rank * per_rank, (rank + 1) * per_rank).clamp(max=n - 1)


def _all_gather(t: Tensor, n: int) -> Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)[:n]


def _gather_pass(part: ProbePass, n: int) -> ProbePass:
    """All slices of a pass, concatenated in rank order and trimmed to ``n``, on every rank. Keys are visited in sorted
    order; every rank has the same keys and shapes because it ran the same layers on a batch of the same size."""
    return ProbePass(
        images=_all_gather(part.images, n),
        logits=_all_gather(part.logits, n),
        targets={k: _all_gather(part.targets[k], n) for k in sorted(part.targets)},
        activations={k: _all_gather(part.activations[k], n) for k in sorted(part.activations)},
        gradients={
            s: {k: _all_gather(grads[k], n) for k in sorted(grads)} for s, grads in sorted(part.gradients.items())
        },
        input_gradients={k: _all_gather(part.input_gradients[k], n) for k in sorted(part.input_gradients)},
        calls=dict(part.calls),
    )


@contextlib.contextmanager
def rank0_buffers(model: nn.Module) -> Iterator[None]:
    """Collective context: every rank runs with rank 0's buffers (BatchNorm running statistics).

    FSDP shards parameters but leaves buffers alone, so each rank's running statistics follow its own batches and
    drift apart; rank 0's are the ones a full checkpoint saves. Inside the context each buffer is replaced by a copy
    of rank 0's (one broadcast per dtype); on exit the original tensors are put back, untouched (their version
    counters too, so the shared pass cache still recognises the model).
    """
    slots: list[tuple[nn.Module, str, Tensor]] = [
        (module, name, buffer)
        for module in model.modules()
        for name, buffer in module._buffers.items()
        if buffer is not None
    ]
    unique: dict[int, Tensor] = {}
    for _, _, buffer in slots:
        unique.setdefault(id(buffer), buffer)
    copies: dict[int, Tensor] = {}
    by_dtype: dict[str, list[int]] = {}
    for key, buffer in unique.items():
        by_dtype.setdefault(str(buffer.dtype), []).append(key)
    for dtype in sorted(by_dtype):  # the same order on every rank
        keys = by_dtype[dtype]
        flat = torch.cat([unique[k].detach().reshape(-1) for k in keys])
        dist.broadcast(flat, src=0)
        for key, part in zip(keys, flat.split([unique[k].numel() for k in keys])):
            copies[key] = part.view_as(unique[key])
    try:
        for module, name, buffer in slots:
            module._buffers[name] = copies[id(buffer)]
        yield
    finally:
        for module, name, buffer in slots:
            module._buffers[name] = buffer


class ShardedPassError(RuntimeError):
    """The probe pass failed on some rank; raised on every rank, so all of them skip the step together."""


def sharded_forward_backward(
    model: nn.Module,
    images: Tensor,
    targets: TargetSpec = None,
    layers: Mapping[str, nn.Module] | None = None,
    **kwargs: object,
) -> ProbePass:
    """:func:`~probelens.methods.engine.forward_backward` over a sharded model: collective, call it on every rank.

    Each rank explains ``ceil(N / world)`` probe images (its slice; padded) through ``model``, which must be the
    sharded root (e.g. the FSDP wrapper), so the parameter all-gathers happen on every rank. The ranks then agree on
    success (:func:`failed_ranks`) before any gather: if one failed, all raise :class:`ShardedPassError` (the failing
    rank its own error). On success the slices are all-gathered, so every rank returns the full pass ``[N, ...]``.
    Where slices cannot differ between ranks (tensor parallelism) every rank runs the whole probe instead.

    ``targets`` given as tensors are sliced with the images; ``None`` (the predicted class) is resolved per slice.
    """
    if isinstance(targets, Mapping) and len(targets) > 1:
        # one forward per target set: the engine would reuse one graph for several backward passes, but FSDP frees
        # the gathered weights that graph saved after the first one
        passes = [sharded_forward_backward(model, images, {k: t}, layers, **kwargs) for k, t in targets.items()]
        merged = passes[0]
        for extra in passes[1:]:
            merged.targets.update(extra.targets)
            merged.gradients.update(extra.gradients)
            merged.input_gradients.update(extra.input_gradients)
        return merged
    if not _can_slice(model) or dist.get_world_size() == 1:
        return forward_backward(model, images, targets, layers, **kwargs)  # type: ignore[arg-type]
    n = images.shape[0]
    index = _slice_bounds(n, dist.get_world_size(), dist.get_rank())
    target_sets: dict[str, Tensor | None] = dict(targets) if isinstance(targets, Mapping) else {"target": targets}
    local_targets = {
        k: None if t is None else t.to(images.device)[index.to(images.device)] for k, t in target_sets.items()
    }
    error: Exception | None = None
    part: ProbePass | None = None
    try:
        # collective; the slices must all see rank 0's BatchNorm statistics. Every output is cloned: the engine's
        # learned no-clone path may run a second forward, which one rank must never do alone
        with rank0_buffers(model), cloning_every_output():
            part = forward_backward(
                model,
                images[index.to(images.device)],
                local_targets if isinstance(targets, Mapping) else local_targets["target"],
                layers,
                **kwargs,  # type: ignore[arg-type]
            )
    except Exception as err:  # decided together below; raising here would leave the other ranks in a collective
        error = err
    failed = failed_ranks(error is None)
    if failed:
        if error is not None:
            raise error
        raise ShardedPassError(f"the probe pass failed on rank(s) {failed}")
    assert part is not None
    return _gather_pass(part, n)


@contextlib.contextmanager
def full_weights(model: nn.Module, rank0_only: bool = True) -> Iterator[None]:
    """Collective context: inside it the modules of ``model`` hold their full, unsharded weights.

    - FSDP: ``summon_full_params(model, rank0_only=rank0_only, writeback=False)``; with ``rank0_only`` only rank 0
      sees full weights (the others keep their shards), and nothing is written back.
    - FSDP2 (``fully_shard``): ``unshard()`` on every FSDP module, ``reshard()`` on exit. FSDP2 has no rank-0-only
      variant, so every rank holds the full weights for the duration.
    - Otherwise (no FSDP): nothing to do.
    Enter it on every rank, together.
    """
    fsdp1 = next((m for m in model.modules() if _is_fsdp1(m)), None)
    if fsdp1 is not None:
        with type(fsdp1).summon_full_params(model, rank0_only=rank0_only, writeback=False):  # type: ignore[attr-defined]
            yield
        return
    units = [m for m in model.modules() if _is_fsdp2(m)]
    try:
        for unit in units:
            unit.unshard()  # type: ignore[operator]
        yield
    finally:
        for unit in reversed(units):
            unit.reshard()  # type: ignore[operator]
