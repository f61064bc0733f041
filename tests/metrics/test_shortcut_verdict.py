import pytest
import torch

from probelens.metrics import ShortcutVerdict, map_drift, shortcut_score


def test_score_extremes_and_hand_value():
    assert shortcut_score(1.0, 1.0, chance=0.5) == 1.0  # background model
    assert shortcut_score(0.5, 0.0, chance=0.5) == 0.0  # object model, or constant predictions
    assert shortcut_score(0.3, 0.0, chance=0.5) == 0.0  # below chance clips to 0
    # b = (0.95-0.5)/0.5 = 0.9, s = 0.4 -> 0.65: a model using both cues
    assert shortcut_score(0.95, 0.4, chance=0.5) == pytest.approx(0.65)
    # three classes: chance 1/3, b = (2/3 - 1/3) / (2/3) = 0.5
    assert shortcut_score(2 / 3, 0.0, chance=1 / 3) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="chance"):
        shortcut_score(0.5, 0.5, chance=1.0)


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
