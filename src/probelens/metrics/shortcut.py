"""The shortcut verdict: one score from the counterfactual accuracies, and an alert with patience."""

from __future__ import annotations

from dataclasses import dataclass, field


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def shortcut_score(background_only_accuracy: float, flip_rate: float, chance: float) -> float:
    """How much the model's decisions depend on the background: 0 = not at all, 1 = entirely.

    The mean of two components, each in ``[0, 1]``:

    - ``b = clip((acc_bg - c) / (1 - c))``: accuracy with the object removed, above chance ``c`` — the background
      alone is enough for the model to decide;
    - ``s``: the prediction flip rate when backgrounds are swapped between classes — in a conflict between object and
      background, the background wins.

    An object model scores near 0 (``b ~ 0``, ``s ~ 0``); a background model near 1; a model that uses both cues in
    between (e.g. ``b = 0.9``, ``s = 0.4`` -> 0.65). An untrained model with constant predictions scores 0. The
    foreground-only accuracy is reported beside the score but not part of it: a model can know the object *and*
    lean on the background, and the latter is what the verdict is about.
    """
    if not 0.0 <= chance < 1.0:
        raise ValueError(f"chance must be in [0, 1), got {chance}")
    b = _clip01((background_only_accuracy - chance) / (1.0 - chance))
    return (b + _clip01(flip_rate)) / 2.0


@dataclass
class ShortcutVerdict:
    """Fires when the score stays at or above ``threshold`` for ``patience`` consecutive log steps.

    A step only counts when the model is better than chance on the unedited probe (``accuracy >= min_accuracy``):
    an untrained model has no shortcut to report. One high score between low ones never fires. After firing, the
    verdict re-arms once the score has dropped below the threshold again.
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
        if score >= self.threshold and accuracy >= self.min_accuracy:
            self.streak += 1
        else:
            self.streak = 0
            self.active = False
        if self.streak >= self.patience and not self.active:
            self.active = True
            return True
        return False

    def state_dict(self) -> dict:
        return {"streak": self.streak, "active": self.active, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.streak = int(state.get("streak", 0))
        self.active = bool(state.get("active", False))
        self.history = [float(x) for x in state.get("history", [])]
