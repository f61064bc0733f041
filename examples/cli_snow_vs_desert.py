"""The demo through LightningCLI: every monitor configured in YAML (``examples/snow_vs_desert.yaml``).

    python examples/cli_snow_vs_desert.py fit --config examples/snow_vs_desert.yaml

No ProbeSet in the YAML: each monitor builds its probe set from the validation data when training starts
(``probe_size``/``probe_seed``), taking masks, normalisation and class names from the dataset.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI
from snow_vs_desert import LeopardClassifier
from torch.utils.data import DataLoader

from probelens.data import SnowDesertDataset


class SnowDesertDataModule(pl.LightningDataModule):
    """Procedural snow leopard vs arabian leopard images; the validation items carry foreground masks."""

    def __init__(
        self, n: int = 4000, size: int = 64, p: float = 0.95, spot_contrast: float = 0.6, batch_size: int = 64
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        h = self.hparams
        common = dict(size=h.size, p=h.p, spot_contrast=h.spot_contrast)
        self.train_set = SnowDesertDataset(n=h.n, seed=0, **common)
        self.val_set = SnowDesertDataset(n=max(h.n // 4, 64), seed=1, return_masks=True, **common)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


def main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(LeopardClassifier, SnowDesertDataModule, args=args, save_config_callback=None)


if __name__ == "__main__":
    main()
