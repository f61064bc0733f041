"""OcclusionMonitor: occlusion sensitivity maps (Zeiler & Fergus, 2014) of the probe images."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor, nn
from typing_extensions import override

from probelens.callbacks.base import ProbeMonitor, target_sets_for
from probelens.methods.layers import unwrap_compiled
from probelens.methods.occlusion import BASELINES, occlusion
from probelens.probe import ProbeSet
from probelens.render import colormap_lut, labelled_grid, normalize_maps, overlay_heatmap

if TYPE_CHECKING:  # Lightning is only needed for annotations: the core works with either namespace
    import pytorch_lightning as pl


class OcclusionMonitor(ProbeMonitor):
    """Logs occlusion sensitivity: how much the target score drops when a window of the image is replaced.

    Tags: ``probelens/occlusion/<h>x<w>`` with the window size (``/pred``, ``/label`` suffixes with
    ``target="both"``): overlays on a diverging colormap
    centred on zero (red = hiding this region lowers the score, blue = raises it), scaled per image. All occluded
    copies go through the network in batches sized to a memory budget. Being many forward passes per image, it fires
    every 5 epochs by default.

    Args:
        probe: the probe set.
        window: occluding window side (int or ``(h, w)``); default about 1/8 of the shorter image side (at least 2).
        stride: step between windows; default half the window.
        baseline: the replacement: a number (in model-input space, default 0 = the normalisation mean), ``"mean"``
            (per-image channel means), ``"blur"`` (a blurred copy) or a tensor.
        target: ``"pred"``, ``"label"`` or ``"both"``.
        alpha: overlay opacity.
        cmap: a diverging colormap.
        max_images: probe images shown.
        **schedule: ``every_n_epochs`` (default 5), ``every_n_steps``, ``log_at_start``, ``name``.
    """

    def __init__(
        self,
        probe: ProbeSet,
        window: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        baseline: float | str | Tensor = 0.0,
        *,
        target: str = "pred",
        alpha: float = 0.6,
        cmap: str = "seismic",
        max_images: int | None = None,
        **schedule: Any,
    ) -> None:
        if probe is None:
            raise ValueError("OcclusionMonitor needs a probe set: OcclusionMonitor(ProbeSet.from_dataset(val_dataset))")
        schedule.setdefault("every_n_epochs", 5)
        super().__init__(probe, **schedule)
        h, w = probe.image_size
        if window is None:
            side = max(2, min(h, w) // 8)
            window = (side, side)
        window = (window, window) if isinstance(window, int) else tuple(window)
        if len(window) != 2 or not all(isinstance(v, int) and v >= 1 for v in window) or window[0] > h or window[1] > w:
            raise ValueError(f"window must be 1..image size {(h, w)} per side, got {window}")
        if stride is None:
            stride = (max(1, window[0] // 2), max(1, window[1] // 2))
        if isinstance(baseline, str) and baseline not in BASELINES:
            raise ValueError(f"baseline must be a number, a tensor or one of {BASELINES}, got {baseline!r}")
        colormap_lut(cmap)
        self.window = window
        self.stride = stride
        self.baseline = baseline
        self.target = target
        self.target_sets = target_sets_for(target)
        self.alpha = alpha
        self.cmap = cmap
        self.max_images = max_images

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, window=self.window, target=self.target)

    @override
    def _configure(self, pl_module: nn.Module) -> None:
        # the shared pass supplies predictions and targets (no gradients needed)
        self._require({}, gradients=False, input_gradient=False, target_sets=set(self.target_sets))

    @override
    def _log(self, step: int, pl_module: nn.Module, trainer: pl.Trainer) -> None:
        assert self.probe is not None
        result = self._pass(pl_module, step)
        k = len(self.probe) if self.max_images is None else min(self.max_images, len(self.probe))
        shown = self.probe.display_images()[:k]
        captions = self._captions(result)[:k]
        model = unwrap_compiled(pl_module)
        for target_set in self.target_sets:
            attr = occlusion(
                model,
                result.images[:k],
                result.targets[target_set][:k],
                window=self.window,
                stride=self.stride,
                baseline=self.baseline,
            )
            heat = self._finite(attr[:, :1].float().cpu(), "occlusion maps", step)
            tiles = overlay_heatmap(shown, normalize_maps(heat, symmetric=True), self.alpha, self.cmap)
            suffix = f"/{target_set}" if len(self.target_sets) > 1 else ""
            tag = f"probelens/occlusion/{self.window[0]}x{self.window[1]}{suffix}"
            self._image(tag, labelled_grid(tiles, captions), step)
