"""Expected gradients / GradientSHAP (Lundberg & Lee, 2017, "A Unified Approach to Interpreting Model Predictions";
Erion et al., 2019/2021, "Improving performance of deep learning models with axiomatic attribution priors and
expected gradients").

Integrated gradients with the baseline drawn from a background distribution and the path integral replaced by a
Monte-Carlo sample of one point per draw:
``EG(x) = E_{b ~ D, a ~ U(0,1)} [ (x - b) * grad F_t(b + a (x - b)) ]``. The samples of all images are stacked into
the batch dimension and sent through the network in chunks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from probelens.methods import batching
from probelens.methods.engine import OutputTransform, forward_backward
from probelens.methods.hooks import probe_context
from probelens.methods.layers import resolve_layers, unwrap_compiled


def check_background(background: object, images: Tensor) -> Tensor:
    """A ``[B,C,H,W]`` tensor (``B >= 1``) whose ``C,H,W`` match the images'."""
    if not isinstance(background, Tensor) or background.dim() != 4:
        shape = tuple(background.shape) if isinstance(background, Tensor) else type(background).__name__
        raise ValueError(f"background must be a 4-D tensor [B,C,H,W] of baseline images, got {shape}")
    if background.shape[1:] != images.shape[1:] or background.shape[0] < 1:
        raise ValueError(
            f"background of shape {tuple(background.shape)} does not match the images: need [B,"
            f"{','.join(str(d) for d in images.shape[1:])}] with B >= 1"
        )
    return background


def expected_gradients_samples(
    images: Tensor, background_size: int, samples: int, seed: int
) -> tuple[Tensor, Tensor, torch.Generator]:
    """The draws of :func:`expected_gradients`: background indices ``[N,S]`` (uniform over ``range(B)``) and path
    coefficients ``[N,S]`` (uniform on ``[0, 1)``), in that order, from ``torch.Generator(device).manual_seed(seed)``;
    the generator is returned as well (the optional input noise is drawn from it next)."""
    generator = torch.Generator(device=images.device).manual_seed(seed)
    n = images.shape[0]
    indices = torch.randint(background_size, (n, samples), generator=generator, device=images.device)
    alphas = torch.rand((n, samples), generator=generator, device=images.device, dtype=images.dtype)
    return indices, alphas, generator


def expected_gradients(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None = None,
    background: Tensor | None = None,
    samples: int = 16,
    stdevs: float = 0.0,
    seed: int = 0,
    layer: str | None = None,
    chunk_size: int | None = None,
    output_transform: OutputTransform | None = None,
) -> Tensor:
    """Expected gradients (GradientSHAP): the average of ``(x - b) * grad F_t(b + a (x - b))`` over ``S`` draws.

    For each image and sample ``s``: a baseline ``b_s`` drawn uniformly from ``background``, a path coefficient
    ``a_s ~ U(0, 1)`` and, if ``stdevs > 0``, Gaussian input noise ``x_s = x + N(0, stdevs^2)`` (else ``x_s = x``);
    then ``EG(x) = 1/S * sum_s (x_s - b_s) * dF_t/dx (b_s + a_s (x_s - b_s))``. In expectation
    ``sum_j EG(x)_j = F_t(x) - E_b F_t(b)`` (for ``stdevs = 0``). This is Captum's ``GradientShap`` (same formula and
    noise convention; Captum draws its random numbers from the global NumPy/torch RNGs, this function from a private
    generator, see :func:`expected_gradients_samples`).

    With ``layer="name"`` the attribution is to that layer's output ``A`` (Captum's ``LayerGradientShap``):
    ``1/S * sum_s (A(x_s) - A(b_s)) * dF_t/dA`` evaluated at the input ``b_s + a_s (x_s - b_s)``, of the layer's
    output shape.

    Args:
        model: a classifier (a ``torch.compile`` wrapper is looked through).
        images: ``[N,C,H,W]``.
        targets: ``[N]`` class indices; ``None`` explains the predicted class.
        background: ``[B,C,H,W]`` baseline images to draw from; ``None`` uses the batch ``images`` itself as the
            background distribution (each image can then also be drawn as its own baseline, which contributes 0).
        samples: draws per image ``S >= 1``.
        stdevs: standard deviation of the Gaussian noise added to the input (absolute, in input units, as Captum);
            ``0`` for none.
        seed: seed of the private generator.
        layer: a layer name to attribute to its output instead of the input.
        chunk_size: samples per forward/backward pass; ``None`` picks one from a memory budget
            (on CPU tuned on the first run, see ``TunedChunks``).
        output_transform: selects ``[N,K]`` scores from the model output.

    Returns:
        ``[N,C,H,W]`` (or ``[N, *layer_output_shape]`` with ``layer``) on the input's device.
    """
    images = batching.check_images(images)
    samples = batching.check_count("samples", samples)
    background = check_background(images if background is None else background, images)
    if isinstance(stdevs, bool) or not isinstance(stdevs, (int, float)) or not math.isfinite(stdevs) or stdevs < 0:
        raise ValueError(f"stdevs must be a finite number >= 0, got {stdevs!r}")
    batching.check_chunk_size(chunk_size)
    net = unwrap_compiled(model)
    with probe_context(net):
        x = images.detach().clone()
        indices, alphas, generator = expected_gradients_samples(x, background.shape[0], samples, seed)
        noise = None
        if stdevs > 0:
            # continues the same private stream, after the indices and alphas
            noise = batching.GaussianNoise(x, samples, float(stdevs), generator)
        return _expected_gradients_given(
            net, x, targets, background, indices, alphas, noise, layer, chunk_size, output_transform
        )


