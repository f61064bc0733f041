"""Explanation methods over tensors and modules (torch only: no Lightning, no matplotlib, no TensorBoard)."""

from probelens.methods.activations import feature_maps
from probelens.methods.cam import CAM_METHODS, cam, cam_map, cams_from_pass, score_cam_map
from probelens.methods.engine import ProbePass, class_scores, default_output_transform, forward_backward
from probelens.methods.expected_gradients import expected_gradients
from probelens.methods.feature_vis import feature_visualization
from probelens.methods.filters import conv_filters
from probelens.methods.grad_cam import grad_cam, grad_cam_from_pass, grad_cam_map
from probelens.methods.guided import deconv_projections, guided_saliency, relu_backward_rule
from probelens.methods.integrated_gradients import integrated_gradients
from probelens.methods.layers import auto_layers, conv_layers, resolve_layers
from probelens.methods.occlusion import occlusion
from probelens.methods.saliency import saliency, saliency_from_pass
from probelens.methods.smoothgrad import smoothgrad, smoothgrad_noise
from probelens.methods.summary import layer_summary, summary_markdown
from probelens.methods.tcav import concept_activation_vector, directional_derivatives, tcav

__all__ = [
    "CAM_METHODS",
    "ProbePass",
    "auto_layers",
    "cam",
    "cam_map",
    "cams_from_pass",
    "class_scores",
    "concept_activation_vector",
    "conv_filters",
    "conv_layers",
    "deconv_projections",
    "default_output_transform",
    "directional_derivatives",
    "expected_gradients",
    "feature_maps",
    "feature_visualization",
    "forward_backward",
    "grad_cam",
    "grad_cam_from_pass",
    "grad_cam_map",
    "guided_saliency",
    "integrated_gradients",
    "layer_summary",
    "occlusion",
    "relu_backward_rule",
    "resolve_layers",
    "saliency",
    "saliency_from_pass",
    "score_cam_map",
    "smoothgrad",
    "smoothgrad_noise",
    "summary_markdown",
    "tcav",
]
