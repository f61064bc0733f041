"""The monitors as ``pytorch_lightning.Callback`` subclasses (``import pytorch_lightning as pl``).

Example:
    >>> from probelens.pl import GradCAMMonitor
    >>> import pytorch_lightning
    >>> issubclass(GradCAMMonitor, pytorch_lightning.Callback)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytorch_lightning import Callback

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
