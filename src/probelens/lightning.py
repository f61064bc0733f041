"""The monitors as ``lightning.pytorch.Callback`` subclasses (``import lightning.pytorch as pl``).

Example:
    >>> from probelens.lightning import GradCAMMonitor
    >>> import lightning.pytorch
    >>> issubclass(GradCAMMonitor, lightning.pytorch.Callback)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning.pytorch import Callback

from probelens.callbacks._flavours import MONITOR_NAMES, make_monitors

if TYPE_CHECKING:  # the generated classes have the cores' signatures and behaviour
    from probelens.callbacks._flavours import (  # noqa: F401
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

globals().update(make_monitors(Callback, __name__))
__all__ = list(MONITOR_NAMES)
