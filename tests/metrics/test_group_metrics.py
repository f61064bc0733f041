"""Group metrics against an independent reference over many random inputs, and NaN in -> NaN out for every score."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probelens.metrics import (
    ShortcutVerdict,
    agreeing_group_accuracy,
    foreground_only_drop,
    group_accuracies,
    group_gaps,
    group_reliance_score,
    shortcut_score,
)


def reference(preds: np.ndarray, targets: np.ndarray, groups: np.ndarray):
    """Cell accuracies, score and gate with plain Python loops."""
    cells: dict[tuple[int, int], list[int]] = {}
    for p, t, g in zip(preds.tolist(), targets.tolist(), groups.tolist()):
        cells.setdefault((t, g), []).append(int(p == t))
    acc = {k: sum(v) / len(v) for k, v in cells.items()}
    per_class: dict[int, list[float]] = {}
    for (t, _), a in acc.items():
        per_class.setdefault(t, []).append(a)
    gaps = [max(v) - min(v) for v in per_class.values() if len(v) > 1]
    return acc, (max(gaps) if gaps else 0.0), min(max(v) for v in per_class.values())


@pytest.mark.parametrize("seed", range(40))
def test_against_a_reference_over_random_probes(seed):
    rng = np.random.default_rng(seed)
    n, k, g = int(rng.integers(4, 60)), int(rng.integers(2, 5)), int(rng.integers(1, 4))
    targets, groups, preds = rng.integers(0, k, n), rng.integers(0, g, n), rng.integers(0, k, n)
    cells = group_accuracies(torch.from_numpy(preds), torch.from_numpy(targets), torch.from_numpy(groups))
    acc, score, gate = reference(preds, targets, groups)
    assert cells.keys() == acc.keys() and all(cells[c] == pytest.approx(acc[c]) for c in acc)
    assert group_reliance_score(cells) == pytest.approx(score)
    assert agreeing_group_accuracy(cells) == pytest.approx(gate)
    assert 0.0 <= group_reliance_score(cells) <= 1.0


def test_the_three_cases_on_a_probe_balanced_over_cells():
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1] * 2)
    groups = torch.tensor([0, 0, 1, 1] * 4)  # group 0 agrees with class 0, group 1 with class 1
    shortcut = groups.clone()  # predicts the group
    cells = group_accuracies(shortcut, targets, groups)
    assert float((shortcut == targets).float().mean()) == 0.5  # chance overall (DESIGN section 7)
    assert group_reliance_score(cells) == 1.0 and agreeing_group_accuracy(cells) == 1.0
    assert min(cells.values()) == 0.0
    objects = targets.clone()  # predicts the class whatever the group
    assert group_reliance_score(group_accuracies(objects, targets, groups)) == 0.0
    collapsed = torch.zeros_like(targets)  # one class for everything: gap 0, and not armed
    cells = group_accuracies(collapsed, targets, groups)
    assert group_reliance_score(cells) == 0.0 and agreeing_group_accuracy(cells) == 0.0
    one_way = torch.where((targets == 1) & (groups == 0), 0, targets)  # only class 1 on group 0 goes wrong
    assert group_gaps(group_accuracies(one_way, targets, groups)) == {0: 0.0, 1: 1.0}


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="must be"):
        group_accuracies(torch.zeros(3), torch.zeros(4), torch.zeros(4))


def test_nan_in_nan_out():
    nan = math.nan
    assert math.isnan(group_reliance_score({(0, 0): nan, (0, 1): 1.0}))
    assert math.isnan(agreeing_group_accuracy({(0, 0): nan, (0, 1): 1.0}))
    assert math.isnan(shortcut_score({0: nan, 1: 0.2}))
    assert math.isnan(foreground_only_drop(nan, 0.5, 0.5)) and math.isnan(foreground_only_drop(0.9, nan, 0.5))
    assert foreground_only_drop(0.9, 0.5, 0.5) == pytest.approx(1.0)


def test_a_nan_step_neither_counts_nor_clears_the_verdict():
    verdict = ShortcutVerdict(threshold=0.5, patience=2, min_accuracy=0.6)
    assert not verdict.update(0.9, 1.0)
    assert not verdict.update(math.nan, 1.0) and verdict.streak == 1  # the streak is kept, not reset
    assert verdict.update(0.9, 1.0) and verdict.active
    assert not verdict.update(math.nan, math.nan) and verdict.active  # a standing alert is not cleared by NaN
    assert math.isnan(verdict.history[1]) and len(verdict.history) == 4
    assert not verdict.armed(math.nan) and not verdict.armed(0.5) and verdict.armed(0.6)
