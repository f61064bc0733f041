"""Integrated gradients (Sundararajan et al., 2017, "Axiomatic Attribution for Deep Networks").

``IG(x)_j = (x_j - b_j) * integral_0^1 dF_t(b + a (x - b)) / dx_j da``, approximated by a quadrature rule
``sum_k w_k * grad F_t(b + a_k (x - b))``. The path points of all images are stacked into the batch dimension and sent
through the network in chunks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from probelens.methods import batching
from probelens.methods.engine import OutputTransform, forward_backward
from probelens.methods.hooks import probe_context
from probelens.methods.layers import unwrap_compiled

METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right")


def path_points(method: str, steps: int) -> tuple[Tensor, Tensor]:
    """Interpolation coefficients ``a_k`` in ``[0, 1]`` and quadrature weights ``w_k`` (``float64``, ``[steps]``).

    - ``"gausslegendre"``: Gauss-Legendre nodes and weights mapped to ``[0, 1]`` (Captum's default; exact for
      polynomials of degree ``2 * steps - 1``);
    - ``"riemann_left"`` / ``"riemann_right"`` / ``"riemann_middle"``: ``a_k = k/n``, ``(k+1)/n``, ``(k+1/2)/n``,
      ``w_k = 1/n`` (as Captum);
    - ``"riemann_trapezoid"``: ``a_k = k/(n-1)`` (both ends included), ``w_k = 1/(n-1)`` halved at both ends, so the
      weights sum to 1. Captum uses ``w_k = 1/n`` (halved at the ends) with the same points; its weights sum to
      ``(n-1)/n`` and its result is ours times ``(n-1)/n``.

    The weights of every rule sum to 1, so a constant gradient integrates exactly (completeness).
    """
    if method not in METHODS:
        raise ValueError(f"unknown integration method {method!r}; valid: {', '.join(METHODS)}")
    minimum = 2 if method == "riemann_trapezoid" else 1
    n = batching.check_count("steps", steps, minimum)
    k = torch.arange(n, dtype=torch.float64)
    if method == "gausslegendre":
        nodes, node_weights = np.polynomial.legendre.leggauss(n)  # on [-1, 1]: mapped to [0, 1]
        return torch.from_numpy((1 + nodes) / 2), torch.from_numpy(node_weights / 2)
    if method == "riemann_trapezoid":
        weights = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
        weights[0] /= 2
        weights[-1] /= 2
        return k / (n - 1), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return (k + offset) / n, torch.full((n,), 1 / n, dtype=torch.float64)


def broadcast_baseline(baseline: Tensor | float | None, images: Tensor, name: str = "baseline") -> Tensor:
    """``None`` -> zeros, a number -> that constant, a tensor broadcastable to ``images.shape`` -> itself; returned
    broadcast to ``images.shape`` (a view) on the images' device and dtype."""
    if baseline is None:
        baseline = 0.0
    if isinstance(baseline, bool):
        raise ValueError(f"{name} must be None, a number or a tensor broadcastable to {tuple(images.shape)}, got bool")
    if isinstance(baseline, (int, float)):
        return torch.full((1, 1, 1, 1), float(baseline), dtype=images.dtype, device=images.device).expand(images.shape)
    if not isinstance(baseline, Tensor):
        raise ValueError(
            f"{name} must be None, a number or a tensor broadcastable to {tuple(images.shape)}, got "
            f"{type(baseline).__name__}"
        )
    try:
        shape = torch.broadcast_shapes(baseline.shape, images.shape)
    except RuntimeError:
        shape = None
    if shape != images.shape:
        raise ValueError(
            f"{name} of shape {tuple(baseline.shape)} is not broadcastable to the images' shape {tuple(images.shape)}"
        )
    return baseline.detach().to(device=images.device, dtype=images.dtype).expand(images.shape)


def integrated_gradients(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None = None,
    baseline: Tensor | float | None = None,
    steps: int = 32,
    method: str = "gausslegendre",
    chunk_size: int | None = None,
    output_transform: OutputTransform | None = None,
    return_convergence_delta: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Integrated gradients along the straight path from a baseline ``b`` to the image ``x``.

    ``IG(x) = (x - b) * sum_k w_k * dF_t/dx (b + a_k (x - b))`` with the rule of :func:`path_points`; as the number
    of steps grows it satisfies completeness, ``sum_j IG(x)_j -> F_t(x) - F_t(b)``. Equal to Captum's
    ``IntegratedGradients(model).attribute(x, baselines=b, target=t, n_steps=steps, method=method)`` for every rule
    except ``"riemann_trapezoid"``, where Captum's weights sum to ``(n-1)/n`` (see :func:`path_points`).

    Args:
        model: a classifier (a ``torch.compile`` wrapper is looked through).
        images: ``[N,C,H,W]``.
        targets: ``[N]`` class indices; ``None`` explains the predicted class.
        baseline: ``None`` (all zeros), a number, or a tensor broadcastable to ``[N,C,H,W]`` (e.g. ``[1,C,1,1]``).
        steps: number of path points ``>= 1`` (``>= 2`` for ``"riemann_trapezoid"``).
        method: ``"gausslegendre"`` (default, as Captum), ``"riemann_trapezoid"``, ``"riemann_middle"``,
            ``"riemann_left"`` or ``"riemann_right"``.
        chunk_size: path points per forward/backward pass; ``None`` picks one from a memory budget
            (on CPU tuned on the first run, see ``TunedChunks``).
        output_transform: selects ``[N,K]`` scores from the model output.
        return_convergence_delta: also return ``delta = sum_j IG_j - (F_t(x) - F_t(b))`` per image ``[N]`` (Captum's
            sign convention); costs one more forward pass over the baselines.

    Returns:
        ``[N,C,H,W]`` on the input's device, or ``(attributions, delta)``.
    """
    images = batching.check_images(images)
    alphas64, weights64 = path_points(method, steps)
    chunk_size = batching.check_chunk_size(chunk_size)
    net = unwrap_compiled(model)
    with probe_context(net):
        x = images.detach().clone()
        base = broadcast_baseline(baseline, x)
        diff = x - base
        clean = forward_backward(
            net, x, targets, gradients=False, input_gradient=False, output_transform=output_transform
        )
        t = clean.targets["target"]
        alphas = alphas64.to(device=x.device, dtype=x.dtype)
        weights = weights64.to(device=x.device, dtype=x.dtype)
        chunk = chunk_size or batching.auto_chunks(net, x, steps, "integrated_gradients")

        def weighted_gradients(start: int, stop: int) -> Tensor:
            owner, step = batching.copy_owners(start, stop, steps, x.device)
            points = base[owner] + alphas[step].view(-1, 1, 1, 1) * diff[owner]
            grads = forward_backward(
                net, points, t[owner], gradients=False, input_gradient=True, output_transform=output_transform
            ).input_gradients["target"]
            return grads * weights[step].view(-1, 1, 1, 1)

        attributions = batching.sum_over_copies(weighted_gradients, x.shape[0], steps, chunk) * diff
        if not return_convergence_delta:
            return attributions
        at_baseline = forward_backward(
            net, base.contiguous(), t, gradients=False, input_gradient=False, output_transform=output_transform
        )
        end = clean.logits.gather(1, t[:, None]).squeeze(1)
        start = at_baseline.logits.gather(1, t[:, None]).squeeze(1)
        delta = attributions.flatten(1).sum(dim=1) - (end - start)
        return attributions, delta
