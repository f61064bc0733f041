"""SmoothGrad (Smilkov et al., 2017, "SmoothGrad: removing noise by adding noise") over any gradient method.

``SG(x) = 1/S * sum_s M(x + eps_s)`` with ``eps_s ~ N(0, sigma^2 I)`` and ``M`` a per-batch gradient method of
:func:`probelens.methods.saliency.saliency`; SmoothGrad-Squared averages ``M(x + eps_s)^2`` instead. The noisy copies
of all images are stacked into the batch dimension and sent through the network in chunks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from probelens.methods import batching
from probelens.methods.engine import OutputTransform, forward_backward
from probelens.methods.hooks import probe_context
from probelens.methods.layers import unwrap_compiled
from probelens.methods.saliency import saliency


def smoothgrad_noise(images: Tensor, samples: int = 16, noise: float = 0.15, seed: int = 0) -> Tensor:
    """The noise :func:`smoothgrad` adds, ``[N,S,C,H,W]``: ``eps[i,s] ~ N(0, sigma_i^2)`` with
    ``sigma_i = noise * (max(x_i) - min(x_i))``, drawn from ``torch.Generator(images.device).manual_seed(seed)``
    (the global RNG is not used)."""
    images = batching.check_images(images)
    samples = batching.check_count("samples", samples)
    sigma = _noise_sigma(images, noise)
    with torch.inference_mode(False):
        draw = batching.GaussianNoise(images.detach(), samples, sigma, seed)
        return draw(0, images.shape[0] * samples).view(images.shape[0], samples, *images.shape[1:])


def _noise_sigma(images: Tensor, noise: float) -> Tensor:
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0 (a fraction of each image's value range), got {noise!r}")
    flat = images.detach().flatten(1)
    return float(noise) * (flat.amax(dim=1) - flat.amin(dim=1))


def smoothgrad(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None = None,
    method: str = "vanilla",
    samples: int = 16,
    noise: float = 0.15,
    seed: int = 0,
    squared: bool = False,
    chunk_size: int | None = None,
    output_transform: OutputTransform | None = None,
) -> Tensor:
    """SmoothGrad: the average of a gradient method over noisy copies of each image.

    ``SG(x) = 1/S * sum_{s=1..S} M(x + eps_s)``; with ``squared=True`` (SmoothGrad-Squared, Hooker et al. 2019)
    ``1/S * sum_s M(x + eps_s)^2``. ``M`` is :func:`probelens.methods.saliency.saliency` with ``method`` (``"vanilla"``,
    ``"gradient_x_input"``, and any other method it supports, e.g. ``"guided_backprop"``/``"deconvnet"``) applied to
    the batch of noisy copies, always for the class of the clean image. For ``"gradient_x_input"`` the gradient is
    multiplied by the NOISY input ``x + eps_s``, as Captum's ``NoiseTunnel(InputXGradient(model))`` does.

    Noise is a fraction of each image's value range: ``eps_s ~ N(0, sigma^2)`` with
    ``sigma = noise * (x.max() - x.min())`` per image (Smilkov et al. recommend 10-20%). For example, an image
    normalised to values in ``[-2.1, 2.6]`` with ``noise=0.15`` gets ``sigma = 0.15 * 4.7 = 0.705``; an image in
    ``[0, 1]`` gets ``sigma = 0.15``. The noise comes from a private ``torch.Generator(device).manual_seed(seed)``
    (see :func:`smoothgrad_noise`), never from the global RNG, and does not depend on ``chunk_size``.

    Args:
        model: a classifier (a ``torch.compile`` wrapper is looked through).
        images: ``[N,C,H,W]``.
        targets: ``[N]`` class indices; ``None`` explains the class predicted for the clean image.
        method: the gradient method to smooth (see :func:`probelens.methods.saliency.saliency`).
        samples: noisy copies per image ``S >= 1``.
        noise: noise standard deviation as a fraction of each image's ``max - min`` (``>= 0``).
        seed: seed of the private noise generator.
        squared: average squared maps (SmoothGrad-Squared).
        chunk_size: copies per forward/backward pass; ``None`` picks one from a memory budget
            (:func:`probelens.methods.batching.chunk_size`; on CPU tuned on the first run, see ``TunedChunks``).
        output_transform: selects ``[N,K]`` scores from the model output.

    Returns:
        ``[N,C,H,W]`` on the input's device.
    """
    images = batching.check_images(images)
    samples = batching.check_count("samples", samples)
    if not isinstance(method, str):
        raise ValueError(f"method must be the name of a saliency method, got {method!r}")
    chunk_size = batching.check_chunk_size(chunk_size)
    sigma = _noise_sigma(images, noise)
    net = unwrap_compiled(model)
    with probe_context(net):
        x = images.detach().clone()
        draw = batching.GaussianNoise(x, samples, sigma, seed)
        return _smoothgrad_given_noise(net, x, targets, draw, samples, method, squared, chunk_size, output_transform)


def _smoothgrad_given_noise(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None,
    noise: Tensor | Callable[[int, int], Tensor],
    samples: int,
    method: str = "vanilla",
    squared: bool = False,
    chunk_size: int | None = None,
    output_transform: OutputTransform | None = None,
) -> Tensor:
    """SmoothGrad with explicit noise: ``1/S * sum_s M(x + noise[:, s])`` (or of the squares).

    Args:
        noise: ``[N,S,C,H,W]`` or ``[N*S,C,H,W]`` (image-major, copy ``k`` of image ``k // S``), or a callable
            ``(start, stop) -> [stop-start,C,H,W]`` for those flat copies, called in order.

    The other arguments are those of :func:`smoothgrad`.
    """
    images = batching.check_images(images)
    samples = batching.check_count("samples", samples)
    net = unwrap_compiled(model)
    with probe_context(net):
        x = images.detach().clone()
        draw = batching.flat_noise_source(noise, x, samples)
        clean = forward_backward(
            net, x, targets, gradients=False, input_gradient=False, output_transform=output_transform
        )
        t = clean.targets["target"]
        chunk = chunk_size or batching.auto_chunks(net, x, samples, f"smoothgrad/{method}/{squared}")

        def smoothed(start: int, stop: int) -> Tensor:
            owner, _ = batching.copy_owners(start, stop, samples, x.device)
            noisy = x[owner] + draw(start, stop)
            attr = saliency(net, noisy, t[owner], method=method, output_transform=output_transform)
            return attr * attr if squared else attr

        return batching.sum_over_copies(smoothed, x.shape[0], samples, chunk) / samples
