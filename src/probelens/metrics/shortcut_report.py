"""Shortcut evaluation as a pure function: the model's outputs on the probe and on its counterfactual copies in, one
:class:`ShortcutReport` out (every scalar ``ShortcutMonitor`` logs, the score per evidence, the accuracy that arms
the verdict, and what the counterfactual panel shows). No Lightning, no writer, no forward pass: the caller runs the
probe and :attr:`CounterfactualBatch.images` through the model (``ShortcutMonitor`` does it through the shared probe
pass, on the model's device) and hands the logits in.

Masks as users have them (:func:`counterfactual_batch`): each mask is first fitted to its object from the image
itself (:func:`~probelens.metrics.fit_mask_margins`): grown until what lies just outside it looks like the
background (a tight mask leaves no ghost of the object behind when it is removed), and for the pasted object shrunk
while what lies just inside it looks like the background (a loose mask or a box carries less of its own background
along). A mask on the object's outline is left as it is. One more set of swaps is the leakage check, computed from the
counterfactual images themselves: the object removed with a wider region (does object left outside the mask
decide?). ``shortcut/mask_sensitivity`` is how far the mask score moves under it; a verdict that moves by
:data:`MASK_SENSITIVITY_LIMIT` or more rests on where the mask boundary lies, not on the model (``ShortcutMonitor``
says so once). A check that pastes a smaller object was tried and dropped: it moves object models' scores by
0.25-0.50 on exact masks (a smaller object is weaker evidence), so it cannot tell a loose mask from a good one;
loose masks and boxes are found from the images instead (:attr:`~probelens.metrics.MaskFit.inside_background`), and
so are soft mattes thresholded loosely, whose objects are then pasted with an estimated alpha
(:attr:`~probelens.metrics.MaskFit.loose_matte`, ``shortcut/mask_loose_matte``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from probelens.metrics.counterfactual import (
    CounterfactualProbes,
    MaskFit,
    background_only,
    counterfactual_probes,
    fit_mask_margins,
    grow_masks,
    paste_objects,
)
from probelens.metrics.drift import map_drift
from probelens.metrics.localisation import mask_area, relevance_mass, relevance_rank_accuracy
from probelens.metrics.shortcut import (
    agreeing_group_accuracy,
    class_flip_rates,
    direction_flip_rates,
    foreground_only_drop,
    group_accuracies,
    group_gaps,
    group_reliance_score,
    shortcut_score,
)

MASK_SENSITIVITY_LIMIT = 0.25
"""A mask score that moves by this much or more when the mask margins double is called unreliable."""

MASK_SCALARS = (
    "shortcut/mask_attribution",
    "shortcut/mask_attribution_chance",
    "shortcut/background_only_accuracy",
    "shortcut/foreground_only_accuracy",
    "shortcut/background_swap_flip_rate",
    "shortcut/foreground_only_drop",
)
GROUP_SCALARS = ("shortcut/worst_group_accuracy", "shortcut/agreeing_group_accuracy")


def mask_margin_caps(image_size: Sequence[int]) -> tuple[int, int]:
    """The largest growth and shrinkage (pixels) the fitted masks may take for images of ``image_size`` ``(H, W)``:
    an eighth and a sixteenth of the shorter side (4 and 2 pixels at 32 px)."""
    side = min(int(image_size[0]), int(image_size[1]))
    return max(1, side // 8), max(1, side // 16)


def check_growth(image_size: Sequence[int]) -> int:
    """The leakage check's extra growth (pixels) for images of ``image_size``: a sixteenth of the shorter side, at
    least 1 (2 pixels at 32 px)."""
    return max(1, min(int(image_size[0]), int(image_size[1])) // 16)


@dataclass
class CounterfactualBatch:
    """The counterfactual copies of a probe batch, in one tensor for one forward pass.

    Attributes:
        probes: the copies the verdict uses (:func:`~probelens.metrics.counterfactual_probes`); its
            ``removal_masks`` / ``object_masks`` are the regions removed and kept.
        fit: how the masks were fitted to the objects (:func:`~probelens.metrics.fit_mask_margins`), or ``None`` with
            a fixed margin.
        margin: the fixed removal margin in pixels, or ``None`` (fitted per image).
        check_grown: the swaps with the object removed by a region grown by :func:`check_growth` more pixels (does
            object left outside a tight mask decide?), or ``None``.
        images: ``[background_only; foreground_only; swapped; check_grown]`` stacked ``[3N or 4N, C, H, W]``.
        targets: the probe's labels repeated per copy (the class of each copy's object).
    """

    probes: CounterfactualProbes
    fit: MaskFit | None
    margin: int | None
    check_grown: Tensor | None
    images: Tensor
    targets: Tensor


def counterfactual_batch(
    images: Tensor,
    masks: Tensor,
    targets: Tensor,
    margin: int | None = None,
    check: bool = True,
    seed: int = 0,
) -> CounterfactualBatch:
    """Build the counterfactual copies of a probe batch, and (with ``check``) the leakage check: the swaps with the
    removal region grown further. Built once per run where ``images`` are; the forward passes read the stacked
    :attr:`CounterfactualBatch.images`.

    Args:
        images: ``[N,C,H,W]`` probe images (model inputs).
        masks: ``[N,1,H,W]`` bool foreground masks.
        targets: ``[N]`` labels.
        margin: ``None`` (default): fit each mask to its object (:func:`~probelens.metrics.fit_mask_margins`, within
            :func:`mask_margin_caps`); an int: grow every mask by that many pixels to remove the object and paste it
            as given (0: the masks as given).
        check: also build the leakage check.
        seed: seed of the swap partners.
    """
    if margin is not None and margin < 0:
        raise ValueError(f"margin must be None (fitted) or >= 0 pixels, got {margin}")
    m = masks.to(images.device).bool()
    fit = None
    if margin is None:
        fit = fit_mask_margins(images, m, *mask_margin_caps(images.shape[-2:]))
        removal, kept = fit.removal_masks, fit.object_masks
    else:
        removal, kept = grow_masks(m, margin), m
    alpha = fit.object_alpha if fit is not None else None
    probes = counterfactual_probes(
        images, m, targets, seed=seed, removal_masks=removal, object_masks=kept, object_alpha=alpha
    )
    parts = [probes.background_only, probes.foreground_only, probes.swapped]
    grown = None
    if check:
        # the same partners and pasted objects as the verdict's swaps: only the removed region is wider
        wide = background_only(images, grow_masks(removal, check_growth(images.shape[-2:])))
        grown = paste_objects(images, kept, wide[probes.partners.clamp_min(0)], wide, alpha)
        parts.append(grown)
    stacked = torch.cat(parts)
    return CounterfactualBatch(probes, fit, margin, grown, stacked, targets.repeat(len(parts)))


@dataclass
class ShortcutReport:
    """What one evaluation of the shortcut evidence found (:func:`shortcut_report`).

    Attributes:
        scalars: every number to log, by its tag (``shortcut/...``); NaN where it could not be computed.
        scores: the score per evidence (``"groups"``, ``"masks"``), each in ``[0, 1]``.
        gate: the accuracy that arms the verdicts: the probe accuracy, or with groups each class's best group's
            accuracy (worst class; :func:`~probelens.metrics.agreeing_group_accuracy`).
        gate_is_groups: whether :attr:`gate` is the agreeing-group accuracy.
        chance: the majority-class share of the probe (the accuracy of a constant prediction).
        nonfinite: where non-finite model outputs were found (``None`` when all were finite); then every number is
            NaN and the verdicts must neither count nor clear.
        cam: the Grad-CAM maps of a step with finite outputs on the probe (the next drift reference when
            :attr:`cam_finite`), else ``None``.
        cam_finite: whether :attr:`cam` is finite.
        cells: accuracy per (class, group) (with groups).
        worst_class: the class with the largest background-swap flip rate (with masks).
        mask_sensitivity: how far the mask score moves when the object is removed with a wider region (the leakage
            check; with masks).
        predictions: per probe image the predicted class ``[N]``.
        counterfactual_predictions: ``(background_only, foreground_only, swapped)`` predictions ``[N]`` each.
    """

    scalars: dict[str, float]
    scores: dict[str, float] = field(default_factory=dict)
    gate: float = math.nan
    gate_is_groups: bool = False
    chance: float = math.nan
    nonfinite: str | None = None
    cam: Tensor | None = None
    cam_finite: bool = True
    cells: dict[tuple[int, int], float] = field(default_factory=dict)
    worst_class: int | None = None
    mask_sensitivity: float | None = None
    predictions: Tensor | None = None
    counterfactual_predictions: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def score(self) -> float:
        """The headline score: the largest over the evidence (NaN without evidence)."""
        return max(self.scores.values()) if self.scores else math.nan


def _chance(targets: Tensor) -> float:
    counts = torch.bincount(targets.cpu()).float()
    return float(counts.max() / counts.sum())


def _nonfinite(where: str, tags: list[str], scores: Sequence[str], chance: float) -> ShortcutReport:
    nan = math.nan
    return ShortcutReport(
        scalars=dict.fromkeys(tags, nan), scores=dict.fromkeys(scores, nan), chance=chance, nonfinite=where
    )


def shortcut_report(
    logits: Tensor,
    targets: Tensor,
    *,
    class_tags: Sequence[str],
    group_tags: Sequence[str] = (),
    cam: Tensor | None = None,
    saliency: Mapping[str, Tensor] | None = None,
    masks: Tensor | None = None,
    groups: Tensor | None = None,
    counterfactuals: CounterfactualBatch | None = None,
    counterfactual_logits: Tensor | None = None,
    previous_cam: Tensor | None = None,
    first_cam: Tensor | None = None,
) -> ShortcutReport:
    """Evaluate the shortcut evidence of one log step.

    Args:
        logits: the model's class scores on the probe ``[N, K]``.
        targets: the probe's labels ``[N]``.
        class_tags: per class index its tag segment (``shortcut/.../<class>``).
        group_tags: per group index its tag segment (with ``groups``).
        cam: predicted-class Grad-CAM maps ``[N,1,H,W]`` (for the mask attribution and the drift).
        saliency: per saliency method its heat map ``[N,1,H,W]`` (mask attribution per method).
        masks: foreground masks ``[N,1,H,W]`` (the mask evidence; needs ``counterfactuals`` and their logits).
        groups: group labels ``[N]`` (the group evidence).
        counterfactuals: the probe's :func:`counterfactual_batch`.
        counterfactual_logits: the model's class scores on ``counterfactuals.images``.
        previous_cam, first_cam: the drift references (Grad-CAM of the previous and the first logged step).

    Returns:
        A :class:`ShortcutReport`. The mask score is :func:`~probelens.metrics.shortcut_score` of the swaps' per-class
        flip rates, the group score :func:`~probelens.metrics.group_reliance_score`; the gate is the probe accuracy,
        or with groups :func:`~probelens.metrics.agreeing_group_accuracy` (a pure shortcut model scores chance on a
        probe balanced over (class, group) cells).
    """
    n = logits.shape[0]
    labels = targets.to(logits.device)
    chance = _chance(targets)
    evidence = [e for e, have in (("groups", groups is not None), ("masks", masks is not None)) if have]
    finite_rows = torch.isfinite(logits.detach()).flatten(1).all(1)
    if not bool(finite_rows.all()):
        tags = ["shortcut/probe_accuracy"]
        if previous_cam is not None:
            tags += ["shortcut/drift_previous", "shortcut/drift_first"]
        if "masks" in evidence:
            tags += list(MASK_SCALARS)
        if "groups" in evidence:
            tags += [*GROUP_SCALARS, "shortcut/armed"]
        if evidence:
            tags += ["shortcut/score", "shortcut/armed"]
        where = f"the model's outputs on {int((~finite_rows).sum())} of {n} probe images"
        return _nonfinite(where, list(dict.fromkeys(tags)), evidence, chance)

    preds = logits.detach().argmax(1)
    right = preds == labels
    scalars: dict[str, float] = {"shortcut/probe_accuracy": float(right.float().mean())}
    cam_ok = cam is not None and bool(torch.isfinite(cam).all())
    nan = math.nan
    if cam is not None and previous_cam is not None and first_cam is not None:
        c = cam.to(previous_cam.device)
        scalars["shortcut/drift_previous"] = float(map_drift(previous_cam, c).mean()) if cam_ok else nan
        scalars["shortcut/drift_first"] = float(map_drift(first_cam, c).mean()) if cam_ok else nan
    report = ShortcutReport(
        scalars=scalars, gate=scalars["shortcut/probe_accuracy"], chance=chance, cam=cam, cam_finite=cam_ok
    )
    report.predictions = preds.cpu()
    if groups is not None:
        cells = group_accuracies(preds, labels, groups)
        for (c_, g), acc in cells.items():
            scalars[f"shortcut/group_accuracy/{class_tags[c_]}/{group_tags[g]}"] = acc
        for c_, gap in group_gaps(cells).items():
            scalars[f"shortcut/group_gap/{class_tags[c_]}"] = gap
        scalars["shortcut/worst_group_accuracy"] = min(cells.values())
        scalars["shortcut/agreeing_group_accuracy"] = agreeing_group_accuracy(cells)
        report.cells = cells
        report.scores["groups"] = group_reliance_score(cells)
        report.gate = scalars["shortcut/agreeing_group_accuracy"]
        report.gate_is_groups = True
    if masks is not None:
        if counterfactuals is None or counterfactual_logits is None:
            raise ValueError("shortcut_report: masks need counterfactuals and counterfactual_logits")
        ok = _mask_evidence(report, preds, labels, masks, cam, cam_ok, saliency or {}, counterfactuals,
                            counterfactual_logits, class_tags)  # fmt: skip
        if not ok:
            tags = list(scalars)
            tags += [*MASK_SCALARS, "shortcut/score", "shortcut/armed"]
            if groups is not None:
                tags += list(GROUP_SCALARS)
            where = "the model's outputs on the counterfactual images (object only, background only, swapped)"
            failed = _nonfinite(where, list(dict.fromkeys(tags)), evidence, chance)
            failed.cam, failed.cam_finite = report.cam, report.cam_finite
            return failed
    if report.scores:
        scalars["shortcut/score"] = report.score
        if len(report.scores) > 1:
            for e, s in report.scores.items():
                scalars[f"shortcut/score/{e}"] = s
    return report


def _mask_evidence(
    report: ShortcutReport,
    preds: Tensor,
    labels: Tensor,
    masks: Tensor,
    cam: Tensor | None,
    cam_ok: bool,
    saliency: Mapping[str, Tensor],
    cf: CounterfactualBatch,
    cf_logits: Tensor,
    class_tags: Sequence[str],
) -> bool:
    """The mask evidence into ``report``; False when the counterfactual outputs are not finite."""
    nan = math.nan
    scalars = report.scalars
    n = preds.shape[0]
    if not bool(torch.isfinite(cf_logits.detach()).all()):
        return False
    if cam is not None:
        m = masks.to(cam.device)
        scalars["shortcut/mask_attribution"] = float(relevance_mass(cam, m).mean()) if cam_ok else nan
        scalars["shortcut/mask_attribution_chance"] = float(mask_area(m).mean())
        scalars["shortcut/relevance_rank_accuracy"] = float(relevance_rank_accuracy(cam, m).mean()) if cam_ok else nan
    else:
        scalars["shortcut/mask_attribution_chance"] = float(mask_area(masks).mean())
    for method, heat in saliency.items():
        finite = bool(torch.isfinite(heat).all())
        scalars[f"shortcut/mask_attribution/{method}"] = (
            float(relevance_mass(heat, masks.to(heat.device)).mean()) if finite else nan
        )
    cf_preds = cf_logits.detach().argmax(1).to(preds.device)
    bg_pred, fg_pred, swap_pred = cf_preds[:n], cf_preds[n : 2 * n], cf_preds[2 * n : 3 * n]
    valid = cf.probes.swap_valid.to(preds.device)
    flip = float((swap_pred[valid] != preds[valid]).float().mean()) if bool(valid.any()) else 0.0
    per_class = class_flip_rates(preds, swap_pred, labels, valid)
    score = shortcut_score(per_class)
    fg_acc = float((fg_pred == labels).float().mean())
    scalars.update(
        {
            "shortcut/background_only_accuracy": float((bg_pred == labels).float().mean()),
            "shortcut/foreground_only_accuracy": fg_acc,
            "shortcut/foreground_only_drop": foreground_only_drop(
                scalars["shortcut/probe_accuracy"], fg_acc, report.chance
            ),
            "shortcut/background_swap_flip_rate": flip,
        }
    )
    for c, rate in per_class.items():
        scalars[f"shortcut/background_swap_flip_rate/{class_tags[c]}"] = rate
    if len(per_class) > 2:  # with two classes a class's objects only ever land on the other's backgrounds
        for (c, b), rate in direction_flip_rates(preds, swap_pred, labels, cf.probes.partners).items():
            scalars[f"shortcut/background_swap_flip_rate/{class_tags[c]}_on_{class_tags[b]}"] = rate
    if cf.check_grown is not None and cf_preds.shape[0] >= 4 * n:
        grown = shortcut_score(class_flip_rates(preds, cf_preds[3 * n : 4 * n], labels, valid))
        report.mask_sensitivity = abs(grown - score)
        scalars["shortcut/mask_sensitivity"] = report.mask_sensitivity
    if cf.fit is not None:  # how the given masks looked (constant over a run)
        scalars["shortcut/mask_outside_object"] = float(cf.fit.outside_object.nanmean())
        scalars["shortcut/mask_inside_background"] = float(cf.fit.inside_background.nanmean())
        scalars["shortcut/mask_loose_matte"] = float(cf.fit.loose_matte.float().mean())
    report.worst_class = max(per_class, key=per_class.__getitem__) if per_class else None
    report.scores["masks"] = score
    report.counterfactual_predictions = (bg_pred.cpu(), fg_pred.cpu(), swap_pred.cpu())
    return True
