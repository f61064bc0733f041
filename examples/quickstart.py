"""Quickstart: watch Grad-CAM and saliency evolve while a CNN trains (about 30 s on 2 CPU cores).

python examples/quickstart.py && tensorboard --logdir lightning_logs --samples_per_plugin images=1000
"""

import pytorch_lightning as pl
import torch
from snow_vs_desert import LeopardClassifier
from torch.utils.data import DataLoader

from probelens import GradCAMMonitor, ProbeSet, SaliencyMonitor, ShortcutMonitor
from probelens.data import CLASS_NAMES, MEAN, STD, SnowDesertDataset


def main(max_epochs: int = 3, n: int = 2000, logdir: str = "lightning_logs") -> pl.Trainer:
    torch.manual_seed(0)
    train, val = SnowDesertDataset(n=n, seed=0), SnowDesertDataset(n=256, seed=1, return_masks=True)
    probe = ProbeSet.from_dataset(val, num_samples=16, seed=0, mean=MEAN, std=STD, class_names=CLASS_NAMES)
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        logger=pl.loggers.TensorBoardLogger(logdir, name="quickstart"),
        callbacks=[GradCAMMonitor(probe, layers="all"), SaliencyMonitor(probe), ShortcutMonitor(probe)],
        enable_checkpointing=False,
    )
    trainer.fit(LeopardClassifier(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=256))
    return trainer


if __name__ == "__main__":
    main()
