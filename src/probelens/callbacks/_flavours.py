"""Build the Lightning-facing monitor classes from the framework-free cores.

``pytorch_lightning.Callback`` and ``lightning.pytorch.Callback`` are unrelated classes: a Trainer of one namespace
duck-types a callback of the other, but ``LightningCLI`` checks ``isinstance``. Each namespace module therefore gets
its own subclasses, ``class GradCAMMonitor(core.GradCAMMonitor, Callback)``, with the core's signature, docstring and
behaviour. The classes live at module level of that namespace module, so they pickle (``ddp_spawn``).
"""

from __future__ import annotations

from probelens.callbacks.activations import ActivationMonitor
from probelens.callbacks.base import ProbeMonitor
from probelens.callbacks.deconv import DeconvMonitor
from probelens.callbacks.feature_vis import FeatureVisMonitor
from probelens.callbacks.filters import FilterMonitor
from probelens.callbacks.grad_cam import GradCAMMonitor
from probelens.callbacks.occlusion import OcclusionMonitor
from probelens.callbacks.saliency import SaliencyMonitor
from probelens.callbacks.shortcut import ShortcutMonitor

CORES: tuple[type[ProbeMonitor], ...] = (
    ActivationMonitor,
    DeconvMonitor,
    FeatureVisMonitor,
    FilterMonitor,
    GradCAMMonitor,
    OcclusionMonitor,
    ProbeMonitor,
    SaliencyMonitor,
    ShortcutMonitor,
)
MONITOR_NAMES = tuple(core.__name__ for core in CORES)


def make_monitors(callback_base: type, module: str) -> dict[str, type]:
    """``{name: subclass of (core, callback_base)}`` for every monitor, with ``__module__`` set to ``module``."""
    return {
        core.__name__: type(
            core.__name__,
            (core, callback_base),
            {"__module__": module, "__qualname__": core.__name__, "__doc__": core.__doc__},
        )
        for core in CORES
    }
