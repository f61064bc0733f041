"""Every monitor x every Trainer setup users have: no crash, images on Lightning's step axis, no duplicate
(tag, step), no hook left, weights bit-identical to the same run without monitors.

Each setup runs twice from one seed, with and without the monitors (every kind of monitor, on epoch and step
schedules, two of one class side by side under distinct names), on a tiny model so the matrix stays CI-sized.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from lit import LitClassifier, concept_pictures, random_data, read_events
from probelens import (
    ActivationMonitor,
    ConceptMonitor,
    DeconvMonitor,
    FeatureVisMonitor,
    FilterMonitor,
    GradCAMMonitor,
    OcclusionMonitor,
    ProbeSet,
    SaliencyMonitor,
    ShortcutMonitor,
    StrategyMonitor,
)
from probelens.methods.hooks import count_hooks

BATCHES_PER_EPOCH = 4


def _boxes(images, targets):
    masks = torch.zeros(images.shape[0], 1, *images.shape[-2:], dtype=torch.bool)
    masks[..., 2:9, 3:10] = True
    return masks


def probe_set() -> ProbeSet:
    data = random_data(32, seed=2)
    return ProbeSet.from_dataset(data, num_samples=6, seed=0, class_names=["cat", "dog"], masks=_boxes)


def every_monitor(probe: ProbeSet) -> list[Any]:
    """One of each kind (all on an every-epoch schedule, one on a step schedule), two GradCAMMonitors by name."""
    epoch = {"every_n_epochs": 1}
    return [
        FilterMonitor(**epoch),
        ActivationMonitor(probe, **epoch),
        GradCAMMonitor(probe, layers="all", **epoch),
        GradCAMMonitor(probe, layers="last", target="label", name="gradcam_label", **epoch),
        SaliencyMonitor(probe, methods=("vanilla", "smoothgrad"), method_options={"smoothgrad": {"samples": 2}}),
        SaliencyMonitor(probe, methods="vanilla", every_n_epochs=None, every_n_steps=2, name="saliency_steps"),
        OcclusionMonitor(probe, window=8, **epoch),
        DeconvMonitor(probe, top_k=2, max_images=2, **epoch),
        FeatureVisMonitor(probe, layers="model.8", channels=2, steps=2, **epoch),
        ShortcutMonitor(probe, **epoch),
        # the monitors of the no-masks evidence: TCAV on two concept sets (its own passes over their pictures),
        # strategy discovery on the probe's maps and on a forward-only discovery set drawn from the trainer's data
        ConceptMonitor(probe, concepts=concept_pictures(probe), spurious=("a",), **epoch),
        StrategyMonitor(probe, min_images=3, **epoch),
        StrategyMonitor(probe, source="features", discovery_size=12, min_images=3, name="discovery", **epoch),
    ]


class TwoValLoaders(LitClassifier):
    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))


class ManualTwoOptimizers(LitClassifier):
    """Manual optimisation: features and head stepped by two optimizers."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        features, head = self.optimizers()
        loss = F.cross_entropy(self(batch[0]), batch[1])
        features.zero_grad()
        head.zero_grad()
        self.manual_backward(loss)
        features.step()
        head.step()
        self.log("train_loss", loss)

    def configure_optimizers(self):
        params = list(self.model.parameters())
        return torch.optim.SGD(params[:-2], lr=self.lr), torch.optim.SGD(params[-2:], lr=self.lr)


class Predicting(LitClassifier):
    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self(batch[0]).argmax(1)


@dataclass
class Setup:
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)
    module: type[LitClassifier] = LitClassifier
    val: str = "one"  # "one", "none", "two"
    after: Callable[..., None] | None = None  # run after the first fit: (trainer, module, run) -> None


def _validate_test_predict(trainer: pl.Trainer, module, run) -> None:
    trainer.validate(module, run.val_loader(), verbose=False)
    trainer.validate(module, run.val_loader(), verbose=False)  # again at the same step: skipped, never a duplicate
    trainer.test(module, run.val_loader(), verbose=False)
    trainer.predict(module, run.val_loader())


