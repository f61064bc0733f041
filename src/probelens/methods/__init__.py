"""Explanation methods over tensors and modules (torch only: no Lightning, no matplotlib, no TensorBoard)."""

from probelens.methods.activations import feature_maps
from probelens.methods.engine import ProbePass, default_output_transform, forward_backward
from probelens.methods.expected_gradients import expected_gradients
from probelens.methods.filters import conv_filters
from probelens.methods.grad_cam import grad_cam, grad_cam_from_pass, grad_cam_map
from probelens.methods.integrated_gradients import integrated_gradients
from probelens.methods.layers import auto_layers, conv_layers, resolve_layers
from probelens.methods.occlusion import occlusion
from probelens.methods.saliency import saliency, saliency_from_pass
from probelens.methods.smoothgrad import smoothgrad, smoothgrad_noise

__all__ = [
    "ProbePass",
    "auto_layers",
    "conv_filters",
    "conv_layers",
    "default_output_transform",
    "expected_gradients",
    "feature_maps",
    "forward_backward",
    "grad_cam",
    "grad_cam_from_pass",
    "grad_cam_map",
    "integrated_gradients",
    "occlusion",
    "resolve_layers",
    "saliency",
    "saliency_from_pass",
    "smoothgrad",
    "smoothgrad_noise",
]
