"""The framework-free monitor cores: everything a monitor does, with no Lightning import.

These classes are not callbacks. A Trainer is given their Lightning subclasses, in :mod:`probelens.callbacks` (the
installed namespace), :mod:`probelens.pl` (``pytorch_lightning``) or :mod:`probelens.lightning`
(``lightning.pytorch``); ``probelens.GradCAMMonitor`` etc. resolve to those. Subclass a core only to build a flavour
for another namespace; subclass ``probelens.ProbeMonitor`` to write a monitor of your own.

One concept per module: :mod:`~probelens.core.base` (options, hooks and the one firing path),
:mod:`~probelens.core.schedule` (when to fire, on which step), :mod:`~probelens.core.probe_source` (a probe set
from the trainer's data), :mod:`~probelens.core.writer` (tags, downscaling, captions, probe-image cells),
:mod:`~probelens.core.sinks` (one adapter per logger), :mod:`~probelens.core.run` (what belongs to one Trainer's
run), :mod:`~probelens.core.session` (the shared explanation pass of one model), :mod:`~probelens.core.checks`
(setup checks against the model), :mod:`~probelens.core.architecture` (the layer table),
:mod:`~probelens.core.sharded` (FSDP); one file per monitor. ``docs/architecture.md`` draws the layers.
"""

from probelens.core.activations import ActivationCore
from probelens.core.base import MonitorCore
from probelens.core.concept import ConceptCore
from probelens.core.deconv import DeconvCore
from probelens.core.discovery import StrategyCore
from probelens.core.feature_vis import FeatureVisCore
from probelens.core.filters import FilterCore
from probelens.core.grad_cam import GradCAMCore
from probelens.core.occlusion import OcclusionCore
from probelens.core.saliency import SaliencyCore
from probelens.core.shortcut import ShortcutCore

__all__ = [
    "ActivationCore",
    "ConceptCore",
    "DeconvCore",
    "FeatureVisCore",
    "FilterCore",
    "GradCAMCore",
    "MonitorCore",
    "OcclusionCore",
    "SaliencyCore",
    "ShortcutCore",
    "StrategyCore",
]
