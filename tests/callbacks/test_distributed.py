"""DDP (gloo, 2 CPU processes): monitors compute on rank 0 only, never deadlock, and leave the weights unchanged."""

import pytest
import pytorch_lightning as pl
import torch

from lit import LitClassifier, concept_pictures, loaders, random_data, read_events, trainer
from probelens import (
    ActivationMonitor,
    ConceptMonitor,
    FilterMonitor,
    GradCAMMonitor,
    ProbeSet,
    SaliencyMonitor,
    ShortcutMonitor,
    StrategyMonitor,
)

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def boxes(images, targets):
    masks = torch.zeros(images.shape[0], 1, *images.shape[-2:], dtype=torch.bool)
    masks[..., 2:8, 3:9] = True
    return masks


def run(tmp_path, callbacks, logger=True):
    pl.seed_everything(11, workers=True)
    train, val = loaders(n=64, batch_size=8)
    module = LitClassifier(seed=3)
    tr = trainer(
        tmp_path,
        callbacks,
        logger=logger,
        max_epochs=2,
        strategy="ddp_spawn",
        devices=2,
        deterministic=True,
    )
    tr.fit(module, train, val)
    return tr, module


def test_ddp_logs_once_per_step_and_keeps_weights_identical(tmp_path):
    probe = ProbeSet.from_dataset(random_data(32, seed=2), num_samples=6, masks=boxes)
    monitors = [
        FilterMonitor(),
        ActivationMonitor(probe),
        GradCAMMonitor(probe, layers="all"),
        SaliencyMonitor(probe),
        ShortcutMonitor(probe, on_shortcut="stop", threshold=1.0),  # exercises the stop broadcast, never fires
        # the concept alert's stop broadcast too (a cosine of 1.0 is never reached), and a forward-only discovery
        # set drawn on every rank from the trainer's validation data
        ConceptMonitor(probe, concepts=concept_pictures(probe), spurious=("a",), on_concept="stop", threshold=1.0),
        StrategyMonitor(probe, source="features", discovery_size=12, min_images=3),
    ]
    from pytorch_lightning.loggers import TensorBoardLogger

    logger = TensorBoardLogger(str(tmp_path / "with"), name="tb", version=0)  # fixed: children and parent agree
    tr, watched = run(tmp_path / "with", monitors, logger=logger)
    _, plain = run(tmp_path / "without", [], logger=False)
    for key, value in plain.state_dict().items():
        assert torch.equal(value, watched.state_dict()[key]), key
    acc = read_events(tr.logger.log_dir)
    steps_per_epoch = 4  # 64 images / 8 per batch / 2 ranks
    images = acc.Tags()["images"]
    assert "probelens/gradcam/model.8" in images and "probelens/filters/model.0" in images
    for tag in images:
        assert [e.step for e in acc.Images(tag)] == [steps_per_epoch - 1, 2 * steps_per_epoch - 1], tag
    assert [e.step for e in acc.Scalars("shortcut/score")] == [steps_per_epoch - 1, 2 * steps_per_epoch - 1]
    assert "probelens/discovery/1" in images  # classes without names: their index as the tag segment
    for tag in ("concept/a/0/cosine", "concept/armed", "discovery/0/clusters"):
        assert [e.step for e in acc.Scalars(tag)] == [steps_per_epoch - 1, 2 * steps_per_epoch - 1], tag
