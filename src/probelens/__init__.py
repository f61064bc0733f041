"""probelens: watch what a CNN looks at while it trains (Lightning callbacks logging to TensorBoard).

The monitors are imported lazily, so ``import probelens.methods`` (torch only) does not pull in Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from probelens.probe import ProbeSet

if TYPE_CHECKING:  # the cores: the same signatures as the generated Lightning subclasses
    from probelens.callbacks import (
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

__version__ = "0.2.0.dev0"

_MONITORS = (
    "ActivationMonitor",
    "DeconvMonitor",
    "FeatureVisMonitor",
    "FilterMonitor",
    "GradCAMMonitor",
    "OcclusionMonitor",
    "ProbeMonitor",
    "SaliencyMonitor",
    "ShortcutMonitor",
)


def __getattr__(name: str) -> Any:
    """Monitors resolve to the ``pytorch_lightning`` flavour (:mod:`probelens.pl`) when that package is installed,
    else to the ``lightning.pytorch`` flavour (:mod:`probelens.lightning`)."""
    if name in ("register_sink", "unregister_sink"):
        from probelens.callbacks import _sinks

        return getattr(_sinks, name)
    if name not in _MONITORS:
        raise AttributeError(f"module 'probelens' has no attribute {name!r}")
    try:
        module = importlib.import_module("probelens.pl")
    except ModuleNotFoundError as err:
        if err.name != "pytorch_lightning":
            raise
        module = importlib.import_module("probelens.lightning")
    return getattr(module, name)


__all__ = [
    "ActivationMonitor",
    "DeconvMonitor",
    "FeatureVisMonitor",
    "FilterMonitor",
    "GradCAMMonitor",
    "OcclusionMonitor",
    "ProbeMonitor",
    "ProbeSet",
    "SaliencyMonitor",
    "ShortcutMonitor",
    "__version__",
    "register_sink",
    "unregister_sink",
]
