"""FilterMonitor: convolution weights as images."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn
from typing_extensions import override

from probelens.core.base import MonitorCore
from probelens.core.options import check_int, check_layer_spec
from probelens.methods.filters import conv_filters
from probelens.methods.layers import LayerSpec, is_conv2d, resolve_layers
from probelens.render import filter_grid

if TYPE_CHECKING:  # Lightning is only needed for annotations: the core works with either namespace
    import pytorch_lightning as pl


class FilterCore(MonitorCore):
    """Logs the filters of convolution layers.

    Tags: ``probelens/filters/<layer>``. A first layer with three input channels is shown as colour patches (one per
    filter); deeper layers as a grid with one row per output filter and one tile per input channel, on a diverging
    colormap centred on zero so the sign of each weight is visible.

    Args:
        layers: ``"all"`` (every conv, default), ``"last"``, names or module types; must be 2-D convolutions.
        max_filters: output filters shown per layer.
        **schedule: ``every_n_epochs``, ``every_n_steps``, ``log_at_start``, ``name`` (see :class:`ProbeMonitor`).
    """

    def __init__(self, layers: LayerSpec = "all", *, max_filters: int = 64, **schedule: Any) -> None:
        super().__init__(None, **schedule)
        owner = type(self).__name__
        check_layer_spec(owner, "layers", layers)
        check_int(owner, "max_filters", max_filters)
        self.layers_spec = layers
        self.max_filters = max_filters
        self._layers: dict[str, nn.Module] = {}

    needs_probe = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, layers=repr(self.layers_spec))

    @override
    def _configure(self, pl_module: nn.Module) -> None:
        layers = resolve_layers(pl_module, self.layers_spec)
        bad = [name for name, m in layers.items() if not is_conv2d(m)]
        if bad:
            raise ValueError(
                f"{self.name}: layers {bad} are not 2-D convolutions, so they have no filters to show; "
                "use layers='all' or conv layer names"
            )
        self._layers = layers

    @override
    def _log(self, step: int, pl_module: nn.Module, trainer: pl.Trainer) -> None:
        for name, weight in conv_filters(pl_module, self._layers).items():
            weight = self._finite(weight, f"weights of {name}", step)
            self.writer.image(f"probelens/filters/{name}", filter_grid(weight, max_filters=self.max_filters), step)
