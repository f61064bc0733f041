"""The monitors as Lightning callbacks of the installed namespace.

These are the classes of :mod:`probelens.pl` (``pytorch_lightning.Callback``) when ``pytorch_lightning`` is
installed, else those of :mod:`probelens.lightning` (``lightning.pytorch.Callback``): the same classes that
``probelens.GradCAMMonitor`` etc. resolve to. Their framework-free cores are in :mod:`probelens.core`.
"""

try:
    from probelens.pl import *  # noqa: F403
    from probelens.pl import __all__
except ModuleNotFoundError as err:  # only lightning.pytorch is installed
    if err.name != "pytorch_lightning":
        raise
    from probelens.lightning import *  # type: ignore[assignment]  # noqa: F403
    from probelens.lightning import __all__  # noqa: F401
