"""Grad-CAM (Selvaraju et al., 2017) at any number of layers from one forward/backward pass."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probelens.methods.engine import OutputTransform, ProbePass, forward_backward
from probelens.methods.layers import LayerSpec, resolve_layers
from probelens.methods.layout import Layout, ReshapeSpec, as_maps, layouts_for


def grad_cam_map(activation: Tensor, gradient: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """Grad-CAM from a layer's activation ``A`` and the gradient ``dY/dA`` of the target score.

    ``alpha_k = mean_{ij} dY/dA_k[i,j]`` and ``L = ReLU(sum_k alpha_k A_k)``, bilinearly upsampled to ``size``
    (``align_corners=False``, as Captum's ``LayerAttribution.interpolate``).

    Args:
        activation: ``[N,C,h,w]``.
        gradient: ``[N,C,h,w]``.
        size: output ``(H, W)``; ``None`` keeps the layer resolution.

    Returns:
        Raw (un-normalised) map ``[N,1,H,W]`` in float32.
    """
    if activation.dim() != 4:
        raise ValueError(f"Grad-CAM needs a spatial feature map [N,C,h,w], got shape {tuple(activation.shape)}")
    act = activation.float()
    weights = gradient.float().mean(dim=(2, 3))
    # the weighted channel sum without materialising weights * act (as large as the activation itself)
    cam = F.relu(torch.einsum("nc,nchw->nhw", weights, act)[:, None])
    if size is not None and tuple(cam.shape[-2:]) != tuple(size):
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return cam


def grad_cam_from_pass(
    result: ProbePass,
    target_set: str,
    layers: list[str] | None = None,
    layouts: Mapping[str, Layout] | None = None,
) -> dict[str, Tensor]:
    """Grad-CAM maps ``{layer: [N,1,H,W]}`` for one target set of an existing :class:`ProbePass` (``layouts``: how
    to view each layer's output as ``[N,C,h,w]``, see :mod:`probelens.methods.layout`)."""
    size = (result.images.shape[-2], result.images.shape[-1])
    names = layers if layers is not None else list(result.gradients[target_set])
    acts = as_maps({name: result.activations[name] for name in names}, layouts)
    grads = as_maps({name: result.gradients[target_set][name] for name in names}, layouts)
    return {name: grad_cam_map(acts[name], grads[name], size) for name in names}


def grad_cam(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None = None,
    layers: LayerSpec | Mapping[str, nn.Module] = "auto",
    *,
    upsample: bool = True,
    output_transform: OutputTransform | None = None,
    reshape: ReshapeSpec = None,
) -> dict[str, Tensor]:
    """Grad-CAM at every requested layer from one forward and one backward pass.

    Works on any layer whose output is a map: NCHW, channels-last (ConvNeXt blocks, Swin stages) or tokens on a grid
    (ViT/DeiT, class/register/distillation tokens dropped), recognised from the forward pass
    (:mod:`probelens.methods.layout`); an output that is none of these, or ambiguous, raises a ``ValueError`` that
    shows ``reshape=``.

    Args:
        model: a CNN classifier.
        images: ``[N,C,H,W]``.
        targets: ``[N]`` class indices; ``None`` explains the predicted class.
        layers: ``"auto"``, ``"all"``, a name, a list of names/types, or a ``{name: module}`` mapping.
        upsample: upsample to the input size (bilinear); otherwise keep each layer's resolution.
        output_transform: selects ``[N,K]`` scores from the model output.
        reshape: a function from a layer's raw output to ``[N,C,h,w]`` (used for every layer whose output is not
            NCHW, like pytorch-grad-cam's ``reshape_transform``), or ``{layer: function}``.

    Returns:
        ``{layer_name: Tensor[N,1,H,W]}``, raw ReLU'd maps (not normalised).

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        ...                           torch.nn.Flatten(), torch.nn.Linear(4, 2))
        >>> maps = grad_cam(net, torch.rand(2, 3, 8, 8), layers="all")
        >>> {k: tuple(v.shape) for k, v in maps.items()}
        {'0': (2, 1, 8, 8)}
    """
    named = dict(layers) if isinstance(layers, Mapping) else resolve_layers(model, layers, example_input=images)
    result = forward_backward(
        model, images, targets, named, gradients=True, input_gradient=False, output_transform=output_transform
    )
    size = (images.shape[-2], images.shape[-1]) if upsample else None
    layouts = layouts_for(model, images, named, reshape, outputs=result.activations)
    acts = as_maps(result.activations, layouts)
    grads = as_maps(result.gradients["target"], layouts)
    return {name: grad_cam_map(acts[name], grads[name], size) for name in named}


__all__ = ["grad_cam", "grad_cam_from_pass", "grad_cam_map"]
