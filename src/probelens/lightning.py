"""The monitors as ``lightning.pytorch.Callback`` subclasses (``import lightning.pytorch as pl``).

Each class is its framework-free core (:mod:`probelens.core`: signature, docs, behaviour) with this namespace's
``Callback`` mixed in. ``pytorch_lightning.Callback`` and ``lightning.pytorch.Callback`` are unrelated classes: a
Trainer duck-types a callback of the other namespace, but ``LightningCLI`` checks ``isinstance``, hence one module
per namespace. Module-level classes, so a config's ``class_path`` finds them and they pickle (``ddp_spawn``).

Example:
    >>> from probelens.lightning import GradCAMMonitor
    >>> import lightning.pytorch
    >>> issubclass(GradCAMMonitor, lightning.pytorch.Callback)
    True
"""

from __future__ import annotations

from lightning.pytorch import Callback

from probelens import core

# The cores' hooks take a probelens.core.run.Run, which the Trainers of both namespaces satisfy: each flavour is
# type-checked against its own Callback with no ignore.


class ProbeMonitor(core.MonitorCore, Callback):
    __doc__ = core.MonitorCore.__doc__


class ActivationMonitor(core.ActivationCore, Callback):
    __doc__ = core.ActivationCore.__doc__


class ConceptMonitor(core.ConceptCore, Callback):
    __doc__ = core.ConceptCore.__doc__


class DeconvMonitor(core.DeconvCore, Callback):
    __doc__ = core.DeconvCore.__doc__


class FeatureVisMonitor(core.FeatureVisCore, Callback):
    __doc__ = core.FeatureVisCore.__doc__


class FilterMonitor(core.FilterCore, Callback):
    __doc__ = core.FilterCore.__doc__


class GradCAMMonitor(core.GradCAMCore, Callback):
    __doc__ = core.GradCAMCore.__doc__


class OcclusionMonitor(core.OcclusionCore, Callback):
    __doc__ = core.OcclusionCore.__doc__


class SaliencyMonitor(core.SaliencyCore, Callback):
    __doc__ = core.SaliencyCore.__doc__


class ShortcutMonitor(core.ShortcutCore, Callback):
    __doc__ = core.ShortcutCore.__doc__


class StrategyMonitor(core.StrategyCore, Callback):
    __doc__ = core.StrategyCore.__doc__


__all__ = [
    "ActivationMonitor",
    "ConceptMonitor",
    "DeconvMonitor",
    "FeatureVisMonitor",
    "FilterMonitor",
    "GradCAMMonitor",
    "OcclusionMonitor",
    "ProbeMonitor",
    "SaliencyMonitor",
    "ShortcutMonitor",
    "StrategyMonitor",
]
