"""OcclusionMonitor: occlusion sensitivity maps (Zeiler & Fergus, 2014) of the probe images."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from typing_extensions import override

from probelens.core.base import MonitorCore, TargetMode, base_options, target_sets_for
from probelens.core.options import check_cmap, check_float, check_int, dry_run
from probelens.core.run import Run
from probelens.core.writer import captioned_grid, colour_scale, probe_captions
from probelens.methods.engine import OutputTransform
from probelens.methods.layers import unwrap_compiled
from probelens.methods.occlusion import BASELINES, occlusion
from probelens.methods.occlusion import _pair as occlusion_pair
from probelens.probe import ProbeSet
from probelens.render import normalize_maps, overlay_heatmap


def _pair(owner: str, option: str, value: object) -> tuple[int, int] | None:
    """``None``, or ``value`` (an int or an ``(h, w)`` pair) as a pair of positive ints, by the rule
    :func:`~probelens.methods.occlusion.occlusion` applies; else a ``ValueError`` naming the monitor and option."""
    if value is None:
        return None
    try:
        return occlusion_pair(option, value)
    except ValueError:
        raise ValueError(
            f"{owner}: {option}={value!r} is not allowed; {option} must be None (the default), a positive integer or "
            "a pair (h, w) of positive integers"
        ) from None


class OcclusionCore(MonitorCore):
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
        every_n_epochs: fire at the end of every n-th epoch (every 5 epochs by default).
        every_n_steps, log_at_start, probe_size, probe_seed, probe_input_key, probe_target_key,
            max_image_side, max_bytes_per_firing, output_transform, name: as for :class:`ProbeMonitor`.
    """

    def __init__(
        self,
        probe: ProbeSet | None = None,
        window: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        baseline: float | str | Tensor = 0.0,
        *,
        target: TargetMode = "pred",
        alpha: float = 0.6,
        cmap: str = "seismic",
        max_images: int | None = None,
        every_n_epochs: int | None = 5,
        every_n_steps: int | None = None,
        log_at_start: bool = False,
        probe_size: int = 16,
        probe_seed: int = 0,
        probe_input_key: str | None = None,
        probe_target_key: str | None = None,
        max_image_side: int | None = 1024,
        max_bytes_per_firing: int | None = None,
        output_transform: OutputTransform | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(probe, **base_options(locals()))
        owner = type(self).__name__
        self._window_spec = _pair(owner, "window", window)
        self._stride_spec = _pair(owner, "stride", stride)
        if isinstance(baseline, str) and baseline not in BASELINES:
            raise ValueError(
                f"{owner}: baseline={baseline!r} is not allowed; baseline must be a number, a tensor or one of "
                f"{BASELINES}"
            )
        if isinstance(baseline, bool) or not isinstance(baseline, (int, float, str, Tensor)):
            raise ValueError(f"{owner}: baseline={baseline!r} is not allowed; pass a number, a tensor or a name")
        if (isinstance(baseline, float) and not math.isfinite(baseline)) or (
            isinstance(baseline, Tensor) and not bool(torch.isfinite(baseline).all())
        ):
            raise ValueError(f"{owner}: baseline={baseline!r} is not allowed; a baseline must be finite")
        check_float(owner, "alpha", alpha, 0.0, 1.0)
        check_int(owner, "max_images", max_images, none_ok=True, fix="None shows the whole probe set")
        check_cmap(owner, "cmap", cmap)
        self.baseline = baseline
        if probe is not None:
            self._set_window(probe)
        self.target = target
        self.target_sets = target_sets_for(target, owner)
        self.alpha = alpha
        self.cmap = cmap
        self.max_images = max_images

    def _set_window(self, probe: ProbeSet) -> None:
        """Resolve the default window/stride for the probe's image size and check the lot (window within the image,
        stride within the window, a baseline tensor's shape) by one call of :func:`occlusion` on a stand-in model."""
        h, w = probe.image_size
        window = self._window_spec or (max(2, min(h, w) // 8),) * 2
        if window[0] > h or window[1] > w:
            raise ValueError(
                f"{type(self).__name__}: window={window} is larger than the probe images ({h}x{w}); window must be "
                f"1..{(h, w)} per side"
            )
        stride = self._stride_spec or (max(1, window[0] // 2), max(1, window[1] // 2))
        self.window: tuple[int, int] = (int(window[0]), int(window[1]))
        self.stride = stride
        options = {"window": self.window, "stride": self.stride, "baseline": self.baseline}
        dry_run(type(self).__name__, occlusion, "the window, stride and baseline were", probe.images[:1], options)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, window=self._window_spec, target=self.target)

    @override
    def configure(self, pl_module: nn.Module) -> None:
        assert self.probe is not None
        self._set_window(self.probe)
        # the shared pass supplies predictions and targets (no gradients needed)
        self._require({}, gradients=False, input_gradient=False, target_sets=set(self.target_sets))

    @override
    def explain(self, step: int, pl_module: nn.Module, trainer: Run) -> None:
        assert self.probe is not None
        result = self._pass(pl_module, step)
        shown = self._shown(self.max_images)
        index = shown.to(result.images.device)
        pictures = self.probe.display_images()[shown]
        captions = probe_captions(self.probe, result, shown)
        model = unwrap_compiled(pl_module)
        alpha, cmap = self.alpha, self.cmap
        for target_set in self.target_sets:
            attr = occlusion(
                model,
                result.images[index],
                result.targets[target_set][index],
                window=self.window,
                stride=self.stride,
                baseline=self.baseline,
                output_transform=self.output_transform,
            )
            heat = self._finite(attr[:, :1].float(), "occlusion maps", step)

            tiles = overlay_heatmap(pictures, normalize_maps(heat, symmetric=True), alpha, cmap, keep_device=True)
            suffix = f"/{target_set}" if len(self.target_sets) > 1 else ""
            tag = f"probelens/occlusion/{self.window[0]}x{self.window[1]}{suffix}"
            scale = colour_scale(cmap, symmetric=True)
            self.writer.picture(captioned_grid(tag, step, tiles, captions, shown=shown, scale=scale))
