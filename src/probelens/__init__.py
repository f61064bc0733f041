"""probelens: watch what a CNN looks at while it trains (Lightning callbacks logging to TensorBoard)."""

from probelens.callbacks import ActivationMonitor, FilterMonitor, GradCAMMonitor, ProbeMonitor, SaliencyMonitor
from probelens.probe import ProbeSet

__version__ = "0.1.0"

__all__ = [
    "ActivationMonitor",
    "FilterMonitor",
    "GradCAMMonitor",
    "ProbeMonitor",
    "ProbeSet",
    "SaliencyMonitor",
    "__version__",
]
