"""Occlusion sensitivity (Zeiler & Fergus, 2014, "Visualizing and Understanding Convolutional Networks").

A window slides over the image; inside it all channels are replaced by a baseline and the drop of the target score
``F_t(x) - F_t(x_occluded)`` is credited to the occluded pixels, averaged over the windows that cover each pixel. The
occluded copies of all images are built as batches and sent through the network in chunks (Captum's default sends one
window per forward pass, which costs 1.5-2x more).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probelens.methods import batching
from probelens.methods.engine import OutputTransform, forward_backward
from probelens.methods.hooks import probe_context
from probelens.methods.integrated_gradients import broadcast_baseline
from probelens.methods.layers import unwrap_compiled

BASELINES = ("mean", "blur")


def _pair(name: str, value: object) -> tuple[int, int]:
    pair = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    # numbers.Integral admits numpy integers; bools are not sizes
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive integer or a pair (h, w) of positive integers, got {value!r}")
    return int(pair[0]), int(pair[1])


def gaussian_blur(images: Tensor, sigma: tuple[float, float]) -> Tensor:
    """Separable Gaussian blur of ``[N,C,H,W]`` with standard deviations ``(sigma_h, sigma_w)`` in pixels.

    Kernel radius ``ceil(3 sigma)``; borders are extended by replicating the edge pixels, so a constant image stays
    constant.
    """
    out = images
    channels = images.shape[1]
    for axis, s in enumerate(sigma):
        if s <= 0:
            continue
        radius = max(1, math.ceil(3 * s))
        offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=torch.float64)
        kernel = torch.exp(-0.5 * (offsets / s) ** 2)
        kernel = (kernel / kernel.sum()).to(images.dtype)
        if axis == 0:
            weight = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
            padded = F.pad(out, (0, 0, radius, radius), mode="replicate")
        else:
            weight = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
            padded = F.pad(out, (radius, radius, 0, 0), mode="replicate")
        out = F.conv2d(padded, weight, groups=channels)
    return out


def occlusion_baseline(baseline: Tensor | float | str, images: Tensor, window: tuple[int, int]) -> Tensor:
    """The replacement values, broadcast to ``images.shape``: a number, ``"mean"`` (per-image per-channel mean),
    ``"blur"`` (:func:`gaussian_blur` with ``sigma = window / 2``) or a tensor broadcastable to ``[N,C,H,W]``."""
    if isinstance(baseline, str):
        if baseline == "mean":
            return images.mean(dim=(2, 3), keepdim=True).expand(images.shape)
        if baseline == "blur":
            return gaussian_blur(images, (window[0] / 2, window[1] / 2))
        raise ValueError(
            f"unknown baseline {baseline!r}; valid: a number, {', '.join(repr(b) for b in BASELINES)} or a tensor"
        )
    return broadcast_baseline(baseline, images)


def window_masks(size: int, window: int, stride: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Per window position along one axis, the 0/1 mask of the pixels it covers ``[positions, size]``.

    Positions ``0, stride, 2 stride, ...``, ``ceil((size - window) / stride) + 1`` of them (Captum's count): when
    ``stride`` does not divide ``size - window`` the last window hangs over the border and covers only the pixels
    inside the image.
    """
    count = math.ceil((size - window) / stride) + 1
    starts = torch.arange(count, device=device)[:, None] * stride
    pixels = torch.arange(size, device=device)[None, :]
    return ((pixels >= starts) & (pixels < starts + window)).to(dtype)


