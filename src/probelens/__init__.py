"""probelens: watch what a CNN looks at while it trains (Lightning callbacks logging to TensorBoard).

The monitors and ``ProbeSet`` are imported lazily, so ``import probelens.methods`` (torch only) does not pull in
Lightning, and the log readers (``probelens.logs``, the dashboard, ``probelens export``) do not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the Lightning callbacks these names resolve to (see __getattr__)
    from probelens.callbacks import (
        ActivationMonitor,
        ConceptMonitor,
        DeconvMonitor,
        FeatureVisMonitor,
        FilterMonitor,
        GradCAMMonitor,
        OcclusionMonitor,
        ProbeMonitor,
        SaliencyMonitor,
        ShortcutMonitor,
        StrategyMonitor,
    )
    from probelens.core.sinks import register_sink, unregister_sink
    from probelens.probe import ProbeSet

__version__ = "0.3.0.dev0"


def __getattr__(name: str) -> Any:
    """``probelens.<Name>Monitor`` is the Lightning callback of :mod:`probelens.callbacks` (the ``pytorch_lightning``
    flavour when that package is installed, else the ``lightning.pytorch`` one), imported on first use so that
    ``import probelens.methods`` does not import Lightning."""
    if name == "ProbeSet":  # lazily too: the log readers (the dashboard in TensorBoard's process) need no torch
        from probelens.probe import ProbeSet

        return ProbeSet
    if name in ("register_sink", "unregister_sink"):
        from probelens.core import sinks

        return getattr(sinks, name)
    if name.endswith("Monitor"):
        callbacks = importlib.import_module("probelens.callbacks")
        if name in callbacks.__all__:
            return getattr(callbacks, name)
    raise AttributeError(f"module 'probelens' has no attribute {name!r}")


__all__ = [
    "ActivationMonitor",
    "ConceptMonitor",
    "DeconvMonitor",
    "FeatureVisMonitor",
    "FilterMonitor",
    "GradCAMMonitor",
    "OcclusionMonitor",
    "ProbeMonitor",
    "ProbeSet",
    "SaliencyMonitor",
    "ShortcutMonitor",
    "StrategyMonitor",
    "__version__",
    "register_sink",
    "unregister_sink",
]
