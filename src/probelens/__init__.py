"""probelens: watch what a CNN looks at while it trains (Lightning callbacks logging to TensorBoard).

The monitors are imported lazily, so ``import probelens.methods`` (torch only) does not pull in Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from probelens.probe import ProbeSet

if TYPE_CHECKING:
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

__version__ = "0.1.0"

_LAZY = {
    "ActivationMonitor": "probelens.callbacks",
    "DeconvMonitor": "probelens.callbacks",
    "FeatureVisMonitor": "probelens.callbacks",
    "FilterMonitor": "probelens.callbacks",
    "GradCAMMonitor": "probelens.callbacks",
    "OcclusionMonitor": "probelens.callbacks",
    "ProbeMonitor": "probelens.callbacks",
    "SaliencyMonitor": "probelens.callbacks",
    "ShortcutMonitor": "probelens.callbacks",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'probelens' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


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
]
