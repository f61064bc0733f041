"""The monitors as ``lightning.pytorch.Callback`` subclasses (``import lightning.pytorch as pl``).

Example:
    >>> from probelens.lightning import GradCAMMonitor
    >>> import lightning.pytorch
    >>> issubclass(GradCAMMonitor, lightning.pytorch.Callback)
    True
"""

from __future__ import annotations

from lightning.pytorch import Callback

from probelens.callbacks._flavours import MONITOR_NAMES, make_monitors

# the classes are generated (one per framework-free core in probelens.callbacks, same signature and docs), so a
# config's class_path "probelens.<flavour>.GradCAMMonitor" and pickling under ddp_spawn both find them here
globals().update(make_monitors(Callback, __name__))
__all__ = list(MONITOR_NAMES)
