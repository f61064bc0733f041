"""A tiny LightningModule and data for callback tests."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from models import small_cnn


class LitClassifier(pl.LightningModule):
    def __init__(self, in_channels: int = 3, num_classes: int = 2, lr: float = 0.05, seed: int = 0) -> None:
        super().__init__()
        self.model = small_cnn(in_channels=in_channels, num_classes=num_classes, seed=seed)
        self.lr = lr

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        self.log("val_loss", F.cross_entropy(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        self.log("test_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def random_data(n: int = 64, channels: int = 3, size=(16, 16), num_classes: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, *size, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x[y == 1, 0] += 1.0  # a learnable cue
    return TensorDataset(x, y)


def loaders(n: int = 64, batch_size: int = 16, **kw):
    train = random_data(n, **kw)
    val = random_data(max(16, n // 4), seed=1, **kw)
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=batch_size)


def trainer(tmp_path, callbacks=(), logger=True, **kw) -> pl.Trainer:
    from pytorch_lightning.loggers import TensorBoardLogger

    if logger is True:
        logger = TensorBoardLogger(str(tmp_path), name="tb")
    defaults = dict(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    defaults.update(kw)
    return pl.Trainer(**defaults)


def read_events(log_dir):
    """EventAccumulator over a TensorBoard run dir, keeping every image and scalar."""
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, TENSORS, EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={IMAGES: 0, SCALARS: 0, TENSORS: 0})
    acc.Reload()
    return acc


def decode(image_event):
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(image_event.encoded_image_string)).convert("RGB"))


def probe_cells(image_event) -> list[int]:
    """The probe indices of the cells a grid records in its PNG (one per cell, in order); [] for other pictures."""
    import io

    from PIL import Image

    from probelens.render import cells_from_text

    with Image.open(io.BytesIO(image_event.encoded_image_string)) as im:
        return [k for k, *_ in cells_from_text(im.text)]


def shared_pass_of(tr: pl.Trainer, module: torch.nn.Module):
    """The shared pass session of ``module`` in ``tr``'s run (held by the run its monitors share)."""
    runs = {id(cb._run): cb._run for cb in tr.callbacks if getattr(cb, "_run", None) is not None}
    assert len(runs) == 1, f"the monitors of one Trainer share one run, found {len(runs)}"
    return next(iter(runs.values())).passes[module]


class NaNAfter(pl.Callback):
    """Sets every weight to NaN at the start of the given epoch (a diverged run)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


def concept_pictures(probe) -> dict[str, torch.Tensor]:
    """Two sets of 20 random pictures shaped like ``probe``'s images, "a" shifted by +1: concepts for a
    ConceptMonitor that must run (its passes, its alert machinery), not find anything."""
    g = torch.Generator().manual_seed(3)
    shape = (20, *probe.images.shape[1:])
    return {"a": torch.randn(shape, generator=g) + 1.0, "b": torch.randn(shape, generator=g)}
