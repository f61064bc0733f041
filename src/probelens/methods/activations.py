"""Feature maps (layer activations) of a probe batch."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from probelens.methods.engine import OutputTransform, forward_backward
from probelens.methods.layers import LayerSpec, resolve_layers


def feature_maps(
    model: nn.Module,
    images: Tensor,
    layers: LayerSpec | Mapping[str, nn.Module] = "auto",
    *,
    output_transform: OutputTransform | None = None,
) -> dict[str, Tensor]:
    """Outputs of the requested layers for ``images`` (eval mode, no gradients; as Captum ``LayerActivation``).

    Returns:
        ``{layer_name: Tensor}`` with each layer's output shape, e.g. ``[N,C_l,h_l,w_l]`` for a conv layer.
    """
    named = dict(layers) if isinstance(layers, Mapping) else resolve_layers(model, layers, example_input=images)
    result = forward_backward(
        model, images, None, named, gradients=False, input_gradient=False, output_transform=output_transform
    )
    return {name: result.activations[name] for name in named}
