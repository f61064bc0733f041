"""Lightning callbacks (the only probelens package that imports Lightning)."""

from probelens.callbacks.activations import ActivationMonitor
from probelens.callbacks.base import ProbeMonitor
from probelens.callbacks.deconv import DeconvMonitor
from probelens.callbacks.feature_vis import FeatureVisMonitor
from probelens.callbacks.filters import FilterMonitor
from probelens.callbacks.grad_cam import GradCAMMonitor
from probelens.callbacks.occlusion import OcclusionMonitor
from probelens.callbacks.saliency import SaliencyMonitor
from probelens.callbacks.shortcut import ShortcutMonitor

__all__ = [
    "ActivationMonitor",
    "DeconvMonitor",
    "FeatureVisMonitor",
    "FilterMonitor",
    "GradCAMMonitor",
    "OcclusionMonitor",
    "ProbeMonitor",
    "SaliencyMonitor",
    "ShortcutMonitor",
]
