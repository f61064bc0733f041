"""Demo: train a small CNN on procedural snow-leopard vs arabian-leopard images and watch it in TensorBoard.

The two leopard classes differ only by coat texture (rings vs solid spots); the background (snow or desert) agrees
with the class with probability ``--p``. At p=0.95 the background is an easy shortcut; at p=0.5 the model must learn
the coat. Run::

    python examples/snow_vs_desert.py            # ~40 s on 2 CPU cores
    tensorboard --logdir lightning_logs --samples_per_plugin images=1000
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader

from probelens import ActivationMonitor, FilterMonitor, GradCAMMonitor, ProbeSet, SaliencyMonitor, ShortcutMonitor
from probelens.data import CLASS_NAMES, MEAN, STD, SnowDesertDataset


def build_cnn(num_classes: int = 2, width: int = 16) -> nn.Module:
    """Four conv-BN-ReLU-pool blocks, global average pooling and a linear head."""
    layers: list[nn.Module] = []
    in_ch = 3
    for k in range(4):
        out_ch = width * 2**k
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        layers.append(nn.MaxPool2d(2) if k < 3 else nn.Identity())
        in_ch = out_ch
    return nn.Sequential(
        nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(in_ch, num_classes)
    )


class LeopardClassifier(pl.LightningModule):
    def __init__(self, lr: float = 3e-3, width: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = build_cnn(width=width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}/acc", (logits.argmax(1) == y).float().mean(), prog_bar=stage == "val")
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=1e-4)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--p", type=float, default=0.95, help="P(background agrees with the class), default 0.95")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--n", type=int, default=4000, help="training images")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--spot-contrast", type=float, default=0.6, help="texture cue strength (lower = harder)")
    parser.add_argument("--probe", type=int, default=8, help="probe images")
    parser.add_argument("--logdir", default="lightning_logs")
    parser.add_argument("--name", default=None, help="run name (default: snow_vs_desert_p<P>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> pl.Trainer:
    args = parse_args(argv)
    pl.seed_everything(args.seed, workers=True)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))
    common = dict(size=args.size, p=args.p, spot_contrast=args.spot_contrast)
    train = SnowDesertDataset(n=args.n, seed=args.seed, **common)
    val = SnowDesertDataset(n=max(args.n // 4, 64), seed=args.seed + 1, return_masks=True, **common)
    probe = ProbeSet.from_dataset(
        val, num_samples=args.probe, per_class=True, seed=0, mean=MEAN, std=STD, class_names=CLASS_NAMES
    )
    # the shortcut verdict wants more images than the picture grids: 32 balanced probe images with masks
    shortcut_probe = ProbeSet.from_dataset(
        val, num_samples=32, per_class=True, seed=0, mean=MEAN, std=STD, class_names=CLASS_NAMES
    )
    logger = TensorBoardLogger(args.logdir, name=args.name or f"snow_vs_desert_p{args.p:g}")
    shortcut = ShortcutMonitor(shortcut_probe, on_shortcut="warn")  # numbers + verdict + alert (needs masks)
    monitors = [
        FilterMonitor(layers=["net.0.0"]),  # first-layer RGB filters as colour patches
        ActivationMonitor(probe, layers="auto"),
        GradCAMMonitor(probe, layers="all"),  # Grad-CAM at every conv stage from one shared pass
        SaliencyMonitor(probe, methods=("vanilla", "gradient_x_input")),
        shortcut,
    ]
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=logger,
        callbacks=list(monitors),  # a copy: Lightning appends its own callbacks (the progress bar) to the list
        log_every_n_steps=10,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.quiet,
    )
    start = time.perf_counter()
    trainer.fit(
        LeopardClassifier(),
        DataLoader(train, batch_size=args.batch_size, shuffle=True),
        DataLoader(val, batch_size=256),
    )
    elapsed = time.perf_counter() - start
    cost = sum(getattr(m, "fire_count", 0) for m in monitors)
    print(f"\nTrained {args.epochs} epochs in {elapsed:.0f} s ({cost} monitor log events).")
    scores = ", ".join(f"{s:.2f}" for s in shortcut.verdict.history)
    if shortcut.alerts:
        print(f"SHORTCUT ALERT at step(s) {shortcut.alerts}: the model leans on the background (scores: {scores}).")
    else:
        print(f"No shortcut alert (scores per epoch: {scores}; the worst class's background-swap flip rate).")
    print(f"TensorBoard run: {logger.log_dir}")
    print(f"View it with:  tensorboard --logdir {args.logdir} --samples_per_plugin images=1000")
    return trainer


if __name__ == "__main__":
    main()
