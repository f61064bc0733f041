"""How much attribution maps change between log steps."""

from __future__ import annotations

import torch
from torch import Tensor


def map_drift(previous: Tensor, current: Tensor) -> Tensor:
    """Per-image drift between two sets of maps: ``(1 - r) / 2`` with ``r`` the Pearson correlation of the flattened
    maps, so 0 = same pattern (up to scale and offset), 0.5 = unrelated, 1 = inverted.

    Two constant maps have drift 0; a constant map against a non-constant one has drift 0.5.

    Args:
        previous: ``[N,...]`` maps at an earlier step.
        current: ``[N,...]`` maps now (same shape).

    Returns:
        ``[N]`` float32 in ``[0, 1]``.
    """
    if previous.shape != current.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(previous.shape)} and {tuple(current.shape)}")
    a = previous.flatten(1).float()
    b = current.flatten(1).float()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    na, nb = a.norm(dim=1), b.norm(dim=1)
    r = (a * b).sum(1) / (na * nb).clamp_min(1e-30)
    both_flat = (na == 0) & (nb == 0)
    one_flat = (na == 0) ^ (nb == 0)
    r = torch.where(both_flat, torch.ones_like(r), torch.where(one_flat, torch.zeros_like(r), r))
    return ((1 - r) / 2).clamp(0, 1)
