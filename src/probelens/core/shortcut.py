"""ShortcutMonitor: numbers, a verdict and an alert when the model decides by the background instead of the object."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from probelens.core.base import MonitorCore
from probelens.core.options import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_names,
    check_single_layer,
)
from probelens.core.session import ProbeSession
from probelens.core.sinks import is_tensorboard_logger
from probelens.methods._batching import chunk_ranges
from probelens.methods.engine import forward_backward
from probelens.methods.grad_cam import grad_cam_map
from probelens.methods.layers import LayerSpec, unwrap_compiled
from probelens.methods.layout import Layout
from probelens.methods.saliency import ONE_PASS_METHODS, saliency_from_pass
from probelens.metrics import (
    ShortcutVerdict,
    class_flip_rates,
    counterfactual_probes,
    direction_flip_rates,
    foreground_only_drop,
    map_drift,
    mask_area,
    relevance_mass,
    relevance_rank_accuracy,
    shortcut_score,
)
from probelens.probe import ProbeSet
from probelens.render import labelled_grid, saliency_to_heat, to_display_images

ON_SHORTCUT = ("warn", "stop", "ignore")
MIN_PROBE_IMAGES = 16
"""Below this many probe images (or :data:`MIN_PROBE_PER_CLASS` in a class) ShortcutMonitor warns at setup."""
MIN_PROBE_PER_CLASS = 8

SCALAR_TAGS = (
    "shortcut/score",
    "shortcut/mask_attribution",
    "shortcut/mask_attribution_chance",
    "shortcut/background_only_accuracy",
    "shortcut/foreground_only_accuracy",
    "shortcut/background_swap_flip_rate",
    "shortcut/foreground_only_drop",
    "shortcut/verdict",
)
"""Scalars logged at every log step of a probe with masks (besides per-class ones and the map metrics)."""

if TYPE_CHECKING:  # Lightning is only needed for annotations: the core works with either namespace
    import pytorch_lightning as pl


class ShortcutCore(MonitorCore):
    """Measures, at every log step, whether the model decides by the object or by the background.

    With foreground masks in the probe set it logs (contract tags):

    - ``shortcut/mask_attribution``: share of the predicted-class Grad-CAM inside the mask (relevance mass), next to
      ``shortcut/mask_attribution_chance`` (mean mask area: what a map spread evenly would score);
      ``shortcut/mask_attribution/<method>`` for each saliency method and ``shortcut/relevance_rank_accuracy``;
    - ``shortcut/background_only_accuracy``: accuracy with the object removed (its region filled with a copy of the
      image's own background, :func:`probelens.metrics.fill_from_background`): whether the background *suffices*,
      logged for context and not part of the verdict;
    - ``shortcut/foreground_only_accuracy``: accuracy with the background replaced by a neutral colour, and
      ``shortcut/foreground_only_drop``: the share of the above-chance accuracy that this loses;
    - ``shortcut/background_swap_flip_rate``: how often the prediction changes when the object is pasted onto the
      background of a probe image of another class, and ``shortcut/background_swap_flip_rate/<class>`` per class of
      the object (with more than two classes also ``.../<class>_on_<background class>`` per direction);
    - ``shortcut/score`` in ``[0, 1]``: the flip rate of the worst class, i.e. how often the background wins a
      conflict with the object (see :func:`probelens.metrics.shortcut_score`);
    - ``shortcut/probe_accuracy``, ``shortcut/drift_previous`` and ``shortcut/drift_first`` (Grad-CAM map drift).

    ``shortcut/verdict`` is 1 while an alert stands and 0 otherwise; the alert clears at the first log step whose score
    drops below ``threshold`` (a ``shortcut/alert`` text says so) and can fire again after ``patience`` counting steps.
    When the score stays at or above ``threshold`` for ``patience`` log steps (and the model is better than chance on
    the probe), the verdict fires: a ``rank_zero_warn``, a TensorBoard text entry ``shortcut/alert`` and, with
    ``on_shortcut="stop"``, ``trainer.should_stop = True``. An image ``shortcut/counterfactuals`` shows, per probe
    image, original | object only | background only | background swapped with the prediction on each.

    Without masks only the map drift is logged, and one message says that masks enable the verdict.

    The detection uses only the model, the probe images, their labels and masks. It assumes masks that cover the object
    and little background; masks that include background context leak it into "object only" and weaken the verdict.

    Args:
        probe: the probe set, ideally with ``masks``.
        layer: the Grad-CAM layer; ``"auto"`` takes the deepest stage.
        saliency_methods: one-pass saliency methods whose mask attribution is also logged.
        on_shortcut: ``"warn"``, ``"stop"`` or ``"ignore"`` (still logs the numbers).
        threshold: score (worst-class flip rate) at or above which a log step counts towards the verdict.
        patience: consecutive counting log steps before the verdict fires.
        min_accuracy: probe accuracy a model needs before its score counts (default: halfway between chance and 1).
        panels: log the counterfactual image panel.
        max_panel_images: probe images in the panel.
        **schedule: ``every_n_epochs``, ``every_n_steps``, ``log_at_start``, ``name`` (see :class:`ProbeMonitor`).
    """

    def __init__(
        self,
        probe: ProbeSet | None = None,
        layer: LayerSpec = "auto",
        *,
        saliency_methods: Sequence[str] = ("vanilla",),
        on_shortcut: str = "warn",
        threshold: float = 0.5,
        patience: int = 2,
        min_accuracy: float | None = None,
        panels: bool = True,
        max_panel_images: int = 8,
        **schedule: Any,
    ) -> None:
        super().__init__(probe, **schedule)
        owner = type(self).__name__
        check_choice(owner, "on_shortcut", on_shortcut, ON_SHORTCUT)
        check_single_layer(owner, "layer", layer)
        no_methods = isinstance(saliency_methods, (list, tuple)) and not saliency_methods  # () is allowed: none
        methods = [] if no_methods else check_names(owner, "saliency_methods", saliency_methods, ONE_PASS_METHODS)
        check_float(owner, "threshold", threshold, 0.0, 1.0, low_open=True)
        check_int(owner, "patience", patience)
        check_float(owner, "min_accuracy", min_accuracy, 0.0, 1.0, none_ok=True)
        check_bool(owner, "panels", panels)
        check_int(owner, "max_panel_images", max_panel_images)
        self.layer_spec = layer
        self.saliency_methods = methods
        self.on_shortcut = on_shortcut
        self.min_accuracy = min_accuracy
        self.panels = panels
        self.max_panel_images = max_panel_images
        self.threshold = threshold
        self.patience = patience
        self._layer: dict[str, nn.Module] = {}
        self._layouts: dict[str, Layout] = {}
        self._warned_small_probe = False
        self._reset_history()

    @override
    def _reset_history(self) -> None:
        self.verdict = ShortcutVerdict(threshold=self.threshold, patience=self.patience)
        self.alerts: list[int] = []
        self.clears: list[int] = []
        self._first_cam: Tensor | None = None
        self._previous_cam: Tensor | None = None
        self._counterfactuals: Any = None
        self._worst_class: int | None = None
        self._layout_written = False
        self._said_no_masks = False

    @override
    def state_dict(self) -> dict[str, Any]:
        # the drift references travel too: after a resume drift_first still compares with the first map of the run
        return {
            **super().state_dict(),
            "verdict": self.verdict.state_dict(),
            "alerts": list(self.alerts),
            "clears": list(self.clears),
            "first_cam": self._first_cam,
            "previous_cam": self._previous_cam,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.verdict.load_state_dict(state_dict.get("verdict", {}))
        self.alerts = [int(s) for s in state_dict.get("alerts", [])]
        self.clears = [int(s) for s in state_dict.get("clears", [])]
        self._first_cam = state_dict.get("first_cam")
        self._previous_cam = state_dict.get("previous_cam")

    @override
    def _configure(self, pl_module: nn.Module) -> None:
        layers = self._resolve_layers(pl_module, self.layer_spec)
        if isinstance(self.layer_spec, str) and self.layer_spec == "auto":
            name = list(layers)[-1]
            layers = {name: layers[name]}
        if len(layers) != 1:
            raise ValueError(f"{self.name}: pass one layer for the mask attribution, got {list(layers)}")
        spatial = self._check_spatial(pl_module, layers, needs_grad=True)
        self._layouts = {name: layout for name, (layout, _) in spatial.items()}
        self._layer = layers
        self._require(layers, gradients=True, input_gradient=bool(self.saliency_methods), target_sets={"pred"})
        self._check_probe_size()

    def _check_probe_size(self) -> None:
        """Warn when the probe is too small for the verdict: its accuracies move in steps of 1/N (1/n_c per class)."""
        assert self.probe is not None
        if self.probe.masks is None or self._warned_small_probe:
            return
        counts = torch.bincount(self.probe.targets)
        smallest = int(counts[counts > 0].min())
        if len(self.probe) < MIN_PROBE_IMAGES or smallest < MIN_PROBE_PER_CLASS:
            self._warned_small_probe = True
            rank_zero_warn(
                f"{self.name}: the shortcut probe has {len(self.probe)} images ({smallest} in its smallest class), "
                f"so its accuracies and flip rate move in steps of 1/{len(self.probe)} (1/{smallest} within a class) "
                f"and the verdict rests on few images; use at least {MIN_PROBE_IMAGES} images and "
                f"{MIN_PROBE_PER_CLASS} per class (ProbeSet.from_dataset(..., num_samples=32, per_class=True))."
            )

    def _chance_accuracy(self) -> float:
        assert self.probe is not None
        counts = torch.bincount(self.probe.targets).float()
        return float(counts.max() / counts.sum())

    @override
    def _log(self, step: int, pl_module: nn.Module, trainer: pl.Trainer) -> None:
        assert self.probe is not None
        result = self._pass(pl_module, step)
        name = next(iter(self._layer))
        layout = self._layouts[name]  # channels-last and token layers viewed as [N, C, h, w]
        cam = grad_cam_map(
            layout.to_nchw(result.activations[name]),
            layout.to_nchw(result.gradients["pred"][name]),
            self.probe.image_size,
        ).cpu()
        cam = self._finite(cam, "Grad-CAM maps", step)
        labels = self.probe.targets
        preds = result.predictions.cpu()
        metrics: dict[str, float] = {"shortcut/probe_accuracy": float((preds == labels).float().mean())}
        if self._previous_cam is not None and self._first_cam is not None:
            metrics["shortcut/drift_previous"] = float(map_drift(self._previous_cam, cam).mean())
            metrics["shortcut/drift_first"] = float(map_drift(self._first_cam, cam).mean())
        if self._first_cam is None:
            self._first_cam = cam
        self._previous_cam = cam
        if self.probe.masks is None:
            if not self._said_no_masks:
                self._said_no_masks = True
                rank_zero_warn(
                    f"{self.name}: the probe set has no foreground masks, so only map drift is logged. Give "
                    "ProbeSet(masks=...) (from the dataset, boxes or a function) to enable the shortcut verdict."
                )
            self.writer.scalars(trainer.loggers, metrics, step)
            return
        masks = self.probe.masks
        metrics["shortcut/mask_attribution"] = float(relevance_mass(cam, masks).mean())
        metrics["shortcut/mask_attribution_chance"] = float(mask_area(masks).mean())
        metrics["shortcut/relevance_rank_accuracy"] = float(relevance_rank_accuracy(cam, masks).mean())
        for method in self.saliency_methods:
            heat = saliency_to_heat(saliency_from_pass(result, "pred", method).float().cpu(), "abs_sum")
            metrics[f"shortcut/mask_attribution/{method}"] = float(relevance_mass(heat, masks).mean())

        cf = self._counterfactual_batch(result.images)
        n = len(self.probe)
        batch = torch.cat([cf.background_only, cf.foreground_only, cf.swapped])
        model = unwrap_compiled(pl_module)
        chunk = ProbeSession.pass_chunk(model, result.images, backward=False)
        cf_preds = torch.cat(
            [
                forward_backward(
                    model,
                    batch[start:stop].to(result.images),
                    None,
                    {},
                    gradients=False,
                    input_gradient=False,
                    output_transform=self.output_transform,
                ).predictions.cpu()
                for start, stop in chunk_ranges(batch.shape[0], chunk)
            ]
        )
        bg_pred, fg_pred, swap_pred = cf_preds[:n], cf_preds[n : 2 * n], cf_preds[2 * n :]
        valid = cf.swap_valid.cpu()
        chance = self._chance_accuracy()
        bg_acc = float((bg_pred == labels).float().mean())
        fg_acc = float((fg_pred == labels).float().mean())
        flip = float((swap_pred[valid] != preds[valid]).float().mean()) if valid.any() else 0.0
        per_class = class_flip_rates(preds, swap_pred, labels, valid)
        score = shortcut_score(per_class)
        metrics.update(
            {
                "shortcut/background_only_accuracy": bg_acc,
                "shortcut/foreground_only_accuracy": fg_acc,
                "shortcut/foreground_only_drop": foreground_only_drop(
                    metrics["shortcut/probe_accuracy"], fg_acc, chance
                ),
                "shortcut/background_swap_flip_rate": flip,
                "shortcut/score": score,
            }
        )
        for c, rate in per_class.items():
            metrics[f"shortcut/background_swap_flip_rate/{self._class_tag(c)}"] = rate
        if len(per_class) > 2:  # with two classes a class's objects only ever land on the other's backgrounds
            for (c, b), rate in direction_flip_rates(preds, swap_pred, labels, cf.partners).items():
                metrics[f"shortcut/background_swap_flip_rate/{self._class_tag(c)}_on_{self._class_tag(b)}"] = rate
        self._worst_class = max(per_class, key=per_class.__getitem__) if per_class else None
        self.writer.scalars(trainer.loggers, metrics, step)
        self._write_layout(trainer)
        if self.panels:
            self._panel(step, preds, bg_pred, fg_pred, swap_pred, cf)
        self.verdict.min_accuracy = self.min_accuracy if self.min_accuracy is not None else (1.0 + chance) / 2
        was_active = self.verdict.active
        if self.verdict.update(score, metrics["shortcut/probe_accuracy"]):
            self._alert(trainer, step, metrics)
        elif was_active and not self.verdict.active:
            self._cleared(step, metrics)
        # the verdict's state on the loss curves' axis: 1 while an alert stands, 0 otherwise
        self.writer.scalars(trainer.loggers, {"shortcut/verdict": float(self.verdict.active)}, step)

    def _class_tag(self, c: int) -> str:
        assert self.probe is not None
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.probe.class_name(c)).strip("_") or str(c)

    def _worst_text(self, metrics: dict[str, float]) -> str:
        if self._worst_class is None:
            return "no valid background swap"
        assert self.probe is not None
        name = self._class_tag(self._worst_class)
        rate = metrics[f"shortcut/background_swap_flip_rate/{name}"]
        return (
            f"{rate:.0%} of the {self.probe.class_name(self._worst_class)!r} objects change prediction on the "
            f"background of another class (all swaps: {metrics['shortcut/background_swap_flip_rate']:.0%})"
        )

    def _cleared(self, step: int, metrics: dict[str, float]) -> None:
        text = (
            f"Shortcut alert cleared at step {step}: score {metrics['shortcut/score']:.2f} < {self.verdict.threshold} "
            f"({self._worst_text(metrics)}; accuracy with a neutral background "
            f"{metrics['shortcut/foreground_only_accuracy']:.0%}). It fires again after {self.verdict.patience} "
            "counting log steps."
        )
        self.clears.append(step)
        if self.on_shortcut != "ignore":
            self.writer.text("shortcut/alert", text, step)
            rank_zero_info(f"{self.name}: {text}")

    def _counterfactual_batch(self, images: Tensor) -> Any:
        if self._counterfactuals is None:
            assert self.probe is not None and self.probe.masks is not None
            self._counterfactuals = counterfactual_probes(images.float().cpu(), self.probe.masks, self.probe.targets)
        return self._counterfactuals

    def _panel(self, step: int, preds: Tensor, bg: Tensor, fg: Tensor, swap: Tensor, cf: Any) -> None:
        assert self.probe is not None
        shown = self._shown(self.max_panel_images)
        show = self.probe.display_images()[shown]
        p = self.probe

        def display(x: Tensor) -> Tensor:
            return to_display_images(x[shown].float(), p.mean, p.std, p.denormalize)

        captions = []
        for i in (int(j) for j in shown):
            true = p.class_name(int(p.targets[i]))
            captions += [
                f"#{i} original ({true})\npred: {p.class_name(int(preds[i]))}",
                f"object only\npred: {p.class_name(int(fg[i]))}",
                f"background only\npred: {p.class_name(int(bg[i]))}",
                f"bg swapped\npred: {p.class_name(int(swap[i]))}",
            ]

        def render() -> tuple[Tensor, list[tuple[int, int, int, int]]]:
            columns = [show, display(cf.foreground_only), display(cf.background_only), display(cf.swapped)]
            boxes: list[tuple[int, int, int, int]] = []
            return labelled_grid(torch.stack(columns, 1).flatten(0, 1), captions, ncol=4, cell_boxes=boxes), boxes

        self.writer.draw("shortcut/counterfactuals", step, render, per_probe=4, shown=shown)

    def _write_layout(self, trainer: pl.Trainer) -> None:
        if self._layout_written or self.writer.stage != "fit" or getattr(trainer, "ckpt_path", None):
            return  # written once per run, not again on resume
        self._layout_written = True
        t = self.writer.tag
        title = "probelens shortcut" + (f" ({self.name})" if self.writer.named else "")
        layout = {
            title: {
                "verdict": [
                    "Multiline",
                    [t("shortcut/score"), t("shortcut/verdict"), t("shortcut/probe_accuracy")],
                ],
                "background swaps (flip rate per class of the object)": [
                    "Multiline",
                    [t("shortcut/background_swap_flip_rate") + ".*"],
                ],
                "counterfactual accuracy": [
                    "Multiline",
                    [
                        t("shortcut/background_only_accuracy"),
                        t("shortcut/foreground_only_accuracy"),
                        t("shortcut/foreground_only_drop"),
                    ],
                ],
                "attribution on the object": [
                    "Multiline",
                    [t("shortcut/mask_attribution") + ".*", t("shortcut/relevance_rank_accuracy")],
                ],
                "loss": ["Multiline", [r".*loss.*"]],
            }
        }
        for logger in trainer.loggers:
            if is_tensorboard_logger(logger):
                cast(Any, logger).experiment.add_custom_scalars(layout)  # a TensorBoardLogger (checked above)

    def _alert(self, trainer: pl.Trainer, step: int, metrics: dict[str, float]) -> None:
        self.alerts.append(step)
        if self.on_shortcut == "ignore":
            return
        text = (
            f"Shortcut suspected at step {step} (epoch {trainer.current_epoch}): score {metrics['shortcut/score']:.2f} "
            f">= {self.verdict.threshold} for {self.verdict.patience} log steps: in a conflict the background wins, "
            f"{self._worst_text(metrics)}. With a neutral background the model scores "
            f"{metrics['shortcut/foreground_only_accuracy']:.0%} accuracy (drop "
            f"{metrics['shortcut/foreground_only_drop']:.2f}); with the object removed "
            f"{metrics['shortcut/background_only_accuracy']:.0%}. Grad-CAM mass on the object is "
            f"{metrics['shortcut/mask_attribution']:.2f} (chance {metrics['shortcut/mask_attribution_chance']:.2f})."
        )
        self.writer.text("shortcut/alert", text, step)
        rank_zero_warn(f"{self.name}: {text}")
        if self.on_shortcut == "stop":
            trainer.should_stop = True

    @override
    def _after_fire(self, trainer: pl.Trainer) -> None:
        if self.on_shortcut == "stop" and trainer.world_size > 1:
            # the verdict is computed on rank 0 only; every rank reaches this hook, so the broadcast is collective
            trainer.should_stop = bool(trainer.strategy.broadcast(trainer.should_stop, src=0))
