"""A torchvision ResNet-18 (random init, in-place ReLUs, residual stages) on 128x128 snow-vs-desert images.

    python examples/resnet18_snow_vs_desert.py          # a few minutes on 2 CPU cores with the defaults

Shows the layer choices on a real architecture: ``layers="auto"`` picks ``net.relu`` (stem), ``net.layer1`` ...
``net.layer4``; Grad-CAM at ``net.layer4`` is the classic choice, earlier stages localise more finely. Their tags
carry the depth first (``probelens/gradcam/00_net.relu`` ... ``04_net.layer4``): by name, ``relu`` would sort last.
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader

from probelens import ActivationMonitor, GradCAMMonitor, ProbeSet, SaliencyMonitor, ShortcutMonitor
from probelens.data import CLASS_NAMES, MEAN, STD, SnowDesertDataset


class ResNetClassifier(pl.LightningModule):
    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torchvision.models.resnet18(num_classes=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        logits = self(batch[0])
        self.log("val/loss", F.cross_entropy(logits, batch[1]))
        self.log("val/acc", (logits.argmax(1) == batch[1]).float().mean())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def main(argv: list[str] | None = None) -> pl.Trainer:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--p", type=float, default=0.95)
    parser.add_argument("--logdir", default="lightning_logs")
    args = parser.parse_args(argv)
    pl.seed_everything(0)
    common = dict(size=args.size, p=args.p, spot_contrast=0.6)
    train = SnowDesertDataset(n=args.n, seed=0, **common)
    val = SnowDesertDataset(n=128, seed=1, return_masks=True, **common)
    probe = ProbeSet.from_dataset(val, num_samples=8, seed=0, mean=MEAN, std=STD, class_names=CLASS_NAMES)
    monitors = [
        ActivationMonitor(probe, layers=["net.layer1", "net.layer4"], max_images=4),
        GradCAMMonitor(probe, layers="auto", target="both"),
        SaliencyMonitor(probe, methods=("vanilla", "guided_backprop")),
        ShortcutMonitor(ProbeSet.from_dataset(val, num_samples=32, seed=0, mean=MEAN, std=STD)),
    ]
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        logger=pl.loggers.TensorBoardLogger(args.logdir, name="resnet18"),
        callbacks=monitors,
        enable_checkpointing=False,
        log_every_n_steps=5,
    )
    trainer.fit(ResNetClassifier(), DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=64))
    return trainer


if __name__ == "__main__":
    main()
