"""Colormap lookup tables and their application to scalar maps.

Colormaps are 256-entry ``uint8`` lookup tables (LUTs) of shape ``[256, 3]``. They are built once per name and
cached. When matplotlib is installed the LUT is sampled from ``matplotlib.colormaps[name]`` (matplotlib is imported
lazily inside the builder, never at module import). Without matplotlib a few hand-written fallbacks are available:
``"jet"``, ``"gray"``/``"grey"``, ``"viridis"`` (piecewise-linear approximation) and ``"seismic"`` (each also with
the ``"_r"`` reversed suffix).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["FALLBACK_COLORMAPS", "apply_colormap", "colormap_lut"]

_LUT_SIZE = 256

# Anchor points (position in [0, 1], RGB in [0, 1]) of the hand-written fallback colormaps. They are linearly
# interpolated; "jet" is computed analytically instead.
_FALLBACK_ANCHORS: dict[str, list[tuple[float, tuple[float, float, float]]]] = {
    "gray": [(0.0, (0.0, 0.0, 0.0)), (1.0, (1.0, 1.0, 1.0))],
    "viridis": [
        (0.0, (0.267, 0.005, 0.329)),
        (0.25, (0.231, 0.322, 0.545)),
        (0.5, (0.129, 0.569, 0.549)),
        (0.75, (0.369, 0.788, 0.384)),
        (1.0, (0.993, 0.906, 0.144)),
    ],
    "seismic": [
        (0.0, (0.0, 0.0, 0.3)),
        (0.25, (0.0, 0.0, 1.0)),
        (0.5, (1.0, 1.0, 1.0)),
        (0.75, (1.0, 0.0, 0.0)),
        (1.0, (0.5, 0.0, 0.0)),
    ],
}

#: Names that :func:`colormap_lut` can build without matplotlib (plus their ``"_r"`` reversed variants).
FALLBACK_COLORMAPS: tuple[str, ...] = ("jet", "gray", "grey", "viridis", "seismic")

_EXAMPLE_NAMES = ("jet", "viridis", "magma", "inferno", "plasma", "gray", "seismic", "RdBu_r", "coolwarm", "turbo")


def _fallback_float_lut(name: str) -> Tensor | None:
    """Builds a hand-written float LUT.

    Args:
        name: Colormap name (``"jet"``, ``"gray"``, ``"grey"``, ``"viridis"``, ``"seismic"``, optionally ``"_r"``).

    Returns:
        float32 ``[256, 3]`` in [0, 1], or ``None`` when no fallback exists for ``name``.
    """
    reverse = name.endswith("_r")
    base = name[:-2] if reverse else name
    if base == "grey":
        base = "gray"
    x = torch.linspace(0.0, 1.0, _LUT_SIZE, dtype=torch.float64)
    if base == "jet":
        # Classic piecewise-linear jet: dark blue -> blue -> cyan -> yellow -> red -> dark red.
        lut = torch.stack(
            [
                (1.5 - (4.0 * x - 3.0).abs()).clamp(0.0, 1.0),
                (1.5 - (4.0 * x - 2.0).abs()).clamp(0.0, 1.0),
                (1.5 - (4.0 * x - 1.0).abs()).clamp(0.0, 1.0),
            ],
            dim=1,
        )
    elif base in _FALLBACK_ANCHORS:
        anchors = _FALLBACK_ANCHORS[base]
        pos = torch.tensor([p for p, _ in anchors], dtype=torch.float64)
        rgb = torch.tensor([c for _, c in anchors], dtype=torch.float64)
        seg = (torch.searchsorted(pos, x, right=True) - 1).clamp(0, len(anchors) - 2)
        t = ((x - pos[seg]) / (pos[seg + 1] - pos[seg])).unsqueeze(1)
        lut = rgb[seg] * (1.0 - t) + rgb[seg + 1] * t
    else:
        return None
    return lut.flip(0) if reverse else lut


def _matplotlib_float_lut(name: str) -> Tensor:
    """Samples a matplotlib colormap at 256 evenly spaced points.

    Args:
        name: A name registered in ``matplotlib.colormaps``.

    Returns:
        float32 ``[256, 3]`` RGB values in [0, 1].

    Raises:
        ImportError: If matplotlib is not installed.
        ValueError: If ``name`` is not a registered colormap.
    """
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
    rgba = registry[lookup](np.linspace(0.0, 1.0, _LUT_SIZE))
    return torch.from_numpy(np.asarray(rgba, dtype=np.float64)[:, :3].copy())


@functools.cache
def _cached_lut(name: str) -> Tensor:
    """Builds (once per name) the uint8 LUT; see :func:`colormap_lut`."""
    try:
        lut = _matplotlib_float_lut(name)
    except ImportError:
        fallback = _fallback_float_lut(name)
        if fallback is None:
            raise ValueError(
                f"Unknown colormap {name!r} (matplotlib is not installed); valid names without matplotlib: "
                f"{', '.join(FALLBACK_COLORMAPS)} (each also with an '_r' suffix)."
            ) from None
        lut = fallback
    return (lut * 255.0).round().clamp(0, 255).to(torch.uint8).contiguous()


def colormap_lut(name: str = "jet") -> Tensor:
    """Returns the 256-entry lookup table of a colormap.

    The table is built on first use (from ``matplotlib.colormaps[name]`` if matplotlib is installed, otherwise from a
    hand-written fallback, see :data:`FALLBACK_COLORMAPS`) and cached; this function returns a copy, so callers may
    modify it freely.

    Args:
        name: Colormap name, e.g. ``"jet"``, ``"viridis"``, ``"gray"``, ``"seismic"``, ``"RdBu_r"``.

    Returns:
        uint8 ``[256, 3]`` RGB table on CPU; row ``i`` is the colour of value ``i / 255``.

    Raises:
        ValueError: If ``name`` is unknown; the message lists a few valid names.
    """
    return _cached_lut(name).clone()


def apply_colormap(values: Tensor, name: str | Tensor = "jet") -> Tensor:
    """Maps scalar values in [0, 1] to RGB colours through a colormap LUT.

    Values are clamped to [0, 1] and quantised to the nearest of the 256 LUT entries (``round(v * 255)``).
    NaN/Inf are treated as 0.

    Args:
        values: Floats already in [0, 1], shaped ``[H, W]``, ``[N, H, W]`` or ``[N, 1, H, W]`` (any device).
        name: Colormap name (see :func:`colormap_lut`) or a uint8 ``[256, 3]`` LUT tensor.

    Returns:
        uint8 on CPU: ``[3, H, W]`` for ``[H, W]`` input, otherwise ``[N, 3, H, W]``.

    Raises:
        ValueError: If ``values`` has an unsupported shape or the colormap name is unknown.
    """
    if values.ndim == 4:
        if values.shape[1] != 1:
            raise ValueError(f"apply_colormap expects [N,1,H,W] for 4-D input, got {tuple(values.shape)}")
        values = values[:, 0]
    elif values.ndim not in (2, 3):
        raise ValueError(f"apply_colormap expects [H,W], [N,H,W] or [N,1,H,W], got {tuple(values.shape)}")
    lut = _cached_lut(name) if isinstance(name, str) else name.detach().to(device="cpu", dtype=torch.uint8)
    if lut.shape != (_LUT_SIZE, 3):
        raise ValueError(f"colormap LUT must be [256,3], got {tuple(lut.shape)}")
    v = torch.nan_to_num(values.detach().to(device="cpu", dtype=torch.float32), nan=0.0, posinf=0.0, neginf=0.0)
    idx = (v.clamp(0.0, 1.0) * (_LUT_SIZE - 1)).round().long()
    planes = lut.t().contiguous()  # [3, 256]: one gather per channel writes channel-first output directly
    return torch.stack([torch.take(planes[c], idx) for c in range(3)], dim=-3)
