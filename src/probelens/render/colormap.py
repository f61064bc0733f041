"""Colormap lookup tables and their application to scalar maps.

Colormaps are 256-entry ``uint8`` lookup tables (LUTs) of shape ``[256, 3]``, sampled once per name from
``matplotlib.colormaps[name]`` (matplotlib is a dependency; it is imported lazily inside the builder, never at module
import, so importing :mod:`probelens.render` stays light) and cached. Applying a map is one gather per channel.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["apply_colormap", "colormap_lut"]

_LUT_SIZE = 256
_EXAMPLE_NAMES = ("jet", "viridis", "magma", "inferno", "plasma", "gray", "seismic", "RdBu_r", "coolwarm", "turbo")


@functools.cache
def _cached_lut(name: str) -> Tensor:
    """Builds (once per name) the uint8 LUT from ``matplotlib.colormaps``; see :func:`colormap_lut`."""
    import matplotlib  # lazy on purpose: keep matplotlib off the import path
    import numpy as np

    registry = matplotlib.colormaps
    lookup = "gray" if name == "grey" else name
    if lookup not in registry:
        examples = [n for n in _EXAMPLE_NAMES if n in registry]
        raise ValueError(
            f"Unknown colormap {name!r}; valid names include {', '.join(examples)} "
            f"({len(list(registry))} registered in matplotlib.colormaps)."
        )
    rgb = np.asarray(registry[lookup](np.linspace(0.0, 1.0, _LUT_SIZE)), dtype=np.float64)[:, :3]
    # rounded, not truncated as matplotlib's bytes=True does
    return torch.from_numpy(np.ascontiguousarray(np.rint(rgb * 255.0).astype(np.uint8)))


def colormap_lut(name: str = "jet") -> Tensor:
    """Returns the 256-entry lookup table of a colormap.

    The table is sampled from ``matplotlib.colormaps[name]`` on first use and cached; this function returns a copy,
    so callers may modify it freely.

    Args:
        name: Colormap name, e.g. ``"jet"``, ``"viridis"``, ``"gray"``, ``"seismic"``, ``"RdBu_r"``.

    Returns:
        uint8 ``[256, 3]`` RGB table on CPU; row ``i`` is the colour of value ``i / 255``.

    Raises:
        ValueError: If ``name`` is unknown; the message lists a few valid names.
    """
    return _cached_lut(name).clone()


@functools.cache
def _lut_on(name: str, device: str) -> Tensor:
    """The LUT of ``name`` on ``device`` (cached: one small copy per device)."""
    return _cached_lut(name).to(device)


def apply_colormap(values: Tensor, name: str | Tensor = "jet", *, keep_device: bool = False) -> Tensor:
    """Maps scalar values in [0, 1] to RGB colours through a colormap LUT.

    Values are clamped to [0, 1] and quantised to the nearest of the 256 LUT entries (``round(v * 255)``).
    NaN/Inf are treated as 0.

    Args:
        values: Floats already in [0, 1], shaped ``[H, W]``, ``[N, H, W]`` or ``[N, 1, H, W]`` (any device).
        name: Colormap name (see :func:`colormap_lut`) or a uint8 ``[256, 3]`` LUT tensor.
        keep_device: compute on the device of ``values`` and return there (e.g. on the GPU, before one copy of the
            uint8 result to the host), instead of on the CPU; the same colours either way.

    Returns:
        uint8 on CPU (``keep_device``: on the device of ``values``): ``[3, H, W]`` for ``[H, W]`` input, otherwise
        ``[N, 3, H, W]``.

    Raises:
        ValueError: If ``values`` has an unsupported shape or the colormap name is unknown.
    """
    if values.ndim == 4:
        if values.shape[1] != 1:
            raise ValueError(f"apply_colormap expects [N,1,H,W] for 4-D input, got {tuple(values.shape)}")
        values = values[:, 0]
    elif values.ndim not in (2, 3):
        raise ValueError(f"apply_colormap expects [H,W], [N,H,W] or [N,1,H,W], got {tuple(values.shape)}")
    device = values.device if keep_device else torch.device("cpu")
    if isinstance(name, str):
        lut = _cached_lut(name) if device.type == "cpu" else _lut_on(name, str(device))
    else:
        lut = name.detach().to(device=device, dtype=torch.uint8)
    if lut.shape != (_LUT_SIZE, 3):
        raise ValueError(f"colormap LUT must be [256,3], got {tuple(lut.shape)}")
    v = torch.nan_to_num(values.detach().to(device=device, dtype=torch.float32), nan=0.0, posinf=0.0, neginf=0.0)
    idx = (v.clamp(0.0, 1.0) * (_LUT_SIZE - 1)).round().long()
    planes = lut.t().contiguous()  # [3, 256]: one gather per channel writes channel-first output directly
    return torch.stack([torch.take(planes[c], idx) for c in range(3)], dim=-3)
