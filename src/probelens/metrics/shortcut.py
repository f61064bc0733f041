"""The shortcut verdict: a reliance score from the background swaps (masks) or from the accuracy per (class, group)
(group labels), and an alert with patience. NaN in, NaN out: no score here turns a non-finite input into a number."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


def _clip01(x: float) -> float:
    if math.isnan(x):
        return x  # min/max would turn NaN into a bound
    return min(1.0, max(0.0, x))


def class_flip_rates(
    predictions: Tensor, swapped_predictions: Tensor, targets: Tensor, valid: Tensor
) -> dict[int, float]:
    """Per class of the *object*, the share of its valid swaps whose prediction changed ``{class: rate}``.

    Image ``i`` of class ``c`` with a partner of another class is a conflict: its object says ``c``, its (swapped)
    background says the partner's class. ``rate[c] = mean over those i of [swapped_pred_i != pred_i]``. Classes
    without a valid swap are left out.

    Example:
        >>> class_flip_rates(torch.tensor([0, 0, 1, 1]), torch.tensor([1, 0, 1, 1]), torch.tensor([0, 0, 1, 1]),
        ...                  torch.ones(4, dtype=torch.bool))
        {0: 0.5, 1: 0.0}
    """
    flipped = (swapped_predictions.cpu() != predictions.cpu()) & valid.cpu()
    t, v = targets.cpu(), valid.cpu()
    return {int(c): float(flipped[(t == c) & v].float().mean()) for c in t.unique().tolist() if ((t == c) & v).any()}


def direction_flip_rates(
    predictions: Tensor, swapped_predictions: Tensor, targets: Tensor, partners: Tensor
) -> dict[tuple[int, int], float]:
    """Flip rate per direction ``{(object class, background class): rate}``: objects of one class on backgrounds of
    probe images of another (``partners[i]`` the image whose background ``i`` got, -1 for none)."""
    t, q = targets.cpu(), partners.cpu()
    valid = q >= 0
    flipped = swapped_predictions.cpu() != predictions.cpu()
    pair_bg = torch.where(valid, t[q.clamp_min(0)], torch.full_like(t, -1))
    out: dict[tuple[int, int], float] = {}
    for c in t.unique().tolist():
        for b in pair_bg[valid & (t == c)].unique().tolist():
            sel = valid & (t == c) & (pair_bg == b)
            out[(int(c), int(b))] = float(flipped[sel].float().mean())
    return out


def foreground_only_drop(accuracy: float, foreground_only_accuracy: float, chance: float) -> float:
    """The share of above-chance accuracy lost when the background is neutralised, in ``[0, 1]``.

    ``clip((acc - acc_fg) / (acc - c))``: 0 when the object alone keeps the accuracy, 1 when it falls to chance ``c``
    (0 while the model is at chance itself).
    """
    if not 0.0 <= chance < 1.0:
        raise ValueError(f"chance must be in [0, 1), got {chance}")
    if math.isnan(accuracy) or math.isnan(foreground_only_accuracy):
        return math.nan
    if accuracy <= chance:
        return 0.0
    return _clip01((accuracy - foreground_only_accuracy) / (accuracy - chance))


def shortcut_score(class_flip_rates: Mapping[int, float] | Sequence[float]) -> float:
    """How much the model follows the background in a conflict: the flip rate of its worst class, in ``[0, 1]``.

    ``score = max_c flip_c`` with ``flip_c`` the share of class-``c`` objects whose prediction changes when they are
    pasted onto the background of a probe image of another class (:func:`class_flip_rates`). It measures
    *reliance*: the background wins a conflict with the object. It does not reward background *sufficiency* (how
    well the background alone predicts with the object removed): an object model whose fallback without an object is
    the correlated background has a high background-only accuracy but flips nothing, and scores 0.

    The worst class, not the mean: a model that calls every arabian leopard on snow "snow" but still tells snow
    leopards on sand by their coat has learned a shortcut in one direction; the mean over both directions would halve
    it. The three cases (measured in ``docs/shortcut.md``): a background model scores ~1; an object model with an
    informative background ~0; the demo's mixed model at p=0.95 (overall flip rate 0.31-0.47) scores 0.56-0.81,
    nearly all its flips being arabian leopards on snow.

    Example:
        >>> shortcut_score({0: 0.75, 1: 0.0})
        0.75
    """
    rates = list(class_flip_rates.values()) if isinstance(class_flip_rates, Mapping) else list(class_flip_rates)
    if not rates:
        return 0.0
    if any(math.isnan(r) for r in rates):
        return math.nan
    bad = [r for r in rates if not 0.0 <= r <= 1.0]
    if bad:
        raise ValueError(f"flip rates must be in [0, 1], got {bad}")
    return float(max(rates))


def group_accuracies(predictions: Tensor, targets: Tensor, groups: Tensor) -> dict[tuple[int, int], float]:
    """Accuracy per (class, group) cell ``{(class, group): accuracy}``, over the cells that hold images.

    ``acc[c, g] = mean over i with targets_i = c and groups_i = g of [predictions_i = c]``.

    Example:
        >>> group_accuracies(torch.tensor([0, 1, 1, 1]), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]))
        {(0, 0): 1.0, (0, 1): 0.0, (1, 0): 1.0, (1, 1): 1.0}
    """
    p, t, g = predictions.cpu(), targets.cpu(), groups.cpu()
    if not (p.shape == t.shape == g.shape and t.dim() == 1):
        raise ValueError(
            f"predictions, targets and groups must be [N] each, got {tuple(p.shape)}, {tuple(t.shape)}, "
            f"{tuple(g.shape)}"
        )
    right = (p == t).float()
    out: dict[tuple[int, int], float] = {}
    for c in t.unique().tolist():
        for k in g[t == c].unique().tolist():
            out[(int(c), int(k))] = float(right[(t == c) & (g == k)].mean())
    return out


def group_gaps(cell_accuracies: Mapping[tuple[int, int], float]) -> dict[int, float]:
    """Per class, the accuracy gap between its best and its worst group ``{class: max_g acc - min_g acc}``, in
    ``[0, 1]`` (classes with images of one group only are left out; NaN in a class's cells gives NaN).

    Example:
        >>> group_gaps({(0, 0): 1.0, (0, 1): 0.25, (1, 0): 0.75, (1, 1): 1.0})
        {0: 0.75, 1: 0.25}
    """
    by_class: dict[int, list[float]] = {}
    for (c, _), acc in cell_accuracies.items():
        by_class.setdefault(int(c), []).append(float(acc))
    out: dict[int, float] = {}
    for c, accs in sorted(by_class.items()):
        if len(accs) < 2:
            continue
        out[c] = math.nan if any(math.isnan(a) for a in accs) else max(accs) - min(accs)
    return out


def group_reliance_score(cell_accuracies: Mapping[tuple[int, int], float]) -> float:
    """How much the model's accuracy on a class depends on the group: the largest within-class accuracy gap between
    groups, in ``[0, 1]`` (the same scale and the same worst-class rule as :func:`shortcut_score`).

    ``score = max_c (max_g acc[c, g] - min_g acc[c, g])`` with ``acc`` from :func:`group_accuracies`.

    Why this statistic: within a class the object is the same kind of thing in every group, so a model that decides
    by the object scores about equally in each group (gap ~0, up to sampling noise of order
    ``sqrt(2 a (1 - a) / n)`` for cells of ``n`` images at accuracy ``a``), while a model that decides by the
    spurious attribute is right where the group agrees with the class and wrong where it does not (gap ~1: on a
    probe balanced over (class, group) cells a pure shortcut model scores 1.0 and 0.0 on the two cells of each
    class). Comparing within a class cancels class difficulty and class balance; it needs no mapping from group to
    class (which group "agrees"); and the worst class, not the mean, keeps a shortcut in one direction (arabian
    leopards on snow called "snow", snow leopards on sand still right) from being halved. Worst-group accuracy alone
    is not used as the score: it is low for any weak model, shortcut or not (it is logged beside the score).

    Example:
        >>> group_reliance_score({(0, 0): 1.0, (0, 1): 0.0, (1, 0): 0.875, (1, 1): 1.0})
        1.0
    """
    gaps = group_gaps(cell_accuracies)
    if not gaps:
        return 0.0
    values = list(gaps.values())
    return math.nan if any(math.isnan(v) for v in values) else float(max(values))


def agreeing_group_accuracy(cell_accuracies: Mapping[tuple[int, int], float]) -> float:
    """The accuracy that arms the group verdict: per class the accuracy of its best group (for a shortcut model, the
    group whose cue agrees with the class), and of those the worst class's: ``min_c max_g acc[c, g]``.

    Overall probe accuracy cannot arm it: on a probe balanced over (class, group) cells a pure shortcut model scores
    exactly chance overall (its agreeing cells 1.0, its conflicting cells 0.0), while an untrained model or one that
    predicts a single class has a class whose best group is still wrong.

    Example:
        >>> agreeing_group_accuracy({(0, 0): 1.0, (0, 1): 0.0, (1, 0): 0.0, (1, 1): 1.0})
        1.0
    """
    best: dict[int, float] = {}
    for (c, _), acc in cell_accuracies.items():
        if math.isnan(acc):
            return math.nan
        best[int(c)] = max(best.get(int(c), 0.0), float(acc))
    return min(best.values()) if best else math.nan


@dataclass
class ShortcutVerdict:
    """Fires when the score stays at or above ``threshold`` for ``patience`` consecutive log steps.

    A step only counts when the model is better than chance on the unedited probe (``accuracy >= min_accuracy``):
    an untrained model has no shortcut to report. One high score between low ones never fires. After firing, the
    alert stands until a counting step scores below the threshold (a step at chance, e.g. a model that collapsed to
    one class, neither clears it nor counts towards firing again); then the verdict re-arms. A NaN score or accuracy
    (a model with non-finite outputs) is recorded in the history and changes nothing else.
    """

    threshold: float = 0.5
    patience: int = 2
    min_accuracy: float = 0.0
    streak: int = 0
    active: bool = False
    history: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")

    def update(self, score: float, accuracy: float) -> bool:
        """Feed one log step; return True exactly when the alert fires."""
        self.history.append(score)
        if math.isnan(score) or math.isnan(accuracy):
            return False  # no evidence either way: the streak and a standing alert are kept
        if accuracy < self.min_accuracy:
            self.streak = 0  # a model at chance neither fires nor clears: it has neither a shortcut nor recovered
        elif score >= self.threshold:
            self.streak += 1
        else:
            self.streak = 0
            self.active = False
        if self.streak >= self.patience and not self.active:
            self.active = True
            return True
        return False

    def armed(self, accuracy: float) -> bool:
        """Whether a step at this accuracy counts (neither at chance nor NaN)."""
        return not math.isnan(accuracy) and accuracy >= self.min_accuracy

    def state_dict(self) -> dict:
        return {"streak": self.streak, "active": self.active, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.streak = int(state.get("streak", 0))
        self.active = bool(state.get("active", False))
        self.history = [float(x) for x in state.get("history", [])]
