"""The monitors as ``pytorch_lightning.Callback`` subclasses (``import pytorch_lightning as pl``).

Example:
    >>> from probelens.pl import GradCAMMonitor
    >>> import pytorch_lightning
    >>> issubclass(GradCAMMonitor, pytorch_lightning.Callback)
    True
"""

from __future__ import annotations

from pytorch_lightning import Callback

from probelens.callbacks._flavours import MONITOR_NAMES, make_monitors

# the classes are generated (one per framework-free core in probelens.callbacks, same signature and docs), so a
# config's class_path "probelens.<flavour>.GradCAMMonitor" and pickling under ddp_spawn both find them here
globals().update(make_monitors(Callback, __name__))
__all__ = list(MONITOR_NAMES)
