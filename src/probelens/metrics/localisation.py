"""How much of an attribution map falls on the object: localisation metrics against foreground masks.

All functions take maps ``[N,1,H,W]`` (or ``[N,C,H,W]``, reduced by the caller first) and boolean masks
``[N,1,H,W]`` (object = True) and return one value per image ``[N]`` (float32), so the caller can average or keep
them per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _prepare(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    if maps.dim() != 4 or maps.shape[1] != 1:
        raise ValueError(f"maps must be [N,1,H,W] (reduce channels first), got {tuple(maps.shape)}")
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    if masks.shape[0] != maps.shape[0] or masks.shape[1] != 1:
        raise ValueError(f"masks must be [N,1,H,W] with N={maps.shape[0]}, got {tuple(masks.shape)}")
    if masks.shape[-2:] != maps.shape[-2:]:
        maps = F.interpolate(maps.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    maps = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0)
    return maps.flatten(1), masks.to(maps.device).bool().flatten(1)


def relevance_mass(maps: Tensor, masks: Tensor) -> Tensor:
    """Relevance mass accuracy (Arras et al., 2022): the share of positive attribution inside the mask.

    ``mass_n = sum_{p in M_n} max(R_n[p], 0) / sum_p max(R_n[p], 0)``; an all-zero map scores 0. Under an attribution
    spread uniformly over the image it equals the mask area, see :func:`mask_area` (the chance level). For Grad-CAM
    the energy-based pointing game of Score-CAM (Wang et al., 2020) is the same quantity.

    Args:
        maps: ``[N,1,H,W]`` attributions (signed maps count their positive part; pass ``abs()`` for magnitudes).
        masks: ``[N,1,H,W]`` bool foreground masks; maps of another size are resized bilinearly to the masks.

    Returns:
        ``[N]`` values in ``[0, 1]``.
    """
    r, m = _prepare(maps, masks)
    r = r.clamp_min(0)
    total = r.sum(1)
    inside = (r * m).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.zeros_like(total))


def mask_area(masks: Tensor) -> Tensor:
    """Fraction of each image covered by its mask ``[N]``: the chance level of :func:`relevance_mass` and of
    :func:`relevance_rank_accuracy`."""
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    return masks.flatten(1).float().mean(1)


def relevance_rank_accuracy(maps: Tensor, masks: Tensor) -> Tensor:
    """Relevance rank accuracy (Arras et al., 2022): of the ``K = |M_n|`` highest-ranked pixels, the share inside
    the mask. Ties are broken by pixel order, deterministically.

    Returns:
        ``[N]`` values in ``[0, 1]``; chance level is the mask area.
    """
    r, m = _prepare(maps, masks)
    out = torch.empty(r.shape[0], dtype=torch.float32, device=r.device)
    order = r.argsort(dim=1, descending=True, stable=True)
    ranked_in_mask = m.gather(1, order).float()
    k = m.sum(1)
    csum = ranked_in_mask.cumsum(1)
    idx = (k - 1).clamp_min(0).long()
    out = csum.gather(1, idx[:, None]).squeeze(1) / k.clamp_min(1).float()
    return torch.where(k > 0, out, torch.zeros_like(out))


def pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """Pointing game (Zhang et al., 2016): 1 if the map's maximum lies inside the mask, else 0 ``[N]``.

    It saturates easily (a prototype scored 0.88 for both an object model and a background model), so it is reported
    for comparison and never used for a verdict.
    """
    r, m = _prepare(maps, masks)
    return m.gather(1, r.argmax(1, keepdim=True)).squeeze(1).float()
