"""SaliencyMonitor: input-gradient saliency maps of the probe images, from the shared one-pass engine."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, get_args

from torch import Tensor, nn
from typing_extensions import override

from probelens.core.base import MonitorCore, TargetMode, base_options, target_sets_for
from probelens.core.options import (
    check_bool,
    check_choice,
    check_cmap,
    check_float,
    check_int,
    check_names,
    dry_run,
)
from probelens.core.run import Run
from probelens.core.writer import captioned_grid, colour_scale, probe_captions
from probelens.methods.engine import OutputTransform
from probelens.methods.expected_gradients import expected_gradients
from probelens.methods.integrated_gradients import integrated_gradients
from probelens.methods.layers import unwrap_compiled
from probelens.methods.saliency import ONE_PASS_METHODS, saliency, saliency_from_pass
from probelens.methods.smoothgrad import smoothgrad
from probelens.probe import ProbeSet
from probelens.render import (
    apply_colormap,
    normalize_maps,
    overlay_heatmap,
    saliency_to_heat,
)

Reduction = Literal["abs_max", "abs_sum", "sum", "l2"]
REDUCTIONS: tuple[str, ...] = get_args(Reduction)

# methods that need their own passes (noise samples, path points, modified ReLU backward): computed batched and
# chunked by the functional API, for the same target classes as the shared pass
MULTI_PASS_METHODS: dict[str, Callable[..., Any]] = {
    "guided_backprop": saliency,
    "deconvnet": saliency,
    "smoothgrad": smoothgrad,
    "integrated_gradients": integrated_gradients,
    "expected_gradients": expected_gradients,
}
MONITOR_METHODS = (*ONE_PASS_METHODS, *MULTI_PASS_METHODS)
"""What `SaliencyMonitor(methods=...)` takes: the functional `saliency` methods and the multi-pass ones."""
_FIXED_ARGS = {"model", "images", "targets", "output_transform", "method", "return_convergence_delta"}


def _check_options(method: str, options: Mapping[str, Any]) -> None:
    valid = [p for p in inspect.signature(MULTI_PASS_METHODS[method]).parameters if p not in _FIXED_ARGS]
    if method == "smoothgrad":
        valid.append("method")
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for saliency method {method!r}; valid: {', '.join(valid)}")


class SaliencyCore(MonitorCore):
    """Logs saliency maps of the probe images for each method.

    Tags: ``probelens/saliency/<method>``, one labelled grid per method and step (``/pred`` and ``/label`` suffixes
    with ``target="both"``). Channels are reduced to one map (``reduce``, default max of ``|x|`` over channels) and
    each map is scaled to its own maximum.

    Args:
        probe: the probe set.
        methods: any of ``"vanilla"`` (the input gradient) and ``"gradient_x_input"``, which come from the one shared
            forward/backward pass, and ``"guided_backprop"``, ``"deconvnet"``, ``"smoothgrad"``,
            ``"integrated_gradients"``, ``"expected_gradients"`` (background: the probe set itself), which run their
            own batched passes (they cost several forward/backward passes each; consider a sparser schedule).
        method_options: per-method keyword arguments, e.g. ``{"smoothgrad": {"samples": 32, "noise": 0.1},
            "integrated_gradients": {"steps": 64}}``; checked at construction.
        target: ``"pred"``, ``"label"`` or ``"both"``.
        reduce: channel reduction, one of ``"abs_max"``, ``"abs_sum"``, ``"sum"``, ``"l2"``.
        overlay: draw over the probe image (``alpha``) instead of a plain heatmap.
        alpha: overlay opacity.
        cmap: colormap name.
        max_images: log at most this many probe images.
        every_n_epochs: fire at the end of every n-th epoch (every epoch by default).
        every_n_steps, log_at_start, probe_size, probe_seed, probe_input_key, probe_target_key,
            max_image_side, max_bytes_per_firing, output_transform, name: as for :class:`ProbeMonitor`.
    """

    def __init__(
        self,
        probe: ProbeSet | None = None,
        methods: Sequence[str] = ("vanilla", "gradient_x_input"),
        *,
        method_options: Mapping[str, Mapping[str, Any]] | None = None,
        target: TargetMode = "pred",
        reduce: Reduction = "abs_max",
        overlay: bool = False,
        alpha: float = 0.6,
        cmap: str = "inferno",
        max_images: int | None = None,
        every_n_epochs: int | None = 1,
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
        methods = check_names(owner, "methods", methods, MONITOR_METHODS)
        options = {k: dict(v) for k, v in (method_options or {}).items()}
        for method, opts in options.items():
            if method not in methods or method not in MULTI_PASS_METHODS:
                raise ValueError(
                    f"{owner}: method_options given for {method!r}, which is not among the multi-pass methods "
                    f"requested ({', '.join(m for m in methods if m in MULTI_PASS_METHODS) or 'none'})"
                )
            _check_options(method, opts)
        self.method_options = options
        self._check_method_options(None if probe is None else probe.images[:1])
        check_choice(owner, "reduce", reduce, REDUCTIONS)
        check_bool(owner, "overlay", overlay)
        check_float(owner, "alpha", alpha, 0.0, 1.0)
        check_int(owner, "max_images", max_images, none_ok=True, fix="None shows the whole probe set")
        check_cmap(owner, "cmap", cmap)
        self.methods = methods
        self.target = target
        self.target_sets = target_sets_for(target, owner)
        self.reduce = reduce
        self.overlay = overlay
        self.alpha = alpha
        self.cmap = cmap
        self.max_images = max_images

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, methods=tuple(self.methods), target=self.target)

    def _check_method_options(self, images: Tensor | None) -> None:
        for method, opts in self.method_options.items():
            # an inner layer of expected gradients is a name in the user's model: checked at setup, not on a stand-in
            call_options = {k: v for k, v in opts.items() if k != "layer"}
            if method in ("guided_backprop", "deconvnet"):
                call_options["method"] = method
            dry_run(
                type(self).__name__, MULTI_PASS_METHODS[method], f"method_options[{method!r}]", images, call_options
            )

    @override
    def configure(self, pl_module: nn.Module) -> None:
        assert self.probe is not None
        self._check_method_options(self.probe.images[:1])  # now with the real image shape (baseline tensors)
        layer = self.method_options.get("expected_gradients", {}).get("layer")
        if layer is not None:
            self._resolve_layers(pl_module, layer)  # an unknown name fails now, with the model's valid names
        self._require({}, gradients=False, input_gradient=True, target_sets=set(self.target_sets))

    def _attribution(self, pl_module: nn.Module, result: Any, target_set: str, method: str, shown: Tensor) -> Any:
        index = shown.to(result.images.device)
        if method in ONE_PASS_METHODS:
            return saliency_from_pass(result, target_set, method)[index]
        model = unwrap_compiled(pl_module)
        images = result.images[index]
        targets = result.targets[target_set][index]
        options = dict(self.method_options.get(method, {}))
        options["output_transform"] = self.output_transform
        if method in ("guided_backprop", "deconvnet"):
            options["method"] = method
        if method == "expected_gradients":
            options.setdefault("background", result.images)
        return MULTI_PASS_METHODS[method](model, images, targets, **options)

    @override
    def explain(self, step: int, pl_module: nn.Module, trainer: Run) -> None:
        assert self.probe is not None
        result = self._pass(pl_module, step)
        shown = self._shown(self.max_images)
        images = self.probe.display_images()[shown] if self.overlay else None
        captions = probe_captions(self.probe, result, shown)
        alpha, cmap, reduce = self.alpha, self.cmap, self.reduce
        for method in self.methods:
            for target_set in self.target_sets:
                attribution = self._attribution(pl_module, result, target_set, method, shown)
                sal = self._finite(attribution.float(), method, step)

                heat = normalize_maps(saliency_to_heat(sal, reduce))
                if images is None:
                    tiles = apply_colormap(heat, cmap, keep_device=True)
                else:
                    tiles = overlay_heatmap(images, heat, alpha, cmap, keep_device=True)
                suffix = f"/{target_set}" if len(self.target_sets) > 1 else ""
                tag = f"probelens/saliency/{method}{suffix}"
                scale = colour_scale(cmap)
                self.writer.picture(captioned_grid(tag, step, tiles, captions, shown=shown, scale=scale))
