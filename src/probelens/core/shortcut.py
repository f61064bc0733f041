"""ShortcutMonitor: numbers, a verdict and an alert when the model decides by the background instead of the object."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, cast, get_args

import torch
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from probelens.core.base import MonitorCore, base_options
from probelens.core.options import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_names,
    check_single_layer,
    take_renamed,
)
from probelens.core.run import Run
from probelens.core.session import PassNeeds, SharedPass
from probelens.core.sinks import is_tensorboard_logger
from probelens.core.writer import Picture
from probelens.logformat import tag_segment
from probelens.methods.engine import OutputTransform
from probelens.methods.grad_cam import grad_cam_map
from probelens.methods.layers import LayerSpec, unwrap_compiled
from probelens.methods.layout import Layout
from probelens.methods.saliency import ONE_PASS_METHODS, saliency_from_pass
from probelens.metrics import (
    MASK_SENSITIVITY_LIMIT,
    CounterfactualBatch,
    CounterfactualProbes,
    ShortcutReport,
    ShortcutVerdict,
    check_growth,
    counterfactual_batch,
    group_gaps,
    mask_margin_caps,
    shortcut_report,
)
from probelens.metrics.shortcut_report import GROUP_SCALARS, MASK_SCALARS
from probelens.probe import ProbeSet
from probelens.render import labelled_grid, saliency_to_heat, to_display_images

Box = tuple[int, int, int, int]
OnShortcut = Literal["warn", "stop", "ignore"]
ON_SHORTCUT: tuple[str, ...] = get_args(OnShortcut)
MIN_PROBE_IMAGES = 16
"""Below this many probe images (or :data:`MIN_PROBE_PER_CLASS` in a class) ShortcutMonitor warns at setup."""
MIN_PROBE_PER_CLASS = 8
MIN_PROBE_PER_CELL = 8
"""Below this many probe images in a (class, group) cell ShortcutMonitor warns at setup, naming the cell."""
EVIDENCE = ("masks", "groups")
"""The evidence a verdict can rest on: foreground masks (background swaps) and group labels (accuracy per group)."""

SCALAR_TAGS = ("shortcut/score", *MASK_SCALARS, "shortcut/verdict")
"""Scalars logged at every log step of a probe with masks (besides per-class ones and the map metrics)."""
GROUP_SCALAR_TAGS = ("shortcut/score", *GROUP_SCALARS, "shortcut/armed", "shortcut/verdict")
"""Scalars logged at every log step of a probe with groups (besides ``shortcut/group_accuracy/<class>/<group>`` and
``shortcut/group_gap/<class>``)."""


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

    With group labels in the probe set (``ProbeSet(groups=..., group_names=...)``, e.g. the background, the hospital
    or the scanner of each image) it logs ``shortcut/group_accuracy/<class>/<group>`` (accuracy per cell),
    ``shortcut/group_gap/<class>`` (the gap between the class's best and worst group),
    ``shortcut/worst_group_accuracy`` and ``shortcut/agreeing_group_accuracy`` (per class the accuracy of its best
    group, i.e. for a shortcut model its cue-agreeing cell; the worst class's), and the group score: the largest
    within-class accuracy gap between groups, ``max_c (max_g acc[c,g] - min_g acc[c,g])``
    (:func:`probelens.metrics.group_reliance_score`, which says why this statistic). It is on the 0-1 scale of the
    mask score (a pure shortcut model on a probe balanced over the cells scores 1, an object model ~0) and drives
    ``shortcut/score``, ``shortcut/verdict``, the alert, patience and clearing the same way. With groups the
    verdicts are armed by ``shortcut/agreeing_group_accuracy``, not the probe accuracy: on a probe balanced over
    (class, group) cells a pure shortcut model scores exactly chance overall. With masks and groups both, each
    evidence has its own verdict, both scores are logged (``shortcut/score/masks``, ``shortcut/score/groups``;
    ``shortcut/score`` is the larger), ``shortcut/verdict`` is 1 while either alert stands, and the alert text names
    the evidence that fired (:attr:`alert_evidence` keeps it per alert).

    ``shortcut/armed`` is 1 at a log step whose score can count (the gate accuracy is at least ``min_accuracy``) and
    0 otherwise; the first unarmed step is said once (a warning when it held back a score at or above the threshold).
    A step whose model outputs are NaN/Inf logs its numbers as NaN (said once); the verdict neither counts nor clears.

    Without masks or groups only the map drift is logged, and one message says that masks or groups enable the
    verdict. A probe with masks or groups and a single class is refused at setup (the verdict compares classes).

    The detection uses only the model, the probe images, their labels and masks. It assumes masks that cover the object
    and little background; masks that include background context leak it into "object only" and weaken the verdict.
    Masks as users have them: each mask is fitted to its object from the image (grown until what lies just outside
    it looks like the background, shrunk for pasting while what lies just inside it does;
    :func:`probelens.metrics.fit_mask_margins`), and a leakage
    check computed from the counterfactual images (the object removed with a wider region) gives
    ``shortcut/mask_sensitivity``, how far the mask score moves with the mask boundary; at
    :data:`~probelens.metrics.MASK_SENSITIVITY_LIMIT` or more (at an armed step) one warning says the mask verdict is
    unreliable (the masks look tight); masks much tighter or looser than the objects (boxes) are also said once, with
    ``shortcut/mask_outside_object`` and ``shortcut/mask_inside_background``; soft mattes thresholded loosely (a band
    of object-background blends along the mask's inner edge) are re-composited with an estimated alpha and said once,
    with ``shortcut/mask_loose_matte``. The evaluation itself is the pure function
    :func:`probelens.metrics.shortcut_report`; the counterfactual copies run through the shared probe session.

    Args:
        probe: the probe set, ideally with ``masks`` and/or ``groups``.
        layers: the Grad-CAM layer (one); ``"auto"`` takes the deepest stage.
        saliency_methods: one-pass saliency methods whose mask attribution is also logged.
        on_shortcut: ``"warn"``, ``"stop"`` or ``"ignore"`` (still logs the numbers).
        threshold: score (worst-class flip rate) at or above which a log step counts towards the verdict.
        patience: consecutive counting log steps before the verdict fires.
        min_accuracy: accuracy a model needs before its score counts (default: halfway between chance and 1): the
            probe accuracy, or with groups the accuracy of each class's best group (worst class).
        mask_margin: ``None`` (default): fit each mask to its object (see above), so a tight mask leaves no ghost
            of the object behind when it is removed and a loose one carries less background when pasted; an int:
            grow every mask by that many pixels to remove the object and paste it as given (0: masks as given).
        panels: log the counterfactual image panel.
        max_images: probe images in the panel.
        every_n_epochs: fire at the end of every n-th epoch (every epoch by default).
        every_n_steps, log_at_start, probe_size, probe_seed, probe_input_key, probe_target_key,
            max_image_side, max_bytes_per_firing, output_transform, name: as for :class:`ProbeMonitor`.
    """

    def __init__(
        self,
        probe: ProbeSet | None = None,
        layers: LayerSpec = "auto",
        *,
        saliency_methods: Sequence[str] = ("vanilla",),
        on_shortcut: OnShortcut = "warn",
        threshold: float = 0.5,
        patience: int = 2,
        min_accuracy: float | None = None,
        mask_margin: int | None = None,
        panels: bool = True,
        max_images: int = 8,
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
        **deprecated: Any,
    ) -> None:
        layers, max_images = take_renamed(
            type(self).__name__,
            deprecated,
            {"layer": ("layers", layers, "auto"), "max_panel_images": ("max_images", max_images, 8)},
        )
        super().__init__(probe, **base_options(locals()))
        owner = type(self).__name__
        check_choice(owner, "on_shortcut", on_shortcut, ON_SHORTCUT)
        check_single_layer(owner, "layers", layers)
        no_methods = isinstance(saliency_methods, (list, tuple)) and not saliency_methods  # () is allowed: none
        methods = [] if no_methods else check_names(owner, "saliency_methods", saliency_methods, ONE_PASS_METHODS)
        check_float(owner, "threshold", threshold, 0.0, 1.0, low_open=True)
        check_int(owner, "patience", patience)
        check_float(owner, "min_accuracy", min_accuracy, 0.0, 1.0, none_ok=True)
        check_int(owner, "mask_margin", mask_margin, 0, none_ok=True, fix="pixels; None fits each mask to its object")
        check_bool(owner, "panels", panels)
        check_int(owner, "max_images", max_images)
        self.layer_spec = layers
        self.saliency_methods = methods
        self.on_shortcut = on_shortcut
        self.min_accuracy = min_accuracy
        self.mask_margin = mask_margin
        self.panels = panels
        self.max_images = max_images
        self.threshold = threshold
        self.patience = patience
        self._layer: dict[str, nn.Module] = {}
        self._layouts: dict[str, Layout] = {}
        self._warned_small_probe = False
        self._warned_small_cells = False
        self._cf_session: SharedPass | None = None
        self._cf_needs = PassNeeds(output_transform=output_transform)
        self.reset_history()

    @override
    def reset_history(self) -> None:
        self.verdicts = {e: ShortcutVerdict(threshold=self.threshold, patience=self.patience) for e in EVIDENCE}
        """One verdict per evidence (``"masks"``, ``"groups"``), each with its own streak, gate and alert state."""
        self.alerts: list[int] = []
        self.clears: list[int] = []
        self.alert_evidence: list[tuple[str, ...]] = []
        """Per alert in :attr:`alerts`, the evidence whose verdict fired."""
        self._first_cam: Tensor | None = None
        self._previous_cam: Tensor | None = None
        self._counterfactuals: CounterfactualBatch | None = None
        self._cf_probe: ProbeSet | None = None
        self._said_mask_sensitivity = False
        self._worst_class: int | None = None
        self._layout_written = False
        self._said_no_masks = False
        self._said_nonfinite = False
        self._said_unarmed: set[str] = set()
        self._cells: dict[tuple[int, int], float] = {}

    def __getstate__(self) -> dict[str, Any]:
        # like the shared pass, the counterfactuals' session (device tensors) is the run's, not the copy's
        state = super().__getstate__()
        state["_cf_session"] = None
        return state

    @property
    def verdict(self) -> ShortcutVerdict:
        """The verdict of the probe's evidence: its masks' (background swaps) when it has masks, else its groups'."""
        if self.probe is not None and self.probe.masks is None and self.probe.groups is not None:
            return self.verdicts["groups"]
        return self.verdicts["masks"]

    @property
    def active(self) -> bool:
        """Whether an alert stands (on any evidence): what ``shortcut/verdict`` logs."""
        return any(v.active for v in self.verdicts.values())

    @override
    def state_dict(self) -> dict[str, Any]:
        # the drift references travel too: after a resume drift_first still compares with the first map of the run
        return {
            **super().state_dict(),
            "verdict": self.verdicts["masks"].state_dict(),
            "group_verdict": self.verdicts["groups"].state_dict(),
            "alerts": list(self.alerts),
            "clears": list(self.clears),
            "alert_evidence": [list(e) for e in self.alert_evidence],
            "first_cam": self._first_cam,
            "previous_cam": self._previous_cam,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.verdicts["masks"].load_state_dict(state_dict.get("verdict", {}))
        self.verdicts["groups"].load_state_dict(state_dict.get("group_verdict", {}))
        self.alerts = [int(s) for s in state_dict.get("alerts", [])]
        self.clears = [int(s) for s in state_dict.get("clears", [])]
        self.alert_evidence = [tuple(str(x) for x in e) for e in state_dict.get("alert_evidence", [])]
        self._first_cam = state_dict.get("first_cam")
        self._previous_cam = state_dict.get("previous_cam")

    @override
    def configure(self, pl_module: nn.Module) -> None:
        self._check_probe_size()  # before the layers: a probe the verdict cannot use is refused whatever the model
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
        # the counterfactual copies go through the session machinery (chunking to the memory budget, the sharded
        # path, inputs cached on the model's device): forward only, no layer, no gradient. A session of their own:
        # no other monitor reads them, and the shared session's forward_count keeps counting probe passes only
        self._cf_needs = PassNeeds({}, False, False, set(), self.output_transform)
        self._cf_session = None  # created at the first firing of this configuration

    def _evidence(self) -> list[str]:
        """The evidence the probe gives: ``"masks"`` and/or ``"groups"``."""
        assert self.probe is not None
        return [
            e
            for e, have in (("masks", self.probe.masks is not None), ("groups", self.probe.groups is not None))
            if have
        ]

    def _check_probe_size(self) -> None:
        """Refuse a probe the verdict cannot use (a single class: no background swap, no chance level below 1); warn
        when it is too small for the verdict: its accuracies move in steps of 1/N (1/n_c per class, 1/n per cell)."""
        assert self.probe is not None
        evidence = self._evidence()
        if not evidence:
            return
        counts = torch.bincount(self.probe.targets.cpu())
        classes = [c for c in range(len(counts)) if counts[c] > 0]
        if len(classes) < 2:
            raise ValueError(
                f"{self.name}: the probe set has {len(self.probe)} image(s), all of class "
                f"{self.probe.class_name(classes[0])!r}; the shortcut verdict ({' and '.join(evidence)}) compares "
                "classes (a background swap pairs images of different classes, and accuracy must be able to beat "
                "chance), so it needs images of at least 2 classes: at least 2 images (1 per class) work, "
                f"{MIN_PROBE_IMAGES} with {MIN_PROBE_PER_CLASS} per class are recommended "
                "(ProbeSet.from_dataset(val_dataset, num_samples=32, per_class=True))"
            )
        smallest = int(counts[counts > 0].min())
        if not self._warned_small_probe and (len(self.probe) < MIN_PROBE_IMAGES or smallest < MIN_PROBE_PER_CLASS):
            self._warned_small_probe = True
            rank_zero_warn(
                f"{self.name}: the shortcut probe has {len(self.probe)} images ({smallest} in its smallest class), "
                f"so its accuracies and flip rate move in steps of 1/{len(self.probe)} (1/{smallest} within a class) "
                f"and the verdict rests on few images; use at least {MIN_PROBE_IMAGES} images and "
                f"{MIN_PROBE_PER_CLASS} per class (ProbeSet.from_dataset(..., num_samples=32, per_class=True))."
            )
        if self.probe.groups is not None and not self._warned_small_cells:
            groups = self.probe.groups.cpu()
            targets = self.probe.targets.cpu()
            tiny = [
                f"(class {self.probe.class_name(c)!r}, group {self.probe.group_name(g)!r}): {n}"
                for c in classes
                for g in range(self.probe.num_groups)
                if (n := int(((targets == c) & (groups == g)).sum())) < MIN_PROBE_PER_CELL
            ]
            if tiny:
                self._warned_small_cells = True
                rank_zero_warn(
                    f"{self.name}: the probe's (class, group) cells {', '.join(tiny)} hold fewer than "
                    f"{MIN_PROBE_PER_CELL} images, so their accuracies (and the within-class gap, the group score) "
                    "move in coarse steps and a few images decide the verdict; pick the probe balanced over the cells "
                    f"with {MIN_PROBE_PER_CELL} or more each (ProbeSet.from_dataset(..., groups=..., per_group=True, "
                    f"num_samples={MIN_PROBE_PER_CELL * len(classes) * self.probe.num_groups}))."
                )

    def _chance_accuracy(self) -> float:
        assert self.probe is not None
        counts = torch.bincount(self.probe.targets.cpu()).float()
        return float(counts.max() / counts.sum())

    @override
    def explain(self, step: int, pl_module: nn.Module, trainer: Run) -> None:
        """Evaluate (:func:`probelens.metrics.shortcut_report`, a pure function over the shared pass's outputs),
        then log the report, draw the panel and feed the verdicts."""
        assert self.probe is not None
        report = self._evaluate(pl_module, step)
        self._report(trainer, step, report)

    def _evaluate(self, pl_module: nn.Module, step: int) -> ShortcutReport:
        """The step's :class:`~probelens.metrics.ShortcutReport`: the probe through the shared pass, and with masks
        the counterfactual batch through a probe session of its own (forward only, its images kept on the model's
        device)."""
        assert self.probe is not None and self._shared is not None
        result = self._pass(pl_module, step)
        name = next(iter(self._layer))
        layout = self._layouts[name]  # channels-last and token layers viewed as [N, C, h, w]
        cam = grad_cam_map(
            layout.to_nchw(result.activations[name]),
            layout.to_nchw(result.gradients["pred"][name]),
            self.probe.image_size,
        )
        masks = self.probe.masks
        cf: CounterfactualBatch | None = None
        cf_logits: Tensor | None = None
        saliency: dict[str, Tensor] = {}
        if masks is not None and bool(torch.isfinite(result.logits).all()):
            cf = self._counterfactual_batch()
            model = unwrap_compiled(pl_module)
            assert self._cf_probe is not None
            if self._cf_session is None:
                self._cf_session = SharedPass()
            cf_logits = self._cf_session.get(model, self._cf_probe, step, self._cf_needs).logits
            self._cf_session.release()  # nothing shares this pass: keep only its images (cached on the device)
            saliency = {
                m: saliency_to_heat(saliency_from_pass(result, "pred", m).float(), "abs_sum")
                for m in self.saliency_methods
            }
        p = self.probe
        return shortcut_report(
            result.logits,
            p.targets,
            class_tags=[self._class_tag(c) for c in range(int(result.logits.shape[1]))],
            group_tags=[self._group_tag(g) for g in range(p.num_groups)] if p.groups is not None else (),
            cam=cam,
            saliency=saliency,
            masks=masks,
            groups=p.groups,
            counterfactuals=cf,
            counterfactual_logits=cf_logits,
            previous_cam=self._previous_cam,
            first_cam=self._first_cam,
        )

    def _report(self, trainer: Run, step: int, report: ShortcutReport) -> None:
        """Log a report: its scalars, the drift references, the layout, the panel, the mask check and the verdicts."""
        assert self.probe is not None
        evidence = self._evidence()
        if report.cam is not None:
            if not report.cam_finite:  # finite outputs, non-finite gradients (an overflow): no map number, no reference
                self._warn_nonfinite(step, "the Grad-CAM maps (finite outputs, non-finite gradients)")
            else:
                cam = report.cam.detach().cpu()  # the references travel in checkpoints: kept on the CPU
                if self._first_cam is None:
                    self._first_cam = cam
                self._previous_cam = cam
        if report.nonfinite is not None:
            self._warn_nonfinite(step, report.nonfinite)
            scalars = dict(report.scalars)
            if evidence:
                scalars["shortcut/verdict"] = math.nan
                for e in evidence:
                    self.verdicts[e].update(math.nan, math.nan)  # recorded in the history, nothing else changes
            self.writer.scalars(scalars, step)
            return
        self._worst_class = report.worst_class
        self._cells = report.cells
        if not evidence:
            if not self._said_no_masks:
                self._said_no_masks = True
                rank_zero_warn(
                    f"{self.name}: the probe set has no foreground masks, so only map drift is logged. Give "
                    "ProbeSet(masks=...) (from the dataset, boxes or a function) or group labels "
                    "(ProbeSet(groups=..., group_names=...)) to enable the shortcut verdict."
                )
            self.writer.scalars(report.scalars, step)
            return
        self.writer.scalars(report.scalars, step)
        self._write_layout(trainer)
        if self.panels and report.counterfactual_predictions is not None and report.predictions is not None:
            assert self._counterfactuals is not None
            self._panel(step, report.predictions, *report.counterfactual_predictions, self._counterfactuals.probes)
        self._check_masks(step, report)
        self._update_verdicts(trainer, step, report.scores, report.gate, report.chance, report.scalars)

    def _check_masks(self, step: int, report: ShortcutReport) -> None:
        """Once per run: at a step where the model is armed, the mask score moves by
        :data:`~probelens.metrics.MASK_SENSITIVITY_LIMIT` or more under the leakage check (the object removed with
        a wider region), so the mask verdict rests on the mask boundary: a warning that says so."""
        sensitivity = report.mask_sensitivity
        if sensitivity is None or self._said_mask_sensitivity or math.isnan(sensitivity):
            return
        min_accuracy = self.min_accuracy if self.min_accuracy is not None else (1.0 + report.chance) / 2
        if sensitivity < MASK_SENSITIVITY_LIMIT or not report.gate >= min_accuracy:
            return
        self._said_mask_sensitivity = True
        assert self.probe is not None
        score = report.scores["masks"]
        cause = (
            f"removing the object with a region {check_growth(self.probe.image_size)} px wider moves it by "
            f"{sensitivity:.2f}: the masks look tight (part of the object, e.g. a soft edge, lies outside them and "
            "stays in the 'background'); grow them (mask_margin=<pixels>)"
        )
        rank_zero_warn(
            f"{self.name}: the mask verdict is unreliable at step {step}: its score {score:.2f} depends on where the "
            f"mask boundary lies, not only on the model: {cause}. shortcut/mask_sensitivity logs this per step "
            f"(>= {MASK_SENSITIVITY_LIMIT} is unreliable; said once). Group labels (ProbeSet(groups=...)) give a "
            "verdict that needs no masks."
        )

    def _update_verdicts(
        self,
        trainer: Run,
        step: int,
        scores: dict[str, float],
        gate: float,
        chance: float,
        metrics: dict[str, float],
    ) -> None:
        """Feed each evidence's verdict; alert for those that fire, clear when none stands any more; log
        ``shortcut/armed`` and ``shortcut/verdict``."""
        min_accuracy = self.min_accuracy if self.min_accuracy is not None else (1.0 + chance) / 2
        was_active = self.active
        fired: list[str] = []
        armed: dict[str, float] = {}
        for e, score in scores.items():
            verdict = self.verdicts[e]
            verdict.min_accuracy = min_accuracy
            armed[e] = float(verdict.armed(gate))
            if not armed[e]:
                self._say_unarmed(e, step, score, gate, min_accuracy)
            if verdict.update(score, gate):
                fired.append(e)
        if fired:
            self._alert(trainer, step, metrics, fired)
        elif was_active and not self.active:
            self._cleared(step, metrics, list(scores))
        # the verdict's state on the loss curves' axis: 1 while an alert stands, 0 otherwise
        extra = {f"shortcut/armed/{e}": a for e, a in armed.items()} if len(armed) > 1 else {}
        self.writer.scalars(
            {"shortcut/armed": max(armed.values()), **extra, "shortcut/verdict": float(self.active)},
            step,
        )

    def _gate_name(self) -> str:
        assert self.probe is not None
        if self.probe.groups is not None:
            return "the accuracy of each class's best group (its cue-agreeing cell), worst class,"
        return "the probe accuracy"

    def _say_unarmed(self, evidence: str, step: int, score: float, gate: float, min_accuracy: float) -> None:
        """Once per evidence and run: the verdict is not armed (the model is not better than chance where it should
        be). A warning when that holds back a score at or above the threshold, else an info line."""
        counted = score >= self.threshold
        if evidence in self._said_unarmed:
            return
        self._said_unarmed.add(evidence)
        text = (
            f"{self.name}: the {evidence} verdict is not armed at step {step}: {self._gate_name()} "
            f"{gate:.2f} < min_accuracy {min_accuracy:.2f}, so a step's score counts neither towards an alert nor "
            "towards clearing one (an untrained or collapsed model has no shortcut to report). shortcut/armed logs "
            "this per step (1 armed, 0 not); lower min_accuracy= to arm it earlier."
        )
        if evidence == "masks" and self.probe is not None and self.probe.groups is None:
            text += (
                " If the probe is balanced over the attribute you suspect (as many images agree with the class as "
                "conflict), a model that follows that attribute scores chance on it: give the attribute as "
                "ProbeSet(groups=...) and the verdict is armed by each class's best group instead."
            )
        if counted:
            rank_zero_warn(f"{text} This step's score {score:.2f} >= threshold {self.threshold} was not counted.")
        else:
            rank_zero_info(text)

    def _warn_nonfinite(self, step: int, where: str) -> None:
        if not self._said_nonfinite:
            self._said_nonfinite = True
            rank_zero_warn(
                f"{self.name}: non-finite values (NaN/Inf) in {where} at step {step}: this step's shortcut numbers "
                "are logged as NaN, never as numbers computed from NaN, and the verdict neither counts nor clears "
                "(said once; later such steps are NaN too). The model's weights or outputs are probably diverging "
                "(check the loss and the learning rate)."
            )

    def _class_tag(self, c: int) -> str:
        assert self.probe is not None
        return tag_segment(self.probe.class_name(c), str(c))

    def _group_tag(self, g: int) -> str:
        assert self.probe is not None
        return tag_segment(self.probe.group_name(g), str(g))

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

    def _worst_group_text(self, metrics: dict[str, float]) -> str:
        """The class with the largest gap, its best and its worst group."""
        assert self.probe is not None
        cells = self._cells
        gaps = group_gaps(cells)
        c = max(gaps, key=gaps.__getitem__)
        mine = {g: a for (k, g), a in cells.items() if k == c}
        best = max(mine, key=mine.__getitem__)
        worst = min((g for g in mine if g != best), key=mine.__getitem__)  # two distinct groups, also at gap 0
        p = self.probe
        return (
            f"within class {p.class_name(c)!r} the accuracy is {mine[best]:.0%} in group {p.group_name(best)!r} but "
            f"{mine[worst]:.0%} in group {p.group_name(worst)!r} (worst group accuracy "
            f"{metrics['shortcut/worst_group_accuracy']:.0%})"
        )

    def _evidence_text(self, evidence: str, metrics: dict[str, float]) -> str:
        score = metrics.get(f"shortcut/score/{evidence}", metrics["shortcut/score"])
        if evidence == "groups":
            return f"group labels (score {score:.2f}: {self._worst_group_text(metrics)})"
        return f"masks (score {score:.2f}: {self._worst_text(metrics)})"

    def _cleared(self, step: int, metrics: dict[str, float], evidence: list[str]) -> None:
        if evidence == ["masks"]:
            text = (
                f"Shortcut alert cleared at step {step}: score {metrics['shortcut/score']:.2f} < "
                f"{self.verdict.threshold} ({self._worst_text(metrics)}; accuracy with a neutral background "
                f"{metrics['shortcut/foreground_only_accuracy']:.0%}). It fires again after {self.verdict.patience} "
                "counting log steps."
            )
        else:
            text = (
                f"Shortcut alert cleared at step {step}: every score < {self.threshold} ("
                + "; ".join(self._evidence_text(e, metrics) for e in evidence)
                + f"). It fires again after {self.patience} counting log steps."
            )
        self.clears.append(step)
        if self.on_shortcut != "ignore":
            self.writer.text("shortcut/alert", text, step)
            rank_zero_info(f"{self.name}: {text}")

    def _counterfactual_batch(self) -> CounterfactualBatch:
        """The probe's counterfactual copies, built once per run with the mask margin, and a probe set of them that
        the shared session runs (its images are cached on the model's device, so a firing moves no image)."""
        if self._counterfactuals is None:
            assert self.probe is not None and self.probe.masks is not None
            cf = counterfactual_batch(
                self.probe.images.float(), self.probe.masks, self.probe.targets, margin=self.mask_margin
            )
            self._say_mask_fit(cf)
            self._counterfactuals = cf
            self._cf_probe = ProbeSet(images=cf.images, targets=cf.targets)
        return self._counterfactuals

    def _say_mask_fit(self, cf: CounterfactualBatch) -> None:
        """Once per run, when the masks were fitted: an info line when the fit moved them, a warning when a quarter of
        the masks or more still looked wrong at the largest margin (the mask verdict cannot be trusted then), and a
        warning when a quarter or more were soft mattes thresholded loosely (re-composited with an estimated alpha)."""
        fit = cf.fit
        if fit is None:
            return
        n = len(fit.grown)
        grown, shrunk = int((fit.grown > 0).sum()), int((fit.shrunk > 0).sum())
        if grown or shrunk:

            def moved(px: Tensor) -> str:  # the median over the masks that moved: the others are 0 px
                return f" (median {float(px[px > 0].float().median()):.0f} px)" if bool((px > 0).any()) else ""

            rank_zero_info(
                f"{self.name}: fitted the probe's masks to their objects: {grown} of {n} grown{moved(fit.grown)} to "
                f"remove the object, {shrunk} of {n} shrunk{moved(fit.shrunk)} to paste it. "
                "shortcut/mask_outside_object and "
                "shortcut/mask_inside_background log how the given masks looked (about 0.05 and 0 on the object's "
                "outline); mask_margin=0 keeps the masks as given."
            )
        tight, loose = int(fit.grow_capped.sum()), int(fit.shrink_capped.sum())
        if 4 * max(tight, loose) >= n:
            assert self.probe is not None
            caps = mask_margin_caps(self.probe.image_size)
            what = (
                f"{tight} of {n} masks still had object just outside them after growing by {caps[0]} px (masks "
                "much tighter than the object)"
                if tight >= loose
                else f"{loose} of {n} masks still had background just inside them after shrinking by {caps[1]} px "
                "(masks much looser than the object, e.g. boxes)"
            )
            rank_zero_warn(
                f"{self.name}: the probe's masks do not follow the objects: {what}. The mask verdict rests on edited "
                "images that keep part of the object in the background or carry background with the object, so it "
                "may miss a shortcut or raise a false alarm; shortcut/mask_outside_object and "
                "shortcut/mask_inside_background log it. Give masks on the object's outline, or group labels "
                "(ProbeSet(groups=...)), which need no masks."
            )
        if fit.object_alpha is not None:
            mattes = fit.loose_matte
            weight = float(fit.matte_background[mattes].nanmean())
            rank_zero_warn(
                f"{self.name}: the probe's masks look like soft mattes thresholded loosely: {int(mattes.sum())} of "
                f"{n} masks have a band of mixed pixels (object and background blended) along their inner edge, so "
                f"the objects they cut out carry about {weight:.0%} of their own background by weight; pasted as "
                "they are, a background model still reads that background in them and the mask score under-reports "
                "reliance. The pasted objects were re-composited with an alpha estimated from the image's "
                "background and object colours (their own background's share replaced by the new background's), "
                "which assumes a background of about one colour around each object. Threshold the matte near 0.5 "
                "(or give masks on the object's outline) for a verdict that rests on no estimate; "
                "shortcut/mask_loose_matte logs the share of such masks, mask_margin=0 pastes them as given."
            )

    def _panel(self, step: int, preds: Tensor, bg: Tensor, fg: Tensor, swap: Tensor, cf: CounterfactualProbes) -> None:
        assert self.probe is not None
        shown = self._shown(self.max_images)
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

        columns = [show, display(cf.foreground_only), display(cf.background_only), display(cf.swapped)]
        boxes: list[Box] = []
        map_boxes: list[Box] = []  # each picture's own box, without its caption: the dashboard crops exactly
        tiles = torch.stack(columns, 1).flatten(0, 1)
        grid = labelled_grid(tiles, captions, ncol=4, cell_boxes=boxes, map_boxes=map_boxes)
        tag = "shortcut/counterfactuals"
        self.writer.picture(Picture.grid(tag, step, grid, boxes, shown=shown, per_probe=4, map_boxes=map_boxes))

    def _write_layout(self, trainer: Run) -> None:
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
        assert self.probe is not None
        if self.probe.groups is not None:
            charts = layout[title]
            charts["accuracy per (class, group)"] = [
                "Multiline",
                [
                    t("shortcut/group_accuracy") + "/.*",
                    t("shortcut/worst_group_accuracy"),
                    t("shortcut/agreeing_group_accuracy"),
                ],
            ]
            charts["within-class gap between groups"] = ["Multiline", [t("shortcut/group_gap") + "/.*"]]
            if self.probe.masks is None:
                for key in (
                    "background swaps (flip rate per class of the object)",
                    "counterfactual accuracy",
                    "attribution on the object",
                ):
                    del charts[key]
        for logger in trainer.loggers:
            if is_tensorboard_logger(logger):
                cast(Any, logger).experiment.add_custom_scalars(layout)  # a TensorBoardLogger (checked above)

    def _alert(self, trainer: Run, step: int, metrics: dict[str, float], fired: list[str]) -> None:
        self.alerts.append(step)
        self.alert_evidence.append(tuple(fired))
        if self.on_shortcut == "ignore":
            return
        standing = [e for e in self.verdicts if e not in fired and self.verdicts[e].active]
        if fired == ["masks"] and not standing and self.probe is not None and self.probe.groups is None:
            text = (
                f"Shortcut suspected at step {step} (epoch {trainer.current_epoch}): score "
                f"{metrics['shortcut/score']:.2f} >= {self.threshold} for {self.patience} log steps: in a conflict "
                f"the background wins, {self._worst_text(metrics)}. With a neutral background the model scores "
                f"{metrics['shortcut/foreground_only_accuracy']:.0%} accuracy (drop "
                f"{metrics['shortcut/foreground_only_drop']:.2f}); with the object removed "
                f"{metrics['shortcut/background_only_accuracy']:.0%}. Grad-CAM mass on the object is "
                f"{metrics['shortcut/mask_attribution']:.2f} "
                f"(chance {metrics['shortcut/mask_attribution_chance']:.2f})."
            )
        else:
            details = "; ".join(self._evidence_text(e, metrics) for e in fired)
            text = (
                f"Shortcut suspected at step {step} (epoch {trainer.current_epoch}), evidence: {' and '.join(fired)}: "
                f"score >= {self.threshold} for {self.patience} log steps on {details}."
            )
            if "groups" in fired:
                text += (
                    " The model is right where the group agrees with the class and wrong where it does not: it "
                    "decides by the group's attribute, not the object."
                )
            if "masks" in fired:
                text += (
                    f" With the object removed it scores {metrics['shortcut/background_only_accuracy']:.0%}, with a "
                    f"neutral background {metrics['shortcut/foreground_only_accuracy']:.0%}."
                )
            if standing:
                text += f" (The {' and '.join(standing)} alert already stands.)"
            elif self.probe is not None and len(self._evidence()) > 1:
                other = [e for e in self._evidence() if e not in fired]
                if other:
                    text += f" The {' and '.join(other)} evidence has not fired (yet)."
        self.writer.text("shortcut/alert", text, step)
        rank_zero_warn(f"{self.name}: {text}")
        if self.on_shortcut == "stop":
            trainer.should_stop = True

    @override
    def after_firing(self, trainer: Run) -> None:
        if self.on_shortcut == "stop" and trainer.world_size > 1:
            # the verdict is computed on rank 0 only; every rank reaches this hook, so the broadcast is collective
            trainer.should_stop = bool(trainer.strategy.broadcast(trainer.should_stop, src=0))
