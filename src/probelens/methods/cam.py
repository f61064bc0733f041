"""The CAM family at any number of layers: the gradient variants from one shared forward/backward pass, Score-CAM
from batched forward passes.

Every variant maps a layer's activation ``A`` (``[N,C,h,w]``) and, where it needs one, the gradient ``G = dY/dA`` of
the target score ``Y`` (the class logit) to a raw map ``ReLU(...)`` ``[N,1,h,w]``, bilinearly upsampled to the input
size like :func:`probelens.methods.grad_cam`. ``Y`` is the score before softmax, as in the papers and in
pytorch-grad-cam and torchcam. The formulas, with sums over the channels ``k`` and the positions ``(i, j)``:

============== =========================================================================== =====================
method         map                                                                         paper
============== =========================================================================== =====================
gradcam        ``ReLU(sum_k w_k A_k)``, ``w_k = mean_ij G_k``                               Selvaraju et al. 2017
gradcam++      ``w_k = sum_ij a_kij ReLU(G_kij)``,                                          Chattopadhyay et al.
               ``a_kij = G_kij^2 / (2 G_kij^2 + sum_ab A_kab G_kij^3)`` (0 where G = 0)     2018, eq. 19
               ``= 1 / (2 + G_kij sum_ab A_kab)``, computed in that exact form
xgradcam       ``w_k = sum_ij G_kij A_kij / sum_ij A_kij``                                  Fu et al. 2020
layercam       ``ReLU(sum_k ReLU(G_k) * A_k)`` (element-wise weights)                       Jiang et al. 2021
hirescam       ``ReLU(sum_k G_k * A_k)`` (element-wise, signed)                             Draelos & Carin 2020
eigencam       ``ReLU`` of the projection of the centred ``[hw, C]`` activations on their  Muhammad & Yeasin
               first right singular vector                                                  2020
eigengradcam   the same for ``G * A``                                                       (pytorch-grad-cam)
scorecam       ``w = softmax_k Y(x * H_k)``, ``H_k`` = ``A_k`` upsampled, min-max scaled    Wang et al. 2020
============== =========================================================================== =====================

Grad-CAM++ and Score-CAM depend on the scale of the score (the others only through a positive factor): for a
single-logit binary head, whose scores probelens reads as ``(-z/2, z/2)`` (:func:`probelens.methods.class_scores`),
their maps are those of ``±z/2``, where pytorch-grad-cam's ``BinaryClassifierOutputTarget`` uses ``±z``.

The sign of a singular vector is arbitrary; the Eigen variants orient it so that the projection correlates
positively with the channel sum of the (centred) matrix, so a map does not flip between log steps by numerical
accident (pytorch-grad-cam keeps whatever sign the SVD returns). Score-CAM's masks are upsampled with
``align_corners=False``, as every other map here (pytorch-grad-cam uses ``align_corners=True``; torchcam scales
before upsampling).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probelens.methods import batching
from probelens.methods.engine import OutputTransform, ProbePass, forward_backward
from probelens.methods.hooks import probe_context
from probelens.methods.layers import LayerSpec, resolve_layers, unwrap_compiled
from probelens.methods.layout import Layout, ReshapeSpec, as_maps, layouts_for

GRADIENT_CAMS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigengradcam")
"""Variants computed from the activations and gradients of the shared pass (no pass of their own)."""
ACTIVATION_CAMS = ("eigencam",)
"""Variants computed from the activations alone (also read off the shared pass)."""
FORWARD_CAMS = ("scorecam",)
"""Variants that run forward passes of their own (batched and chunked to the memory budget)."""
CAM_METHODS = (*GRADIENT_CAMS, *ACTIVATION_CAMS, *FORWARD_CAMS)

_EPS = 1e-7


def _check_method(method: str) -> str:
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; valid: {', '.join(CAM_METHODS)}")
    return method


def _first_component(matrix: Tensor) -> Tensor:
    """``[N, P, C]`` -> ``[N, P]``: the centred rows projected on the first right singular vector, oriented so that
    the projection correlates positively with the rows' sums."""
    # NaN/Inf (a diverging model) become 0 first, as pytorch-grad-cam does: one bad image must not stop the SVD
    matrix = torch.nan_to_num(matrix, nan=0.0, posinf=0.0, neginf=0.0)
    centred = matrix - matrix.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = centred @ vh[:, 0, :, None]  # [N, P, 1]
    projection = projection.squeeze(-1)
    orientation = (projection * centred.sum(dim=2)).sum(dim=1, keepdim=True)
    return projection * torch.where(orientation < 0, -1.0, 1.0)


