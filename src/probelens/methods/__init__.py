"""Explanation methods over tensors and modules (torch only: no Lightning, no matplotlib, no TensorBoard)."""

from probelens.methods.activations import feature_maps
from probelens.methods.engine import ProbePass, default_output_transform, forward_backward
from probelens.methods.filters import conv_filters
from probelens.methods.grad_cam import grad_cam, grad_cam_from_pass, grad_cam_map
from probelens.methods.layers import auto_layers, conv_layers, resolve_layers
from probelens.methods.saliency import saliency, saliency_from_pass

__all__ = [
    "ProbePass",
    "auto_layers",
    "conv_filters",
    "conv_layers",
    "default_output_transform",
    "feature_maps",
    "forward_backward",
    "grad_cam",
    "grad_cam_from_pass",
    "grad_cam_map",
    "resolve_layers",
    "saliency",
    "saliency_from_pass",
]