def _second_trainer(trainer: pl.Trainer, module, run) -> None:
    second = run.trainer("second", max_epochs=1)
    second.fit(module, run.train_loader(), run.val_loader())
    run.trainers.append(second)


def _resume_mid_epoch(trainer: pl.Trainer, module, run) -> None:
    """The first fit stopped at step 6 (mid-epoch 1, after a checkpoint there); resume it into the same log dir."""
    ckpts = sorted(glob.glob(os.path.join(run.root, "ckpt", "*step=6*.ckpt")))
    assert ckpts, os.listdir(os.path.join(run.root, "ckpt"))
    fresh = LitClassifier()
    run.monitors = every_monitor(run.probe) if run.with_monitors else []
    resumed = run.trainer("first", version=0, resume=True, max_steps=-1)
    resumed.fit(fresh, run.train_loader(), run.val_loader(), ckpt_path=ckpts[0])
    run.trainers.append(resumed)
    run.final_module = fresh


SETUPS: dict[str, Setup] = {
    "no validation loop": Setup(val="none"),
    "limit_val_batches=0": Setup({"limit_val_batches": 0}),
    "check_val_every_n_epoch=2": Setup({"check_val_every_n_epoch": 2, "max_epochs": 3}),
    "val_check_interval=0.25": Setup({"val_check_interval": 0.25}),
    "max_steps mid-epoch": Setup({"max_steps": 6, "max_epochs": -1}),
    "fast_dev_run": Setup({"fast_dev_run": True}),
    "overfit_batches=2": Setup({"overfit_batches": 2}),
    "manual optimisation, two optimizers": Setup(module=ManualTwoOptimizers),
    "two validation dataloaders": Setup(module=TwoValLoaders, val="two"),
    "accumulate_grad_batches=3": Setup({"accumulate_grad_batches": 3, "max_epochs": 3}),
    "gradient clipping": Setup({"gradient_clip_val": 0.1}),
    "bf16-mixed": Setup({"precision": "bf16-mixed"}),
    "validate/test/predict after fit": Setup(module=Predicting, after=_validate_test_predict),
    "the same monitors on a second Trainer": Setup(after=_second_trainer),
    "resume from a mid-epoch checkpoint": Setup({"max_steps": 6}, after=_resume_mid_epoch),
}