def cam_map(
    activation: Tensor,
    gradient: Tensor | None,
    method: str = "gradcam",
    size: tuple[int, int] | None = None,
) -> Tensor:
    """One CAM variant (not Score-CAM) from a layer's activation ``A`` and the gradient ``G = dY/dA``.

    Args:
        activation: ``[N,C,h,w]``.
        gradient: ``[N,C,h,w]``; unused (may be ``None``) for ``"eigencam"``.
        method: one of :data:`GRADIENT_CAMS` or :data:`ACTIVATION_CAMS` (formulas in the module docstring).
        size: output ``(H, W)`` (bilinear, ``align_corners=False``); ``None`` keeps the layer resolution.

    Returns:
        Raw (un-normalised, ReLU'd) map ``[N,1,H,W]`` in float32.
    """
    _check_method(method)
    if method in FORWARD_CAMS:
        raise ValueError(f"{method!r} needs forward passes of its own: call cam(model, images, method={method!r})")
    if activation.dim() != 4:
        raise ValueError(f"{method} needs a spatial feature map [N,C,h,w], got shape {tuple(activation.shape)}")
    a = activation.float()
    if method == "eigencam":
        n, _, h, w = a.shape
        raw = _first_component(a.flatten(2).transpose(1, 2)).view(n, 1, h, w)
    else:
        if gradient is None:
            raise ValueError(f"{method} needs the gradient of the target score with respect to the activation")
        g = gradient.float()
        if method == "gradcam":
            raw = (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True)
        elif method == "gradcam++":
            # g^2 / (2 g^2 + S g^3) = 1 / (2 + S g) where g != 0: exact, with no additive epsilon (whose weight
            # would depend on the scale of the logits)
            denominator = 2 + a.sum(dim=(2, 3), keepdim=True) * g
            usable = (g != 0) & (denominator != 0)
            alpha = torch.where(usable, 1 / torch.where(usable, denominator, torch.ones_like(g)), torch.zeros_like(g))
            weights = (alpha * F.relu(g)).sum(dim=(2, 3), keepdim=True)
            raw = (weights * a).sum(dim=1, keepdim=True)
        elif method == "xgradcam":
            weights = (g * a).sum(dim=(2, 3), keepdim=True) / (a.sum(dim=(2, 3), keepdim=True) + _EPS)
            raw = (weights * a).sum(dim=1, keepdim=True)
        elif method == "layercam":
            raw = (F.relu(g) * a).sum(dim=1, keepdim=True)
        elif method == "hirescam":
            raw = (g * a).sum(dim=1, keepdim=True)
        else:  # eigengradcam
            n, _, h, w = a.shape
            raw = _first_component((g * a).flatten(2).transpose(1, 2)).view(n, 1, h, w)
    cam = F.relu(raw)
    if size is not None and tuple(cam.shape[-2:]) != tuple(size):
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return cam


def cams_from_pass(
    result: ProbePass,
    target_set: str,
    method: str,
    layers: list[str] | None = None,
    layouts: Mapping[str, Layout] | None = None,
) -> dict[str, Tensor]:
    """``{layer: [N,1,H,W]}`` of one gradient or activation variant, read off an existing :class:`ProbePass`
    (``layouts``: how to view each layer's output as ``[N,C,h,w]``, see :mod:`probelens.methods.layout`)."""
    size = (result.images.shape[-2], result.images.shape[-1])
    names = layers if layers is not None else list(result.activations)
    acts = as_maps({name: result.activations[name] for name in names}, layouts)
    grads = as_maps({k: v for k, v in result.gradients.get(target_set, {}).items() if k in acts}, layouts)
    return {name: cam_map(acts[name], grads.get(name), method, size) for name in names}


