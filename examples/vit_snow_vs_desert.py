"""A tiny timm vision transformer (random init) on 64x64 snow-vs-desert images, Grad-CAM on its token layers.

    pip install timm
    python examples/vit_snow_vs_desert.py               # about a minute on 2 CPU cores with the defaults

A ViT keeps a class token and 8x8 patch tokens ``[N, 1 + 64, C]``. ``layers="auto"`` recognises them from the
forward pass and picks four evenly spaced blocks, each at its first token output (``net.blocks.k.norm1``): the last
block's *output* patch tokens never reach the class-token head, so their gradient, and their Grad-CAM, would be zero.
Every map is computed on the 8x8 patch grid with the class token dropped (the architecture table in TensorBoard's
Text tab says so), the same as pytorch-grad-cam with its ``reshape_transform``. Any other layout can be given with
``reshape=``, e.g. ``GradCAMMonitor(probe, layers=["net.blocks.3.norm1"], reshape=lambda t: ...)``.
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch.utils.data import DataLoader

from probelens import ActivationMonitor, GradCAMMonitor, ProbeSet
from probelens.data import CLASS_NAMES, MEAN, STD, SnowDesertDataset


class ViTClassifier(pl.LightningModule):
    def __init__(self, size: int = 64, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = VisionTransformer(
            img_size=size, patch_size=8, embed_dim=64, depth=6, num_heads=4, mlp_ratio=2.0, num_classes=2
        )

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
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--logdir", default="lightning_logs")
    args = parser.parse_args(argv)
    pl.seed_everything(0)
    train = SnowDesertDataset(n=args.n, seed=0, size=64)
    val = SnowDesertDataset(n=128, seed=1, size=64, return_masks=True)
    probe = ProbeSet.from_dataset(val, num_samples=8, seed=0, mean=MEAN, std=STD, class_names=CLASS_NAMES)
    monitors = [
        GradCAMMonitor(probe, layers="auto", methods=("gradcam", "layercam")),
        ActivationMonitor(probe, layers=["net.blocks.1.norm1", "net.blocks.5.norm1"], max_images=4),
    ]
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        logger=pl.loggers.TensorBoardLogger(args.logdir, name="vit"),
        callbacks=monitors,
        enable_checkpointing=False,
        log_every_n_steps=5,
    )
    trainer.fit(
        ViTClassifier(),
        DataLoader(train, batch_size=32, shuffle=True),
        DataLoader(val, batch_size=128),
    )
    return trainer


if __name__ == "__main__":
    main()
