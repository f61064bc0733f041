import pytest
import torch

from probelens.metrics import (
    ShortcutVerdict,
    class_flip_rates,
    direction_flip_rates,
    foreground_only_drop,
    map_drift,
    shortcut_score,
    swap_partners,
)


def test_score_is_the_worst_class_flip_rate():
    assert shortcut_score({0: 1.0, 1: 1.0}) == 1.0  # background model
    assert shortcut_score({0: 0.0, 1: 0.0}) == 0.0  # object model, whatever its background-only accuracy
    assert shortcut_score({0: 0.75, 1: 0.06}) == 0.75  # one-sided: objects of class 0 follow the background
    assert shortcut_score([0.2, 0.4, 0.1]) == 0.4
    assert shortcut_score({}) == 0.0  # no valid swap
    with pytest.raises(ValueError, match=r"flip rates must be in \[0, 1\], got \[1.5\]"):
        shortcut_score([0.2, 1.5])


def reference_rates(preds, swapped, targets, partners):
    """Plain-Python reference: per class of the object and per (object, background) class pair."""
    per_class, per_pair = {}, {}
    for i, j in enumerate(partners):
        if j < 0:
            continue
        flip = float(swapped[i] != preds[i])
        per_class.setdefault(targets[i], []).append(flip)
        per_pair.setdefault((targets[i], targets[j]), []).append(flip)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {k: mean(v) for k, v in per_class.items()}, {k: mean(v) for k, v in per_pair.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_and_direction_flip_rates_agree_with_a_reference(seed):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 3, (30,), generator=g)
    preds = torch.randint(0, 3, (30,), generator=g)
    swapped = torch.where(torch.rand(30, generator=g) < 0.4, torch.randint(0, 3, (30,), generator=g), preds)
    partners = swap_partners(targets, seed=seed)
    want_class, want_pair = reference_rates(preds.tolist(), swapped.tolist(), targets.tolist(), partners.tolist())
    got_class = class_flip_rates(preds, swapped, targets, partners >= 0)
    assert got_class.keys() == want_class.keys()
    assert all(got_class[k] == pytest.approx(v) for k, v in want_class.items())
    got_pair = direction_flip_rates(preds, swapped, targets, partners)
    assert got_pair.keys() == want_pair.keys()
    assert all(got_pair[k] == pytest.approx(v) for k, v in want_pair.items())


def test_flip_rates_leave_out_images_without_a_partner():
    targets = torch.tensor([0, 0, 1, 1])
    valid = torch.tensor([True, False, True, True])
    rates = class_flip_rates(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]), targets, valid)
    assert rates == {0: 0.0, 1: 0.5}  # image 1 flipped but had no partner


def test_foreground_only_drop():
    assert foreground_only_drop(1.0, 0.5, chance=0.5) == 1.0  # neutral background: down to chance
    assert foreground_only_drop(1.0, 1.0, chance=0.5) == 0.0
    assert foreground_only_drop(0.9, 0.8, chance=0.5) == pytest.approx(0.25)
    assert foreground_only_drop(0.5, 0.2, chance=0.5) == 0.0  # a model at chance has nothing to lose
    assert foreground_only_drop(0.8, 0.9, chance=0.5) == 0.0
    with pytest.raises(ValueError, match="chance"):
        foreground_only_drop(0.5, 0.5, chance=1.0)


def test_patience_prevents_false_alarms_from_noisy_steps():
    verdict = ShortcutVerdict(threshold=0.5, patience=2)
    fired = [verdict.update(s, accuracy=1.0) for s in [0.9, 0.2, 0.9, 0.3, 0.6, 0.1]]
    assert not any(fired)
    fired = [verdict.update(s, accuracy=1.0) for s in [0.7, 0.8, 0.9, 0.95]]
    assert fired == [False, True, False, False]  # fires once, at the second consecutive step
    assert verdict.update(0.1, 1.0) is False and not verdict.active  # re-armed
    assert [verdict.update(s, 1.0) for s in (0.8, 0.8)] == [False, True]


def test_no_verdict_while_the_model_is_at_chance():
    verdict = ShortcutVerdict(threshold=0.5, patience=1, min_accuracy=0.75)
    assert not verdict.update(0.9, accuracy=0.5)
    assert verdict.update(0.9, accuracy=0.9)
    # a collapse to chance is no recovery: the alert stands until a counting step scores low
    assert not verdict.update(0.0, accuracy=0.5) and verdict.active
    assert not verdict.update(0.1, accuracy=0.9) and not verdict.active


def test_verdict_state_round_trip_and_validation():
    v = ShortcutVerdict(patience=3)
    v.update(0.9, 1.0)
    w = ShortcutVerdict(patience=3)
    w.load_state_dict(v.state_dict())
    assert w.streak == 1 and w.history == [0.9]
    with pytest.raises(ValueError, match="patience"):
        ShortcutVerdict(patience=0)


def test_map_drift():
    a = torch.rand(3, 1, 8, 8)
    assert map_drift(a, a * 2 + 1).abs().max() < 1e-6  # same pattern, other scale
    assert torch.allclose(map_drift(a, -a), torch.ones(3))
    flat = torch.zeros(3, 1, 8, 8)
    assert map_drift(flat, flat).tolist() == [0.0, 0.0, 0.0]
    assert map_drift(flat, a).tolist() == [0.5, 0.5, 0.5]