class Run:
    """One seeded run of a setup, with or without the monitors."""

    def __init__(self, root: str, setup: Setup, with_monitors: bool) -> None:
        self.root = root
        self.setup = setup
        self.with_monitors = with_monitors
        self.probe = probe_set()
        self.monitors = every_monitor(self.probe) if with_monitors else []
        self.trainers: list[pl.Trainer] = []
        self.final_module: Any = None

    def train_loader(self) -> DataLoader:
        data = random_data(8 * BATCHES_PER_EPOCH)
        return DataLoader(data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))

    def val_loader(self) -> DataLoader:
        return DataLoader(random_data(16, seed=1), batch_size=8)

    def trainer(self, name: str, version: int | None = None, resume: bool = False, **overrides: Any) -> pl.Trainer:
        kwargs = dict(
            max_epochs=2,
            accelerator="cpu",
            devices=1,
            logger=TensorBoardLogger(self.root, name=name, version=version),
            callbacks=list(self.monitors),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=self.root,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        kwargs.update(self.setup.trainer_kwargs)
        if self.setup.after is _resume_mid_epoch:
            kwargs["enable_checkpointing"] = True
            if not resume:
                every = ModelCheckpoint(os.path.join(self.root, "ckpt"), every_n_train_steps=6, save_top_k=-1)
                kwargs["callbacks"] = [*kwargs["callbacks"], every]
        kwargs.update(overrides)
        return pl.Trainer(**kwargs)

    def go(self) -> torch.nn.Module:
        pl.seed_everything(0, verbose=False)
        module = self.setup.module()
        first = self.trainer("first")
        self.trainers.append(first)
        val = {"one": self.val_loader(), "none": None, "two": [self.val_loader(), self.val_loader()]}[self.setup.val]
        first.fit(module, self.train_loader(), val)
        if self.setup.after is not None:
            self.setup.after(first, module, self)
        return self.final_module or module


def _lightning_steps(acc) -> set[int]:
    """Steps at which Lightning itself wrote a scalar (losses, epoch), i.e. the loss curves' step axis."""
    ours = ("probelens/", "shortcut/", "concept/", "discovery/", "validate/", "test/")
    return {e.step for tag in acc.Tags()["scalars"] if not tag.startswith(ours) for e in acc.Scalars(tag)}


@pytest.mark.parametrize("name", list(SETUPS))
def test_every_monitor_in_every_trainer_setup(tmp_path, name):
    setup = SETUPS[name]
    plain = Run(str(tmp_path / "plain"), setup, with_monitors=False).go()
    run = Run(str(tmp_path / "monitored"), setup, with_monitors=True)
    monitored = run.go()

    # the training it watched is the training without it, bit for bit
    plain_state, monitored_state = plain.state_dict(), monitored.state_dict()
    assert plain_state.keys() == monitored_state.keys()
    for key, value in plain_state.items():
        assert torch.equal(value, monitored_state[key]), (name, key)

    assert count_hooks(monitored) == 0, name
    failed = {m.name: m.failure_count for m in run.monitors if m.failure_count}
    assert not failed, (name, failed)
    fired = {m.name: m.fire_count for m in run.monitors}
    quiet = {"saliency_steps"} if setup.trainer_kwargs.get("fast_dev_run") else set()  # one step, every_n_steps=2
    assert all(count >= 1 for key, count in fired.items() if key not in quiet), (name, fired)

    if setup.trainer_kwargs.get("fast_dev_run"):  # Lightning swaps in a dummy logger: PNG files instead
        pngs = glob.glob(str(tmp_path / "monitored" / "**" / "*.png"), recursive=True)
        assert pngs, name
        return
    for log_dir in sorted({t.logger.log_dir for t in run.trainers}):
        acc = read_events(log_dir)
        images = acc.Tags()["images"]
        assert images, (name, log_dir)
        lightning = _lightning_steps(acc)
        for tag in images:
            steps = [e.step for e in acc.Images(tag)]
            assert len(steps) == len(set(steps)), (name, log_dir, tag, steps)  # never two images at one (tag, step)
            assert set(steps) <= lightning, (name, tag, sorted(set(steps) - lightning), sorted(lightning))
        for tag in acc.Tags()["scalars"]:
            steps = [e.step for e in acc.Scalars(tag)]
            if tag.startswith(("probelens/", "shortcut/", "concept/", "discovery/")):
                assert len(steps) == len(set(steps)), (name, log_dir, tag, steps)
    if setup.after is _validate_test_predict:
        acc = read_events(run.trainers[0].logger.log_dir)
        stages = {tag.split("/")[0] for tag in acc.Tags()["images"]}
        assert {"probelens", "validate", "test"} <= stages, stages
    if setup.after is _second_trainer:
        first, second = (read_events(t.logger.log_dir) for t in run.trainers)
        tag = "probelens/gradcam/model.8"
        # the first run keeps its two epochs; the second run (one epoch) gets its own pictures in its own log dir
        assert [e.step for e in first.Images(tag)] == [BATCHES_PER_EPOCH - 1, 2 * BATCHES_PER_EPOCH - 1]
        assert [e.step for e in second.Images(tag)] == [BATCHES_PER_EPOCH - 1]
    if setup.after is _resume_mid_epoch:
        gradcam = next(m for m in run.monitors if m.name == "GradCAMMonitor")
        # the filmstrip came back from the checkpoint (saved at step 6, after epoch 0's frame at step 3), and the
        # resumed run continued it at the end of epoch 1 (step 7)
        assert [step for step, _ in gradcam._frames] == [BATCHES_PER_EPOCH - 1, 2 * BATCHES_PER_EPOCH - 1]
