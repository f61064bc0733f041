"""Render the README gallery: train the demo CNN briefly with every monitor and save the last image of each tag.

python docs/make_gallery.py          # ~2 minutes on 2 CPU cores; writes docs/images/gallery/*.png
"""

from __future__ import annotations

import importlib.util
import io
import tempfile
from pathlib import Path

import pytorch_lightning as pl
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from probelens import (
    ActivationMonitor,
    DeconvMonitor,
    FeatureVisMonitor,
    FilterMonitor,
    GradCAMMonitor,
    OcclusionMonitor,
    ProbeSet,
    SaliencyMonitor,
    ShortcutMonitor,
)
from probelens.data import CLASS_NAMES, MEAN, STD, SnowDesertDataset

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images" / "gallery"
KEEP = {
    "probelens/filters/net.0.0": "filters_first_layer",
    "probelens/filters/net.0.4": "filters_second_layer",
    "probelens/activations/net.0.2": "activations_stage1",
    "probelens/gradcam/net.0.12": "gradcam_last_layer",
    "probelens/gradcam/net.0.4": "gradcam_second_layer",
    "probelens/gradcam_filmstrip/net.0.12": "gradcam_filmstrip",
    "probelens/saliency/vanilla": "saliency_vanilla",
    "probelens/saliency/gradient_x_input": "saliency_gradient_x_input",
    "probelens/saliency/guided_backprop": "saliency_guided_backprop",
    "probelens/saliency/smoothgrad": "saliency_smoothgrad",
    "probelens/saliency/integrated_gradients": "saliency_integrated_gradients",
    "probelens/saliency/expected_gradients": "saliency_expected_gradients",
    "probelens/occlusion/8x8": "occlusion",
    "probelens/deconv/net.0.10": "deconv_projections",
    "probelens/feature_vis/net.0.10": "feature_visualization",
    "shortcut/counterfactuals": "shortcut_counterfactuals",
}


def main() -> None:
    spec = importlib.util.spec_from_file_location("snow_vs_desert", ROOT / "examples" / "snow_vs_desert.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    pl.seed_everything(0)
    train = SnowDesertDataset(n=2000, p=0.95, spot_contrast=0.6, seed=0)
    val = SnowDesertDataset(n=256, p=0.95, spot_contrast=0.6, seed=1, return_masks=True)
    probe = ProbeSet.from_dataset(val, num_samples=8, seed=0, mean=MEAN, std=STD, class_names=CLASS_NAMES)
    shortcut_probe = ProbeSet.from_dataset(val, num_samples=32, seed=0, mean=MEAN, std=STD, class_names=CLASS_NAMES)
    monitors = [
        FilterMonitor(layers=["net.0.0", "net.0.4"], max_images=16),
        ActivationMonitor(probe, layers=["net.0.2"], max_images=4),
        GradCAMMonitor(probe, layers=["net.0.4", "net.0.12"]),
        SaliencyMonitor(
            probe,
            methods=(
                "vanilla",
                "gradient_x_input",
                "guided_backprop",
                "smoothgrad",
                "integrated_gradients",
                "expected_gradients",
            ),
        ),
        OcclusionMonitor(probe, window=8, every_n_epochs=1),
        DeconvMonitor(probe, layers="net.0.10", every_n_epochs=1),
        FeatureVisMonitor(probe, layers="net.0.10", channels=8, steps=96, every_n_epochs=1),
        ShortcutMonitor(shortcut_probe, max_images=4),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        logger = TensorBoardLogger(tmp, name="gallery")
        trainer = pl.Trainer(
            max_epochs=3,
            logger=logger,
            callbacks=monitors,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            accelerator="cpu",
        )
        trainer.fit(
            demo.LeopardClassifier(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=256)
        )
        from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

        acc = EventAccumulator(logger.log_dir, size_guidance={IMAGES: 0})
        acc.Reload()
        OUT.mkdir(parents=True, exist_ok=True)
        for tag in acc.Tags()["images"]:
            if tag not in KEEP:
                continue
            image = Image.open(io.BytesIO(acc.Images(tag)[-1].encoded_image_string)).convert("RGB")
            name = KEEP[tag]
            image.save(OUT / f"{name}.png", optimize=True)
            print(f"{tag:45s} -> {OUT.relative_to(ROOT)}/{name}.png {image.size}")
        missing = sorted(set(KEEP) - set(acc.Tags()["images"]))
        if missing:
            print("missing tags:", ", ".join(missing), "| available:", ", ".join(sorted(acc.Tags()["images"])))


if __name__ == "__main__":
    main()
