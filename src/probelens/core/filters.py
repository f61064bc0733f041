"""FilterMonitor: convolution weights as images."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from typing_extensions import override

from probelens.core.base import MonitorCore, base_options
from probelens.core.options import check_int, check_layer_spec, take_renamed
from probelens.core.run import Run
from probelens.core.writer import Picture
from probelens.methods.filters import conv_filters
from probelens.methods.layers import LayerSpec, is_conv2d, resolve_layers
from probelens.methods.sharded import is_sharded
from probelens.render import filter_grid


def _weight_version(module: nn.Module) -> tuple[int, int]:
    """Changes whenever the conv's weight is updated in place (an optimizer step) or replaced."""
    weight = module.weight
    assert isinstance(weight, Tensor)
    return (weight._version, weight.data_ptr())


class FilterCore(MonitorCore):
    """Logs the filters of convolution layers.

    Tags: ``probelens/filters/<layer>``. A first layer with three input channels is shown as colour patches (one per
    filter); deeper layers as a grid with one row per output filter and one tile per input channel, on a diverging
    colormap centred on zero so the sign of each weight is visible. A layer whose weights have not changed since its
    last picture (a frozen layer: its version counter did not move) is not drawn again.

    Args:
        layers: ``"all"`` (every conv, default), ``"last"``, names or module types; must be 2-D convolutions.
        max_images: output filters shown per layer (each filter is one picture; ``max_filters=`` before 0.3.0).
        every_n_epochs: fire at the end of every n-th epoch (every epoch by default).
        every_n_steps, log_at_start, max_image_side, max_bytes_per_firing, name: as for
            :class:`ProbeMonitor`.
    """

    def __init__(
        self,
        layers: LayerSpec = "all",
        *,
        max_images: int = 64,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        log_at_start: bool = False,
        max_image_side: int | None = 1024,
        max_bytes_per_firing: int | None = None,
        name: str | None = None,
        **deprecated: Any,
    ) -> None:
        (max_images,) = take_renamed(type(self).__name__, deprecated, {"max_filters": ("max_images", max_images, 64)})
        super().__init__(None, **base_options(locals()))
        owner = type(self).__name__
        check_layer_spec(owner, "layers", layers)
        check_int(owner, "max_images", max_images)
        self.layers_spec = layers
        self.max_images = max_images
        self._layers: dict[str, nn.Module] = {}
        self.reset_history()

    needs_probe = False

    @override
    def reset_history(self) -> None:
        self._drawn: dict[str, tuple[int, int]] = {}  # layer -> (version, storage) of the weight last drawn

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, layers=repr(self.layers_spec))

    @override
    def configure(self, pl_module: nn.Module) -> None:
        layers = resolve_layers(pl_module, self.layers_spec)
        bad = [name for name, m in layers.items() if not is_conv2d(m)]
        if bad:
            raise ValueError(
                f"{self.name}: layers {bad} are not 2-D convolutions, so they have no filters to show; "
                "use layers='all' or conv layer names"
            )
        self._layers = layers

    @override
    def explain(self, step: int, pl_module: nn.Module, trainer: Run) -> None:
        if is_sharded(pl_module):  # gathered weights: no version counter to trust, draw them all
            layers = self._layers
        else:
            layers = {n: m for n, m in self._layers.items() if self._drawn.get(n) != _weight_version(m)}
            self._drawn.update({n: _weight_version(m) for n, m in layers.items()})
        if not layers:
            return
        for name, weight in conv_filters(pl_module, layers).items():  # detached CPU copies
            weight = self._finite(weight, f"weights of {name}", step)

            # kernels upscaled by the largest integer factor that fits the written size: none downscaled after
            grid = filter_grid(weight, max_filters=self.max_images, max_side=self.max_image_side)
            self.writer.picture(Picture(f"probelens/filters/{name}", step, grid))
