"""Per-image conversions: map normalisation, display images, heatmap overlays and PNG encoding.

Conventions: batched images are ``[N, C, H, W]``; displayable results are ``torch.uint8`` RGB on CPU
(``[N, 3, H, W]`` or ``[3, H, W]``). Float intermediates (normalised maps, heat) keep the input's device.
NaN/Inf values are replaced by 0 rather than propagated (see :func:`sanitize`). The PNG text chunks of probelens' log
format (cells, probe fingerprint, predictions) live in the torch-free :mod:`probelens.logformat`, shared with the
readers; their names are re-exported here.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from probelens.logformat import (
    CELLS_KEY,
    PNG_SIGNATURE,
    PREDICTIONS_KEY,
    PROBE_KEY,
    Cell,
    GridFacts,
    Prediction,
    cells_from_text,
    cells_to_text,
    predictions_from_text,
    probe_from_text,
)
from probelens.logformat import png_chunk as _png_chunk
from probelens.logformat import png_text_chunks as _png_text_chunks
from probelens.render.colormap import apply_colormap

__all__ = [
    "CELLS_KEY",
    "PREDICTIONS_KEY",
    "PROBE_KEY",
    "Cell",
    "GridFacts",
    "Prediction",
    "cells_from_text",
    "cells_to_text",
    "encode_png",
    "normalize_maps",
    "overlay_heatmap",
    "predictions_from_text",
    "probe_from_text",
    "saliency_to_heat",
    "sanitize",
    "save_png",
    "to_display_images",
    "to_pil_image",
    "to_rgb_uint8",
    "upscale_nearest",
]

_REDUCTIONS = ("abs_max", "abs_sum", "sum", "l2")


def sanitize(x: Tensor) -> tuple[Tensor, bool]:
    """Replaces NaN and +/-Inf by 0.

    Args:
        x: Any floating tensor (any shape, any device). Integer tensors are returned unchanged.

    Returns:
        ``(clean, had_nonfinite)``: ``clean`` has the shape, dtype and device of ``x``; ``had_nonfinite`` is True when
        at least one value was replaced.
    """
    if not x.is_floating_point() or x.numel() == 0:
        return x, False
    # one reduction first: a finite sum proves every value finite (NaN and Inf propagate through it); only a non-finite
    # sum (which an overflow of huge finite values can also give) pays for the element-wise test
    if bool(torch.isfinite(x.sum())):
        return x, False
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return x, False
    return torch.where(finite, x, torch.zeros((), dtype=x.dtype, device=x.device)), True


def _per_image(value: float | Tensor | None, n: int, like: Tensor) -> Tensor | None:
    """Turns a scalar or ``[N]`` parameter into a float tensor of shape ``[N]`` (or None)."""
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32, device=like.device).reshape(-1)
    if t.numel() == 1:
        return t.expand(n)
    if t.numel() != n:
        raise ValueError(f"expected a scalar or {n} per-image values, got {t.numel()}")
    return t


def normalize_maps(
    maps: Tensor,
    vmin: float | Tensor | None = None,
    vmax: float | Tensor | None = None,
    symmetric: bool = False,
    eps: float = 1e-12,
) -> Tensor:
    """Rescales maps to [0, 1], each image (first dimension) on its own.

    Non-symmetric: ``(x - lo) / (hi - lo)`` where ``lo``/``hi`` are ``vmin``/``vmax`` when given and otherwise the
    per-image min/max over all of that image's values (all channels together). When ``hi - lo <= eps`` (e.g. a
    constant map) the result is all zeros.

    Symmetric: ``[-a, a]`` is mapped linearly to ``[0, 1]`` so that 0 -> 0.5. ``a`` is the per-image ``max |x|``, or
    ``max(|vmin|, |vmax|)`` of whichever of ``vmin``/``vmax`` is given. When ``a <= eps`` (an all-zero map) the
    result is all 0.5 (i.e. "zero" in a diverging colormap).

    Results are clamped to [0, 1]; NaN/Inf inputs are treated as 0.

    Args:
        maps: Float ``[N, 1, H, W]`` or ``[N, C, H, W]`` (any ``[N, ...]`` works), any device.
        vmin: None, a scalar, or a tensor of ``N`` per-image lower bounds.
        vmax: None, a scalar, or a tensor of ``N`` per-image upper bounds.
        symmetric: Map ``[-a, a]`` to ``[0, 1]`` (for signed maps shown with a diverging colormap).
        eps: Ranges at or below this are considered degenerate.

    Returns:
        float32 tensor with the shape and device of ``maps``, values in [0, 1].
    """
    if maps.ndim < 2:
        raise ValueError(f"normalize_maps expects [N, ...] maps with at least 2 dims, got {tuple(maps.shape)}")
    x, _ = sanitize(maps.detach().float())
    n = x.shape[0]
    bshape = (n,) + (1,) * (x.ndim - 1)
    flat = x.reshape(n, -1)
    lo = _per_image(vmin, n, x)
    hi = _per_image(vmax, n, x)
    if symmetric:
        if lo is None and hi is None:
            a = flat.abs().amax(dim=1) if flat.shape[1] > 0 else torch.zeros(n, device=x.device)
        else:
            parts = [t.abs() for t in (lo, hi) if t is not None]
            a = parts[0] if len(parts) == 1 else torch.maximum(parts[0], parts[1])
        a = a.reshape(bshape)
        out = torch.where(a > eps, 0.5 + x / (2.0 * a.clamp_min(eps)), torch.full_like(x, 0.5))
    else:
        if lo is None:
            lo = flat.amin(dim=1) if flat.shape[1] > 0 else torch.zeros(n, device=x.device)
        if hi is None:
            hi = flat.amax(dim=1) if flat.shape[1] > 0 else torch.zeros(n, device=x.device)
        lo = lo.reshape(bshape)
        rng = hi.reshape(bshape) - lo
        out = torch.where(rng > eps, (x - lo) / rng.clamp_min(eps), torch.zeros_like(x))
    return out.clamp(0.0, 1.0)


def _channel_param(value: float | Sequence[float] | Tensor | None, c: int, default: float, like: Tensor) -> Tensor:
    """Turns a scalar / ``[C]`` mean or std into a ``[1, C, 1, 1]`` tensor broadcastable against ``like``."""
    if value is None:
        value = default
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1)
    if t.numel() == 1:
        return t.reshape(1, 1, 1, 1)
    if t.numel() != c:
        raise ValueError(f"mean/std must have 1 or {c} (channel) entries, got {t.numel()}")
    return t.reshape(1, c, 1, 1)


def to_rgb_uint8(images: Tensor) -> Tensor:
    """Converts a uint8 image batch with any channel count to 3 channels.

    Channel rule: ``C == 1`` -> gray replicated to RGB; ``C == 3`` -> unchanged; ``C > 3`` -> first three channels;
    ``C == 2`` -> channel 0 shown as gray.

    Args:
        images: uint8 ``[N, C, H, W]``.

    Returns:
        uint8 ``[N, 3, H, W]`` (same device as the input).
    """
    if images.ndim != 4 or images.shape[1] < 1:
        raise ValueError(f"expected [N,C,H,W] with C >= 1, got {tuple(images.shape)}")
    c = images.shape[1]
    if c == 3:
        return images
    if c > 3:
        return images[:, :3].contiguous()
    return images[:, :1].expand(-1, 3, -1, -1).contiguous()


def to_display_images(
    images: Tensor,
    mean: float | Sequence[float] | Tensor | None = None,
    std: float | Sequence[float] | Tensor | None = None,
    denormalize: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Turns (normalised) model inputs into displayable uint8 RGB images.

    Steps: 1) undo the input normalisation: ``denormalize(x)`` if a callable is given (it receives the float batch
    on the input's device and must return values meant to lie in [0, 1]), else ``x * std + mean`` if ``mean`` or
    ``std`` is given (a missing one defaults to 0 / 1), else per-image min-max scaling (all channels together);
    2) clamp to [0, 1] and quantise with ``round(x * 255)``; 3) map channels to RGB: ``C == 1`` -> gray replicated,
    ``C == 3`` -> as is, ``C > 3`` -> the first three channels, ``C == 2`` -> channel 0 as gray.

    uint8 input is taken as already displayable: only step 3 is applied. NaN/Inf are treated as 0.

    Args:
        images: Float ``[N, C, H, W]`` model inputs (any device), or uint8 ``[N, C, H, W]``.
        mean: Scalar or per-channel (``C`` entries) mean used by the input normalisation.
        std: Scalar or per-channel (``C`` entries) std used by the input normalisation.
        denormalize: Optional callable ``[N, C, H, W] -> [N, C', H, W]`` undoing the normalisation; takes precedence
            over ``mean``/``std``.

    Returns:
        uint8 ``[N, 3, H, W]`` on CPU.
    """
    if images.ndim != 4:
        raise ValueError(f"to_display_images expects [N,C,H,W], got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return to_rgb_uint8(images.detach().cpu())
    x, _ = sanitize(images.detach().float())
    if denormalize is not None:
        x, _ = sanitize(torch.as_tensor(denormalize(x)).detach().float())
        if x.ndim != 4:
            raise ValueError(f"denormalize must return [N,C,H,W], got {tuple(x.shape)}")
    elif mean is not None or std is not None:
        c = x.shape[1]
        x = x * _channel_param(std, c, 1.0, x) + _channel_param(mean, c, 0.0, x)
    else:
        x = normalize_maps(x)
    u8 = (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu()
    return to_rgb_uint8(u8)


def overlay_heatmap(
    images_u8: Tensor, heat: Tensor, alpha: float = 0.5, cmap: str = "jet", *, keep_device: bool = False
) -> Tensor:
    """Blends a colour-mapped heatmap over images.

    ``out = round((1 - alpha) * image + alpha * colormap(heat))``; ``alpha == 0`` returns the images exactly and
    ``alpha == 1`` the colour-mapped heat exactly. Heat is resized bilinearly (``align_corners=False``) to the image
    size when needed, clamped to [0, 1], NaN/Inf -> 0.

    Args:
        images_u8: uint8 ``[N, 3, H, W]`` (or a single ``[3, H, W]``).
        heat: Float in [0, 1]: ``[N, 1, h, w]`` or ``[N, h, w]`` (for a single image ``[1, h, w]`` or ``[h, w]``).
        alpha: Heat opacity in [0, 1].
        cmap: Colormap name (see :func:`probelens.render.colormap_lut`).
        keep_device: blend on the device of ``heat`` (the images are copied there) and return there, instead of on
            the CPU; the same pixels either way, up to the device's float rounding.

    Returns:
        uint8 ``[N, 3, H, W]`` on CPU (``keep_device``: on the device of ``heat``); ``[3, H, W]`` for a single
        image.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    single = images_u8.ndim == 3
    imgs = images_u8.unsqueeze(0) if single else images_u8
    if imgs.ndim != 4 or imgs.shape[1] != 3 or imgs.dtype != torch.uint8:
        raise ValueError(
            f"overlay_heatmap expects uint8 [N,3,H,W] images (see to_display_images), got {imgs.dtype} "
            f"{tuple(images_u8.shape)}"
        )
    device = heat.device if keep_device else torch.device("cpu")
    imgs = imgs.detach().to(device)
    n, _, height, width = imgs.shape
    h = heat.detach().float().to(device)
    if h.ndim == 2:
        h = h[None, None]
    elif h.ndim == 3:
        h = h.unsqueeze(0) if single else h.unsqueeze(1)
    if h.ndim != 4 or h.shape[1] != 1 or h.shape[0] != n:
        raise ValueError(f"heat must be [N,1,h,w] or [N,h,w] with N={n}, got {tuple(heat.shape)}")
    h, _ = sanitize(h)
    if h.shape[-2:] != (height, width):
        h = F.interpolate(h, size=(height, width), mode="bilinear", align_corners=False)
    color = apply_colormap(h.clamp(0.0, 1.0), cmap, keep_device=keep_device)
    if alpha == 0.0:
        out = imgs.clone()
    elif alpha == 1.0:
        out = color
    else:
        out = ((1.0 - alpha) * imgs.float() + alpha * color.float()).round().clamp(0, 255).to(torch.uint8)
    return out[0] if single else out


def saliency_to_heat(saliency: Tensor, reduce: str = "abs_max") -> Tensor:
    """Reduces a per-channel attribution/saliency map to a single heat channel.

    The result is not rescaled; pass it through :func:`normalize_maps` before :func:`overlay_heatmap`.

    Args:
        saliency: Float ``[N, C, H, W]`` (any device); NaN/Inf are treated as 0.
        reduce: ``"abs_max"`` (max over channels of ``|x|``), ``"abs_sum"`` (sum of ``|x|``), ``"sum"`` (signed sum)
            or ``"l2"`` (Euclidean norm over channels).

    Returns:
        float32 ``[N, 1, H, W]`` on the input's device.
    """
    if saliency.ndim != 4:
        raise ValueError(f"saliency_to_heat expects [N,C,H,W], got {tuple(saliency.shape)}")
    x, _ = sanitize(saliency.detach().float())
    if reduce == "abs_max":
        return x.abs().amax(dim=1, keepdim=True)
    if reduce == "abs_sum":
        return x.abs().sum(dim=1, keepdim=True)
    if reduce == "sum":
        return x.sum(dim=1, keepdim=True)
    if reduce == "l2":
        return x.square().sum(dim=1, keepdim=True).sqrt()
    raise ValueError(f"unknown reduce {reduce!r}; expected one of {', '.join(_REDUCTIONS)}")


def upscale_nearest(images: Tensor, factor: int) -> Tensor:
    """Upscales images by an integer factor with nearest-neighbour (pixel replication).

    Args:
        images: ``[..., H, W]`` tensor of any dtype.
        factor: Integer factor >= 1.

    Returns:
        ``[..., H * factor, W * factor]`` tensor (the input itself when ``factor == 1``).
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if factor == 1:
        return images
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def to_pil_image(image: Tensor) -> Image.Image:
    """Converts a uint8 image tensor to a PIL image.

    Args:
        image: uint8 ``[3, H, W]`` (RGB), ``[1, H, W]`` or ``[H, W]`` (grayscale), or ``[1, 3, H, W]``.

    Returns:
        A PIL image in mode ``"RGB"`` or ``"L"``.
    """
    t = _single_image(image)
    if t.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(t.numpy()))
    return Image.fromarray(np.ascontiguousarray(t.permute(1, 2, 0).numpy()))


def _single_image(image: Tensor) -> Tensor:
    """``image`` on CPU as uint8 ``[3,H,W]`` or ``[H,W]`` (from ``[1,3,H,W]``/``[1,H,W]`` too); raises otherwise."""
    t = image.detach().cpu()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 image, got {t.dtype}")
    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    if t.ndim not in (2, 3) or (t.ndim == 3 and t.shape[0] != 3):
        raise ValueError(f"expected [3,H,W], [1,H,W] or [H,W], got {tuple(image.shape)}")
    return t


PNG_COMPRESS_LEVEL = 1
"""Deflate level of :func:`encode_png`: the fastest level, since encoding competes with training for the cores.
How it compares with Pillow, and how much of that comes from ISA-L's deflate rather than the encoder itself, is in
``benchmarks/RESULTS.md`` ("PNG encoder")."""


_isal_zlib: Any
try:  # ISA-L's deflate (the ``isal`` package, a dependency where it has wheels): faster than zlib at levels 1-3
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - platforms without isal wheels use zlib
    _isal_zlib = None


def _deflate(data: bytes | np.ndarray, level: int) -> bytes:
    """A zlib stream of ``data`` (what a PNG ``IDAT`` holds): ISA-L for levels 1-3 when installed, else zlib.

    Both write standard deflate; ISA-L's level ``k`` in 1-3 trades size for speed like zlib's low levels (on the
    monitors' grids: faster than zlib level 1 and a little larger; figures in ``benchmarks/RESULTS.md``).
    """
    buffer = memoryview(data)  # type: ignore[arg-type]  # an ndarray exports its buffer as is, no copy
    if _isal_zlib is not None and 1 <= level <= 3:
        return _isal_zlib.compress(buffer, level)
    return zlib.compress(buffer, level)


_PNG_SIGNATURE = PNG_SIGNATURE
_PNG_FILTER_NONE = 0
_PNG_FILTER_UP = 2
_PNG_TRIAL_BYTES = 256 * 1024  # below this, both filters are tried on the whole image
_PNG_TRIAL_BLOCK = 8  # larger images: trial rows are blocks of 8 rows ...
_PNG_TRIAL_EVERY = 64  # ... one every 64 rows (1/8 of the image)


def _png_scanlines(rows: np.ndarray, filter_type: int) -> np.ndarray:
    """``rows`` (uint8 ``[H, W*C]``) as PNG scanlines: a filter-type byte, then the row filtered with it.

    Filter "Up" stores ``row - previous row`` (mod 256, which uint8 arithmetic does); the first row's "previous row"
    is zero, so it is stored as is.
    """
    lines = np.empty((rows.shape[0], rows.shape[1] + 1), dtype=np.uint8)
    lines[:, 0] = filter_type
    lines[:, 1:] = rows
    if filter_type == _PNG_FILTER_UP and rows.shape[0] > 1:
        np.subtract(rows[1:], rows[:-1], out=lines[1:, 1:])
    return lines


def _png_pick_filter(rows: np.ndarray, level: int) -> tuple[int, bytes | None]:
    """The PNG filter (None or Up) under which ``rows`` compress smaller, and, when the whole image was tried, its
    compressed data (else ``None``)."""
    if rows.size <= _PNG_TRIAL_BYTES:
        none, up = (_deflate(_png_scanlines(rows, kind), level) for kind in (_PNG_FILTER_NONE, _PNG_FILTER_UP))
        return (_PNG_FILTER_NONE, none) if len(none) <= len(up) else (_PNG_FILTER_UP, up)
    starts = np.arange(0, rows.shape[0] - _PNG_TRIAL_BLOCK + 1, _PNG_TRIAL_EVERY)
    sample = rows[(starts[:, None] + np.arange(_PNG_TRIAL_BLOCK)[None, :]).ravel()]
    sizes = [len(_deflate(_png_scanlines(sample, kind), level)) for kind in (_PNG_FILTER_NONE, _PNG_FILTER_UP)]
    return (_PNG_FILTER_NONE, _PNG_FILTER_UP)[int(np.argmin(sizes))], None


def encode_png(image: Tensor, compress_level: int = PNG_COMPRESS_LEVEL, text: Mapping[str, str] | None = None) -> bytes:
    """Encodes an image as PNG (8-bit RGB, or grayscale for one channel).

    Written with numpy and zlib rather than PIL, for speed: PIL filters every row adaptively and deflates at level 6,
    which cost 100+ ms per activation grid. Here the whole image uses one PNG filter, "None" or "Up", whichever
    compresses smaller (tried on the whole image when it is small, else on 1/8 of its rows), deflated at
    ``compress_level``. On the monitors' grids (colour-mapped maps, nearest-neighbour upscaled tiles, flat caption
    bands) "None" wins; on photographs and overlays "Up" does.

    Args:
        image: uint8 ``[3, H, W]`` (also ``[1, H, W]``/``[H, W]`` grayscale, or ``[1, 3, H, W]``), any device.
        compress_level: zlib level, 0 (store) to 9 (smallest); levels 1-3 use ISA-L's faster deflate when the
            ``isal`` package is installed.
        text: Optional ``tEXt`` chunks, key to value (Latin-1); PIL reads them back as ``Image.open(...).text``.
            probelens stores the probe-image layout of its grids there (:data:`CELLS_KEY`).

    Returns:
        The PNG file contents.

    Example:
        >>> import io, torch
        >>> from PIL import Image
        >>> image = torch.arange(24, dtype=torch.uint8).reshape(3, 2, 4)
        >>> decoded = Image.open(io.BytesIO(encode_png(image)))
        >>> decoded.mode, decoded.size, torch.equal(torch.from_numpy(np.array(decoded)).permute(2, 0, 1), image)
        ('RGB', (4, 2), True)
    """
    if isinstance(compress_level, bool) or not isinstance(compress_level, int) or not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be an integer in [0, 9], got {compress_level!r}")
    t = _single_image(image)
    height, width = t.shape[-2:]
    if height == 0 or width == 0:
        raise ValueError(f"cannot encode an empty image of shape {tuple(image.shape)}")
    planes = t.numpy()
    if t.ndim == 2:
        color_type, rows = 0, np.ascontiguousarray(planes)
    else:
        # interleave channel by channel: faster than a copy of the [H,W,3] transposed view
        color_type, pixels = 2, np.empty((height, width, 3), dtype=np.uint8)
        for c in range(3):
            pixels[..., c] = planes[c]
        rows = pixels.reshape(height, width * 3)
    filter_type, data = _png_pick_filter(rows, compress_level)
    if data is None:
        data = _deflate(_png_scanlines(rows, filter_type), compress_level)
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)  # 8 bit, deflate, no interlace
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_text_chunks(text)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def save_png(image: Tensor, path: str | os.PathLike[str], text: Mapping[str, str] | None = None) -> None:
    """Writes an image to a PNG file, creating parent directories.

    Args:
        image: uint8 ``[3, H, W]`` (also ``[1, H, W]``/``[H, W]`` grayscale).
        path: Destination file path.
        text: Optional ``tEXt`` chunks (see :func:`encode_png`).
    """
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(encode_png(image, text=text))