def occlusion(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None = None,
    window: int | tuple[int, int] = 8,
    stride: int | tuple[int, int] | None = None,
    baseline: Tensor | float | str = 0.0,
    chunk_size: int | None = None,
    output_transform: OutputTransform | None = None,
) -> Tensor:
    """Occlusion sensitivity: the average score drop of the windows that occlude each pixel.

    For windows ``W_p`` (all channels, positions ``(y, x) = (i s_h, j s_w)``, see :func:`window_masks`) and the
    occluded copies ``x_p = x * (1 - M_p) + b * M_p``:
    ``A(x)_{c,y,x} = sum_p (F_t(x) - F_t(x_p)) M_p(y,x) / sum_p M_p(y,x)``. This is Captum's
    ``Occlusion(model).attribute(x, sliding_window_shapes=(C,h,w), strides=(C,s_h,s_w), baselines=b, target=t)``,
    including windows that hang over the bottom/right border.

    Args:
        model: a classifier (a ``torch.compile`` wrapper is looked through).
        images: ``[N,C,H,W]``.
        targets: ``[N]`` class indices; ``None`` explains the predicted class.
        window: window size ``h`` or ``(h, w)``, at most the image size.
        stride: step ``s`` or ``(s_h, s_w)``, at most the window (unless the window spans that whole axis); default
            the window (non-overlapping windows).
        baseline: what the window is filled with: a number, ``"mean"`` (each image's per-channel mean), ``"blur"`` (a
            Gaussian-blurred copy of the image, ``sigma = window / 2``) or a tensor broadcastable to ``[N,C,H,W]``.
        chunk_size: occluded copies per forward pass; ``None`` picks one from a memory budget
            (on CPU tuned on the first run, see ``TunedChunks``).
        output_transform: selects ``[N,K]`` scores from the model output.

    Returns:
        ``[N,C,H,W]`` on the input's device, the same value in every channel.
    """
    images = batching.check_images(images)
    n, c, height, width = images.shape
    win = _pair("window", window)
    step = win if stride is None else _pair("stride", stride)
    if win[0] > height or win[1] > width:
        raise ValueError(f"window {window!r} is larger than the images ({height}x{width})")
    for axis, (w, s, size) in enumerate(zip(win, step, (height, width))):
        if s > w and w != size:
            raise ValueError(
                f"stride {stride!r} is larger than the window {window!r} along {('height', 'width')[axis]}: pixels "
                "between windows would never be occluded"
            )
    chunk_size = batching.check_chunk_size(chunk_size)
    net = unwrap_compiled(model)
    with probe_context(net):
        x = images.detach().clone()
        fill = occlusion_baseline(baseline, x, win)
        clean = forward_backward(
            net, x, targets, gradients=False, input_gradient=False, output_transform=output_transform
        )
        t = clean.targets["target"]
        rows = window_masks(height, win[0], step[0], x.device, x.dtype)  # [Py, H]
        cols = window_masks(width, win[1], step[1], x.device, x.dtype)  # [Px, W]
        positions = rows.shape[0] * cols.shape[0]
        chunk = chunk_size or batching.auto_chunks(net, x, positions, "occlusion", backward=False)

        def occluded_scores(start: int, stop: int) -> Tensor:
            owner, p = batching.copy_owners(start, stop, positions, x.device)
            mask = (rows[p // cols.shape[0]][:, :, None] * cols[p % cols.shape[0]][:, None, :])[:, None]
            occluded = x[owner] * (1 - mask) + fill[owner] * mask
            logits = forward_backward(
                net, occluded, t[owner], gradients=False, input_gradient=False, output_transform=output_transform
            ).logits
            return logits.gather(1, t[owner][:, None]).squeeze(1)

        scores = batching.map_chunks(occluded_scores, n * positions, chunk)
        clean_scores = clean.logits.gather(1, t[:, None])
        drops = (clean_scores - scores.view(n, positions)).view(n, rows.shape[0], cols.shape[0])
        # sum_p drop_p M_p with separable masks M_p = rows[a] (x) cols[b]
        total = torch.einsum("nab,ay,bx->nyx", drops, rows, cols)
        coverage = rows.sum(dim=0)[:, None] * cols.sum(dim=0)[None, :]
        return (total / coverage)[:, None].expand(n, c, height, width).contiguous()
