"""Convolution filters (weights) for display."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from probelens.methods.layers import LayerSpec, is_conv2d, resolve_layers


def conv_filters(model: nn.Module, layers: LayerSpec | Mapping[str, nn.Module] = "all") -> dict[str, Tensor]:
    """Weights of 2-D convolutions, detached copies ``{name: [O, I/groups, kh, kw]}`` in float32 on the CPU.

    Raises:
        ValueError: a selected layer is not a 2-D convolution.
    """
    named = dict(layers) if isinstance(layers, Mapping) else resolve_layers(model, layers)
    out: dict[str, Tensor] = {}
    for name, module in named.items():
        if not is_conv2d(module):
            raise ValueError(
                f"layer {name!r} is a {type(module).__name__}, not a 2-D convolution; conv_filters needs conv layers"
            )
        weight = module.weight
        assert isinstance(weight, Tensor)
        out[name] = weight.detach().float().cpu().clone()
    return out
