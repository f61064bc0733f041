"""Ground truth for the shortcut tests: accuracy on cue-conflicting images at every validation."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor


class ConflictAccuracy(pl.Callback):
    """Accuracy on images whose background cue disagrees with their class, keyed by the monitors' log step.

    Below 0.3 the model has learned the shortcut (the issue's ground truth); ``worst_class_by_step`` holds the
    accuracy of the worst class (the verdict's score is the worst class's flip rate). The model is evaluated in eval
    mode without gradients and its training flag restored.
    """

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels
        self.by_step: dict[int, float] = {}
        self.worst_class_by_step: dict[int, float] = {}

    def on_validation_epoch_end(self, trainer, pl_module):
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            right = (pl_module(self.images).argmax(1) == self.labels).float()
        pl_module.train(was_training)
        step = trainer.global_step - 1
        self.by_step[step] = float(right.mean())
        self.worst_class_by_step[step] = min(float(right[self.labels == c].mean()) for c in self.labels.unique())

    def epochs(self) -> list[float]:
        """The accuracies in validation order."""
        return [self.by_step[s] for s in sorted(self.by_step)]