def score_cam_map(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    activation: Tensor,
    *,
    chunk_size: int | None = None,
    output_transform: OutputTransform | None = None,
    upsample: bool = True,
) -> Tensor:
    """Score-CAM (Wang et al., 2020) of one layer whose activation ``activation`` (``[N,C,h,w]``) is known.

    ``H_k = s(Up(A_k))`` (bilinear to the input size, then min-max scaled to ``[0, 1]`` per image and channel),
    ``w = softmax_k Y_t(x * H_k)`` (``Y_t`` the target logit) and ``L = ReLU(sum_k w_k A_k)``. The ``N * C``
    masked copies go through the network in chunks sized to the memory budget (``chunk_size`` to override), built
    lazily, like occlusion's.

    Returns:
        ``[N,1,H,W]`` (``[N,1,h,w]`` with ``upsample=False``).
    """
    net = unwrap_compiled(model)
    n, c = activation.shape[:2]
    size = (images.shape[-2], images.shape[-1])
    act = activation.detach().to(images.dtype)
    with probe_context(net), torch.no_grad():
        x = images.detach().clone()
        chunk = chunk_size or batching.auto_chunks(net, x, c, "scorecam", backward=False)

        def masked_scores(start: int, stop: int) -> Tensor:
            owner, k = batching.copy_owners(start, stop, c, x.device)
            masks = F.interpolate(act[owner, k][:, None], size=size, mode="bilinear", align_corners=False)
            low = masks.amin(dim=(2, 3), keepdim=True)
            high = masks.amax(dim=(2, 3), keepdim=True)
            masks = (masks - low) / (high - low + 1e-8)
            logits = forward_backward(
                net, x[owner] * masks, targets[owner], gradients=False, input_gradient=False,
                output_transform=output_transform,
            ).logits  # fmt: skip
            return logits.gather(1, targets[owner][:, None]).squeeze(1)

        scores = batching.map_chunks(masked_scores, n * c, chunk).view(n, c)
    weights = scores.float().softmax(dim=1)[:, :, None, None]
    cam = F.relu((weights * act.float()).sum(dim=1, keepdim=True))
    if upsample and tuple(cam.shape[-2:]) != size:
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    return cam


def cam(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | None = None,
    layers: LayerSpec | Mapping[str, nn.Module] = "auto",
    method: str = "gradcam",
    *,
    upsample: bool = True,
    chunk_size: int | None = None,
    output_transform: OutputTransform | None = None,
    reshape: ReshapeSpec = None,
) -> dict[str, Tensor]:
    """A CAM variant at every requested layer.

    The gradient and activation variants (:data:`GRADIENT_CAMS`, :data:`ACTIVATION_CAMS`) come from one forward and
    one backward pass for all layers (``"eigencam"``: the forward alone); ``"scorecam"`` adds ``C_l`` masked forward
    passes per image and layer, batched and chunked to the memory budget. Formulas and papers: see the module
    docstring.

    Args:
        model: a CNN classifier.
        images: ``[N,C,H,W]``.
        targets: ``[N]`` class indices; ``None`` explains the predicted class.
        layers: ``"auto"``, ``"all"``, a name, a list of names/types, or a ``{name: module}`` mapping.
        method: one of :data:`CAM_METHODS`.
        upsample: upsample to the input size (bilinear); otherwise keep each layer's resolution.
        chunk_size: Score-CAM's masked copies per forward pass (default: from the memory budget).
        output_transform: selects ``[N,K]`` scores from the model output.
        reshape: how to view a layer's output as ``[N,C,h,w]`` where it is not NCHW, channels-last or tokens on
            a grid (those are recognised, see :mod:`probelens.methods.layout`): a function used for every such
            layer, or ``{layer: function}``.

    Returns:
        ``{layer_name: Tensor[N,1,H,W]}``, raw ReLU'd maps (not normalised).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 4, 3), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> for method in ("gradcam++", "scorecam"):
        ...     maps = cam(net, torch.rand(2, 3, 12, 12), layers="all", method=method, upsample=False)
        ...     print(method, {k: tuple(v.shape) for k, v in maps.items()})
        gradcam++ {'0': (2, 1, 10, 10), '3': (2, 1, 3, 3)}
        scorecam {'0': (2, 1, 10, 10), '3': (2, 1, 3, 3)}
    """
    _check_method(method)
    batching.check_images(images)
    named = dict(layers) if isinstance(layers, Mapping) else resolve_layers(model, layers, example_input=images)
    needs_gradients = method in GRADIENT_CAMS
    result = forward_backward(
        model,
        images,
        targets,
        named,
        gradients=needs_gradients,
        input_gradient=False,
        output_transform=output_transform,
    )
    size = (images.shape[-2], images.shape[-1]) if upsample else None
    layouts = layouts_for(model, images, named, reshape, outputs=result.activations)
    acts = as_maps(result.activations, layouts)
    if method in FORWARD_CAMS:
        t = result.targets["target"]
        return {
            name: score_cam_map(
                model, images, t, acts[name], chunk_size=chunk_size,
                output_transform=output_transform, upsample=upsample,
            )
            for name in named
        }  # fmt: skip
    grads = as_maps(result.gradients.get("target", {}), layouts)
    return {name: cam_map(acts[name], grads.get(name), method, size) for name in named}


__all__ = [
    "ACTIVATION_CAMS",
    "CAM_METHODS",
    "FORWARD_CAMS",
    "GRADIENT_CAMS",
    "cam",
    "cam_map",
    "cams_from_pass",
    "score_cam_map",
]