def _expected_gradients_given(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None,
    background: Tensor,
    indices: Tensor,
    alphas: Tensor,
    noise: Tensor | Callable[[int, int], Tensor] | None = None,
    layer: str | None = None,
    chunk_size: int | None = None,
    output_transform: OutputTransform | None = None,
) -> Tensor:
    """Expected gradients for explicit draws.

    Args:
        background: ``[B,C,H,W]``.
        indices: ``[N,S]`` background index of each sample.
        alphas: ``[N,S]`` path coefficient of each sample.
        noise: ``None``, or the input noise as ``[N,S,C,H,W]`` / ``[N*S,C,H,W]`` (image-major) or a callable
            ``(start, stop) -> [stop-start,C,H,W]`` over the flat samples.

    The other arguments are those of :func:`expected_gradients`.
    """
    images = batching.check_images(images)
    background = check_background(background, images)
    n = images.shape[0]
    if indices.shape != alphas.shape or indices.dim() != 2 or indices.shape[0] != n:
        raise ValueError(
            f"indices and alphas must both have shape [N={n}, S], got {tuple(indices.shape)} and {tuple(alphas.shape)}"
        )
    samples = batching.check_count("samples", indices.shape[1])
    net = unwrap_compiled(model)
    layers = None
    if layer is not None:
        if not isinstance(layer, str):
            raise ValueError(f"layer must be a layer name (str) or None, got {layer!r}")
        layers = resolve_layers(net, [layer])
    with probe_context(net):
        x = images.detach().clone()
        bg = background.detach().to(device=x.device, dtype=x.dtype)
        flat_indices = indices.reshape(-1).to(x.device)
        flat_alphas = alphas.reshape(-1).to(device=x.device, dtype=x.dtype)
        draw = None if noise is None else batching.flat_noise_source(noise, x, samples)
        clean = forward_backward(
            net, x, targets, gradients=False, input_gradient=False, output_transform=output_transform
        )
        t = clean.targets["target"]
        chunk = chunk_size or batching.auto_chunks(net, x, samples, f"expected_gradients/{layer}")

        def attribution(start: int, stop: int) -> Tensor:
            owner, _ = batching.copy_owners(start, stop, samples, x.device)
            inputs = x[owner] if draw is None else x[owner] + draw(start, stop)
            baselines = bg[flat_indices[start:stop]]
            a = flat_alphas[start:stop].view(-1, 1, 1, 1)
            points = a * inputs + (1 - a) * baselines
            if layers is None:
                grads = forward_backward(
                    net, points, t[owner], gradients=False, input_gradient=True, output_transform=output_transform
                ).input_gradients["target"]
                return (inputs - baselines) * grads
            (name,) = layers
            grads = forward_backward(
                net, points, t[owner], layers, gradients=True, input_gradient=False, output_transform=output_transform
            ).gradients["target"][name]
            acts = forward_backward(
                net,
                torch.cat([inputs, baselines]),
                None,
                layers,
                gradients=False,
                input_gradient=False,
                output_transform=output_transform,
            ).activations[name]
            at_inputs, at_baselines = acts.split(stop - start)
            return (at_inputs - at_baselines) * grads

        return batching.sum_over_copies(attribution, n, samples, chunk) / samples
