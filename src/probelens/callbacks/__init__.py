"""The monitors as Lightning callbacks of the installed namespace.

These are the classes of :mod:`probelens.pl` (``pytorch_lightning.Callback``) when ``pytorch_lightning`` is
installed, else those of :mod:`probelens.lightning` (``lightning.pytorch.Callback``): the same classes that
``probelens.GradCAMMonitor`` etc. resolve to. Their framework-free cores are in :mod:`probelens.core`.
"""

try:
    from probelens.pl import *  # noqa: F403
    from probelens.pl import __all__
except ModuleNotFoundError as err:  # only lightning.pytorch is installed, or no Lightning at all
    if err.name != "pytorch_lightning":
        raise
    try:
        from probelens.lightning import *  # type: ignore[assignment]  # noqa: F403
        from probelens.lightning import __all__  # noqa: F401
    except ModuleNotFoundError as missing:
        if missing.name not in ("lightning", "lightning.pytorch"):
            raise
        raise ModuleNotFoundError(
            "probelens' monitors are Lightning callbacks, and neither pytorch_lightning nor lightning is installed; "
            "pip install 'probelens[pl]' (import pytorch_lightning as pl) or 'probelens[lightning]' "
            "(import lightning.pytorch as pl)",
            name="pytorch_lightning",
        ) from None
