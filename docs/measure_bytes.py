"""Bytes each monitor writes per firing at its defaults, on the demo: the table in the README ("Bytes per firing").

    python docs/measure_bytes.py          # ~1 minute on 2 CPU cores

Each monitor runs alone with its default options on the demo's CNN (examples/snow_vs_desert.py, random init, one
epoch of 256 images, every_n_steps=2) with a TensorBoardLogger; the pictures are read back from probelens' own event
file and their PNG bytes summed per firing. Probe: 16 images at 64x64 (ShortcutMonitor: 32 with masks).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import warnings
from pathlib import Path

import pytorch_lightning as pl
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator
from torch.utils.data import DataLoader

import probelens
from probelens import ProbeSet
from probelens.data import CLASS_NAMES, MEAN, STD, SnowDesertDataset

ROOT = Path(__file__).resolve().parents[1]
MONITORS = [
    "FilterMonitor",
    "ActivationMonitor",
    "GradCAMMonitor",
    "SaliencyMonitor",
    "OcclusionMonitor",
    "DeconvMonitor",
    "FeatureVisMonitor",
    "ShortcutMonitor",
]


def load_demo():
    spec = importlib.util.spec_from_file_location("snow_vs_desert", ROOT / "examples" / "snow_vs_desert.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["snow_vs_desert"] = module
    spec.loader.exec_module(module)
    return module


def measure(name: str, demo, root: str) -> tuple[int, float, int]:
    """(firings, KiB of PNG per firing, pictures per firing) of monitor ``name`` at its defaults."""
    pl.seed_everything(0, verbose=False)
    train = SnowDesertDataset(n=256, seed=0, size=64)
    val = SnowDesertDataset(n=128, seed=1, size=64, return_masks=True)
    k = 32 if name == "ShortcutMonitor" else 16
    probe = ProbeSet.from_dataset(val, num_samples=k, per_class=True, mean=MEAN, std=STD, class_names=CLASS_NAMES)
    cls = getattr(probelens, name)
    monitor = cls(every_n_steps=2) if name == "FilterMonitor" else cls(probe, every_n_steps=2)
    logger = pl.loggers.TensorBoardLogger(root, name=name)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=logger,
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(demo.LeopardClassifier(), DataLoader(train, batch_size=64))
    acc = EventAccumulator(logger.log_dir, size_guidance={IMAGES: 0})
    acc.Reload()
    images = [e for tag in acc.Tags()["images"] for e in acc.Images(tag)]
    fires = max(1, monitor.fire_count)
    return fires, sum(len(e.encoded_image_string) for e in images) / fires / 1024, round(len(images) / fires)


def main() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    demo = load_demo()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name in MONITORS:
            _fires, kib, pictures = measure(name, demo, root)
            rows.append(f"| `{name}` | {pictures} | {kib:.0f} |")
    print("| monitor (defaults) | pictures per firing | KiB of PNG per firing |")
    print("| --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
