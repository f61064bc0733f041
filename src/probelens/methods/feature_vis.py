"""Feature visualisation by activation maximisation (Erhan et al., 2009; Olah et al., 2017, "Feature Visualization").

An image ``x`` is optimised by gradient ascent so that a channel (or a class logit) responds strongly:
``x* = argmax_x f_c(T(x))``, where ``T`` is a random robustness transform redrawn at every step. Three ingredients
from Olah et al. make the result look like a picture instead of adversarial noise:

- a Fourier parameterisation: the optimised variable is the 2-D real spectrum ``S[c, u, v]`` of the image, scaled by
  ``1 / max(|f|, 1 / max(H, W))`` (``|f|`` the frequency in cycles per pixel), so low frequencies move faster than
  high ones (the gradient is pre-conditioned towards natural-image statistics); pixels are ``irfft2`` of the scaled
  spectrum (orthonormal);
- colour decorrelation: for 3-channel images the optimised channels are decorrelated colour components, mapped to
  RGB by the square root of the colour covariance of natural images (see :data:`COLOR_CORRELATION_SQRT`); for other
  channel counts the identity;
- transformation robustness: per step a random roll (jitter), a random scale in ``[0.9, 1.1]`` and a random rotation
  in ``[-10, 10]`` degrees (``affine_grid`` + ``grid_sample`` with reflection padding).

A sigmoid maps the result to display space ``[0, 1]``; the model input is ``(x - mean) / std``. Every random draw comes
from a private ``torch.Generator`` seeded by ``seed`` (drawn on the CPU, so the draws do not depend on the device):
the same seed gives the same initial image and the same transform sequence at every call, so images logged at
different training steps differ only because the model changed. Bit-identical on the CPU; on CUDA, ``grid_sample``'s
backward uses atomic adds, so use ``torch.use_deterministic_algorithms(True)`` if bit-identity matters there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probelens.methods.engine import OutputTransform, class_scores
from probelens.methods.guided import forward_to_layer, resolve_single_layer
from probelens.methods.hooks import probe_context
from probelens.methods.layers import unwrap_compiled
from probelens.methods.layout import Layout, ReshapeSpec, layout_of

TRANSFORMS: tuple[str, ...] = ("jitter", "scale", "rotate")
PARAMETERIZATIONS: tuple[str, ...] = ("fourier", "pixel")
OBJECTIVES: tuple[str, ...] = ("channel", "neuron")

# Eigen-decomposition of the 3x3 covariance of the RGB values (in [0, 1]) of ImageNet training pixels, as published
# with the PCA colour augmentation of Krizhevsky et al. (2012): eigenvalues and unit eigenvectors (columns).
_RGB_EIGENVALUES = (0.2175, 0.0188, 0.0045)
_RGB_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def _color_correlation_sqrt() -> Tensor:
    vectors = torch.tensor(_RGB_EIGENVECTORS, dtype=torch.float64)
    sqrt = vectors * torch.tensor(_RGB_EIGENVALUES, dtype=torch.float64).sqrt()  # U sqrt(Lambda): Sigma = M M^T
    # scaled so its largest column has unit norm: unit-variance decorrelated noise keeps roughly unit variance
    return (sqrt / sqrt.norm(dim=0).max()).float()


COLOR_CORRELATION_SQRT: Tensor = _color_correlation_sqrt()
"""``M = U sqrt(Lambda) / max_j ||U_j sqrt(lambda_j)||`` (3x3) with ``U, Lambda`` the eigenvectors/-values of the
ImageNet RGB covariance; an image of decorrelated components ``z`` becomes RGB as ``M z``: independent noise in ``z``
has the colour correlations of natural images."""

_INIT_STD = 0.01


def _spectrum_scale(height: int, width: int) -> Tensor:
    """``1 / max(|f|, 1 / max(H, W))`` on the ``rfft2`` grid ``[H, W // 2 + 1]``."""
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(width, dtype=torch.float64)[None, :]
    freq = (fx.square() + fy.square()).sqrt()
    return (1.0 / freq.clamp_min(1.0 / max(height, width))).float()


def _as_channel_tensor(
    value: float | Sequence[float] | Tensor | None, channels: int, name: str, default: float
) -> Tensor:
    if value is None:
        return torch.full((1, channels, 1, 1), default, dtype=torch.float32)
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.expand(channels)
    if t.numel() != channels:
        raise ValueError(f"{name} has {t.numel()} values but image_shape has {channels} channels")
    if name == "std" and bool((t <= 0).any()):
        raise ValueError(f"std must be positive, got {t.tolist()}")
    return t.reshape(1, channels, 1, 1).clone()


def _random_transform(images: Tensor, transforms: Sequence[str], generator: torch.Generator) -> Tensor:
    """Jitter (``torch.roll`` by up to ``max(1, min(H, W) // 16)`` pixels), then one per-image affine warp combining a
    scale in ``[0.9, 1.1]`` and a rotation in ``[-10, 10]`` degrees, in pixel geometry (also for ``H != W``)."""
    n, _, h, w = images.shape
    out = images
    if "jitter" in transforms:
        reach = max(1, min(h, w) // 16)
        dy, dx = torch.randint(-reach, reach + 1, (2,), generator=generator).tolist()
        out = torch.roll(out, shifts=(dy, dx), dims=(2, 3))
    scale = "scale" in transforms
    rotate = "rotate" in transforms
    if scale or rotate:
        s = 0.9 + 0.2 * torch.rand(n, generator=generator, dtype=torch.float64) if scale else torch.ones(n)
        angle = (torch.rand(n, generator=generator, dtype=torch.float64) * 20 - 10) if rotate else torch.zeros(n)
        angle = angle.double() * (math.pi / 180)
        cos, sin, s = angle.cos(), angle.sin(), s.double()
        # the pixel-space map R/s expressed in affine_grid's normalised coordinates (x spans W, y spans H)
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = cos / s
        theta[:, 0, 1] = -sin * (h / w) / s
        theta[:, 1, 0] = sin * (w / h) / s
        theta[:, 1, 1] = cos / s
        theta = theta.to(device=out.device, dtype=out.dtype)
        grid = F.affine_grid(theta, list(out.shape), align_corners=False)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out


class _ImageParameterization:
    """The optimised variable and its map to a display image ``[B, C, H, W]`` in ``[0, 1]``: ``sigmoid(M irfft2(S *
    scale))`` (Fourier) or ``sigmoid(M P)`` (pixel), ``M`` the colour matrix or the identity. Initialised with
    ``N(0, 0.01^2)`` noise from ``generator``, drawn on the CPU."""

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        parameterization: str,
        decorrelate: bool,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        b, c, h, w = shape
        self.size = (h, w)
        self.fourier = parameterization == "fourier"
        param_shape = (b, c, h, w // 2 + 1, 2) if self.fourier else (b, c, h, w)
        # float32 whatever torch's default dtype is: the seeded picture is the same, and it is cast to the model's
        # dtype only where it enters the model
        init = torch.randn(param_shape, generator=generator, dtype=torch.float32) * _INIT_STD
        self.param = init.to(device).requires_grad_(True)
        self.scale = _spectrum_scale(h, w).to(device) if self.fourier else None
        self.color = COLOR_CORRELATION_SQRT.to(device) if decorrelate else None

    def __call__(self) -> Tensor:
        if self.fourier:
            assert self.scale is not None
            image = torch.fft.irfft2(torch.view_as_complex(self.param) * self.scale, s=self.size, norm="ortho")
        else:
            image = self.param
        if self.color is not None:
            image = torch.einsum("ij,bjhw->bihw", self.color, image)
        return torch.sigmoid(image)


def _check_channels(channels: Tensor, count: int, what: str) -> None:
    bad = [int(c) for c in channels if int(c) < 0 or int(c) >= count]
    if bad:
        raise ValueError(f"channel index {bad} out of range: {what} has {count} channels (valid: 0..{count - 1})")


def feature_visualization(
    model: nn.Module,
    layer: str | None,
    channels: Sequence[int],
    *,
    image_shape: tuple[int, int, int],
    steps: int = 128,
    lr: float = 0.05,
    seed: int = 0,
    parameterization: Literal["fourier", "pixel"] = "fourier",
    decorrelate: bool = True,
    transforms: Sequence[str] = TRANSFORMS,
    mean: float | Sequence[float] | Tensor | None = None,
    std: float | Sequence[float] | Tensor | None = None,
    objective: Literal["channel", "neuron"] = "channel",
    output_transform: OutputTransform | None = None,
    reshape: ReshapeSpec = None,
) -> Tensor:
    """Images that maximise channels of a layer (or class logits), one image per channel, optimised as one batch.

    The objective for image ``b`` and its channel ``c_b`` is the mean activation ``mean_{ij} A[b, c_b, i, j]``
    (``objective="channel"``) or the centre activation ``A[b, c_b, h // 2, w // 2]`` (``"neuron"``) of ``layer``'s
    output (a layer output ``[B, D]`` is read as ``D`` channels); with ``layer=None`` the channels are class indices
    and the objective is the logit. Adam ascends the sum of the objectives; gradients are taken with
    ``torch.autograd.grad`` with respect to the image parameters only, and the forward pass stops at ``layer``. The
    model is left as found: eval mode per module during the run with flags restored, parameter ``.grad`` untouched,
    global RNG state restored (see :func:`probelens.methods.hooks.probe_context`). In eval mode the images of a batch
    do not interact, so each image is the one its channel would get alone (with the same random draws).

    Call it with the same ``seed`` at every log step: the start image and the transform sequence are then identical,
    and differences between the logged images show how the model changed.

    Args:
        model: the network (a ``torch.compile`` wrapper is looked through).
        layer: a module name, or ``None`` for the model output.
        channels: channel (or class) indices, one image each; repeats allowed.
        image_shape: ``(C, H, W)`` of the model input.
        steps: optimisation steps.
        lr: Adam learning rate.
        seed: seeds the initial image and every random transform.
        parameterization: ``"fourier"`` (scaled spectrum) or ``"pixel"``.
        decorrelate: map decorrelated colour components to RGB (only for ``C == 3``; identity otherwise).
        transforms: any of ``"jitter"``, ``"scale"``, ``"rotate"``; empty for none.
        mean: the model's input normalisation mean (per channel or scalar); ``None`` for 0.
        std: the model's input normalisation std; ``None`` for 1.
        objective: ``"channel"`` or ``"neuron"`` (ignored for ``layer=None``).
        output_transform: selects ``[B, K]`` scores from the model output when ``layer`` is ``None``.
        reshape: how to view the layer's output as ``[B,C_l,h,w]`` where it is not NCHW, channels-last or tokens on
            a grid (those are recognised, see :mod:`probelens.methods.layout`).

    Returns:
        ``[len(channels), C, H, W]`` float32 images in ``[0, 1]`` (display space, before normalisation) on the model's
        device.

    Raises:
        ValueError: unknown layer (with the valid names), channel index out of range (naming the channel count), or a
            bad argument.
    """
    if len(image_shape) != 3 or any(int(v) < 1 for v in image_shape):
        raise ValueError(f"image_shape must be (C, H, W) with positive sizes, got {image_shape!r}")
    c, h, w = (int(v) for v in image_shape)
    if isinstance(channels, int) or (isinstance(channels, Tensor) and channels.dim() != 1):
        raise TypeError(f"channels must be a sequence of ints (one image per entry), got {channels!r}")
    chans = torch.as_tensor(channels if isinstance(channels, Tensor) else list(channels), dtype=torch.long).cpu()
    if chans.numel() == 0:
        raise ValueError("channels is empty; pass at least one channel index")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; valid: {', '.join(PARAMETERIZATIONS)}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}")
    transforms = tuple(transforms)
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transforms {unknown}; valid: {', '.join(TRANSFORMS)}")

    mean_t = _as_channel_tensor(mean, c, "mean", 0.0)
    std_t = _as_channel_tensor(std, c, "std", 1.0)
    net = unwrap_compiled(model)
    target = resolve_single_layer(net, layer) if layer is not None else None
    reference: Tensor | None = next(iter(net.parameters()), None)
    if reference is None:
        reference = next(iter(net.buffers()), torch.zeros(()))
    device = reference.device
    model_dtype = reference.dtype if reference.dtype.is_floating_point else torch.float32

    layout: list[Layout] = []  # the layer's, found at the first call

    def objective_values(image: Tensor, check: bool) -> Tensor:
        x = ((image - mean_t) / std_t).to(model_dtype)
        rows = torch.arange(x.shape[0], device=device)
        if target is None:
            scores = class_scores(net(x), output_transform)
            if scores.dim() != 2:
                raise ValueError(
                    f"with layer=None the model output (after output_transform) must be class scores [B, K], got "
                    f"shape {tuple(scores.shape)}"
                )
            if check:
                _check_channels(chans, scores.shape[1], "the model output")
            return scores[rows, chans].float()
        name, module = target
        act = forward_to_layer(net, x, module, name)
        if act.dim() < 2 or act.shape[0] != x.shape[0]:
            raise ValueError(f"layer {name!r} output has shape {tuple(act.shape)}; expected [B, C_l, ...]")
        if act.dim() > 2:  # a map: channels read through its layout (channels-last, tokens)
            if not layout:
                layout.append(layout_of(net, x[:1].detach(), name, module, act, reshape))
            act = layout[0].to_nchw(act)
        if check:
            _check_channels(chans, act.shape[1], f"layer {name!r}")
        maps = act[rows, chans].float()  # [B, *spatial]
        if maps.dim() == 1:
            return maps
        if objective == "channel":
            return maps.flatten(1).mean(dim=1)
        index: list[Tensor | int] = [rows, *(int(size) // 2 for size in maps.shape[1:])]
        return maps[tuple(index)]

    # every tensor is made inside the probe context: the caller may run under inference mode
    with probe_context(net):
        mean_t, std_t, chans = mean_t.to(device).clone(), std_t.to(device).clone(), chans.to(device).clone()
        generator = torch.Generator().manual_seed(int(seed))
        image = _ImageParameterization(
            (chans.numel(), c, h, w), parameterization, decorrelate and c == 3, generator, device
        )
        optimizer = torch.optim.Adam([image.param], lr=lr)
        with torch.no_grad():
            objective_values(image(), check=True)  # validates the channel indices before any work
        for _ in range(steps):
            loss = -objective_values(_random_transform(image(), transforms, generator), check=False).sum()
            (grad,) = torch.autograd.grad(loss, [image.param])  # the image only: parameter .grad is never touched
            image.param.grad = grad
            optimizer.step()
        with torch.no_grad():
            return image().detach()
