"""Monitors run wherever Lightning runs: precisions, resume, unusual Trainer settings."""

import glob
import os

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from lit import LitClassifier, loaders, random_data, read_events, trainer
from probelens import ActivationMonitor, FilterMonitor, GradCAMMonitor, ProbeSet, SaliencyMonitor


def probe():
    return ProbeSet.from_dataset(random_data(32, seed=2), num_samples=4)


def monitors(p):
    return [GradCAMMonitor(p, layers="all"), SaliencyMonitor(p), ActivationMonitor(p), FilterMonitor()]


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "16-mixed"])
def test_precision_plugins(tmp_path, precision):
    mons = monitors(probe())
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, mons, max_epochs=1, precision=precision)
    tr.fit(LitClassifier(), train, val)
    assert [(m.fire_count, m.failure_count) for m in mons] == [(1, 0)] * 4
    assert len(read_events(tr.logger.log_dir).Images("probelens/gradcam/model.8")) == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"fast_dev_run": True}, {"limit_val_batches": 0, "max_epochs": 2}, {"logger": False, "max_epochs": 1}],
    ids=["fast_dev_run", "limit_val_batches=0", "logger=False"],
)
def test_unusual_trainer_settings_do_not_break_training(tmp_path, kwargs):
    mons = monitors(probe())
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, mons, **kwargs)
    tr.fit(LitClassifier(), train, val)
    assert all(m.failure_count == 0 for m in mons)
    if "limit_val_batches" in kwargs:  # no validation loop: falls back to train-epoch end
        assert all(m.fire_count == 2 for m in mons)
    if kwargs.get("logger") is False:  # no logger at all: PNGs under default_root_dir
        assert glob.glob(os.path.join(str(tmp_path), "probelens_images", "**", "*.png"), recursive=True)


def test_resumed_run_continues_without_duplicate_steps(tmp_path):
    train, val = loaders(n=32, batch_size=16)
    p = probe()
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    from pytorch_lightning.loggers import TensorBoardLogger

    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    tr = trainer(
        tmp_path, [GradCAMMonitor(p, layers="last"), ckpt], logger=logger, max_epochs=2, enable_checkpointing=True
    )
    tr.fit(LitClassifier(), train, val)
    resumed_monitor = GradCAMMonitor(probe(), layers="last")  # a fresh instance with an identical probe
    logger2 = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    tr2 = trainer(
        tmp_path,
        [resumed_monitor, ModelCheckpoint(dirpath=str(tmp_path / "ckpt2"))],
        logger=logger2,
        max_epochs=4,
        enable_checkpointing=True,
    )
    tr2.fit(LitClassifier(), train, val, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert resumed_monitor.fire_count == 4  # 2 restored from the checkpoint + 2 new
    steps = [e.step for e in read_events(logger2.log_dir).Images("probelens/gradcam/model.8")]
    assert steps == [1, 3, 5, 7]  # one per epoch on the val_loss steps, none repeated after the resume
    assert steps == [e.step for e in read_events(logger2.log_dir).Scalars("val_loss")]


def test_resume_with_a_different_probe_warns(tmp_path):
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, [GradCAMMonitor(probe(), layers="last")], max_epochs=1)
    tr.fit(LitClassifier(), train, val)
    tr.save_checkpoint(tmp_path / "a.ckpt")
    other = ProbeSet.from_dataset(random_data(32, seed=2), num_samples=4, seed=5)
    tr2 = trainer(tmp_path, [GradCAMMonitor(other, layers="last")], max_epochs=2)
    with pytest.warns(UserWarning, match="probe set differs from the one in the checkpoint"):
        tr2.fit(LitClassifier(), train, val, ckpt_path=str(tmp_path / "a.ckpt"))


def test_nan_attributions_are_sanitised_and_training_goes_on(tmp_path):
    class NaNAtEval(LitClassifier):
        def forward(self, x):
            out = super().forward(x)
            return out if self.training else out * float("nan")

    mons = monitors(probe())[:3]
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, mons, max_epochs=1)
    with pytest.warns(UserWarning, match="non-finite values") as record:
        tr.fit(NaNAtEval(), train, val)
    assert tr.global_step == 2
    assert [(m.fire_count, m.failure_count) for m in mons] == [(1, 0)] * 3
    nonfinite = [str(w.message) for w in record if "non-finite" in str(w.message)]
    assert len(nonfinite) == 2  # Grad-CAM and saliency maps are NaN (activations are finite), once per monitor
    acc = read_events(tr.logger.log_dir)
    assert len(acc.Images("probelens/gradcam/model.8")) == 1
    assert len(acc.Images("probelens/saliency/vanilla")) == 1


@pytest.mark.parametrize("how", ["whole module", "submodule"])
def test_torch_compile_explanations_equal_the_eager_model(tmp_path, how):
    from probelens.methods import grad_cam

    p = probe()
    module = LitClassifier()
    if how == "submodule":
        module.model = torch.compile(module.model, backend="aot_eager")
        layers = ["model._orig_mod.4", "model.8"]  # both spellings resolve
        fitted = module
    else:
        layers = ["model.4", "model.8"]
        fitted = torch.compile(module, backend="aot_eager")  # trainer.fit(torch.compile(model))
    monitor = GradCAMMonitor(p, layers=layers)
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, [monitor, SaliencyMonitor(p)], max_epochs=1)
    tr.fit(fitted, train, val)
    assert (monitor.fire_count, monitor.failure_count) == (1, 0)
    result = monitor._pass(fitted, monitor.last_logged_step)  # the pass of the last firing, recomputed
    eager = module.model._orig_mod if how == "submodule" else module.model
    reference = grad_cam(eager, p.images, result.targets["pred"], layers=["4", "8"])
    from probelens.methods.grad_cam import grad_cam_map

    for name, ref in reference.items():
        ours = grad_cam_map(result.activations[f"model.{name}"], result.gradients["pred"][f"model.{name}"], (16, 16))
        assert ref.abs().max() > 0
        torch.testing.assert_close(ours, ref)


class Checkpointed(LitClassifier):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.reentrant = reentrant

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        return self.model[8:](checkpoint(self.model[:8], x, use_reentrant=self.reentrant))


def test_gradient_checkpointing(tmp_path):
    train, val = loaders(n=32, batch_size=16)
    ok = GradCAMMonitor(probe(), layers=["model.4", "model.8"])
    tr = trainer(tmp_path, [ok], max_epochs=1)
    tr.fit(Checkpointed(reentrant=False), train, val)  # hooks fire twice (recompute); the maps are still right
    assert (ok.fire_count, ok.failure_count) == (1, 0)
    bad = GradCAMMonitor(probe(), layers=["model.4"])
    tr = trainer(tmp_path, [bad], max_epochs=1)
    with pytest.raises(ValueError, match="use_reentrant=False"):
        tr.fit(Checkpointed(reentrant=True), train, val)
    assert tr.global_step == 0


def test_frozen_backbone_multilabel_and_dict_outputs(tmp_path):
    class DictMultiLabel(LitClassifier):
        def __init__(self):
            super().__init__(num_classes=3)
            for p in self.model[:9].parameters():
                p.requires_grad_(False)  # frozen backbone, trainable head

        def forward(self, x):
            return {"logits": self.model(x)}

        def training_step(self, batch, batch_idx):
            x, y = batch[0], batch[1]
            targets = torch.nn.functional.one_hot(y, 3).float()
            return torch.nn.functional.binary_cross_entropy_with_logits(self(x)["logits"], targets)

        def validation_step(self, batch, batch_idx):
            pass

    p = probe()
    mons = [GradCAMMonitor(p, layers="all", target="both"), SaliencyMonitor(p), ActivationMonitor(p)]
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, mons, max_epochs=1)
    tr.fit(DictMultiLabel(), train, val)
    assert [(m.fire_count, m.failure_count) for m in mons] == [(1, 0)] * 3
    assert len(read_events(tr.logger.log_dir).Images("probelens/gradcam/model.0")) == 1


def test_target_out_of_range_fails_at_setup(tmp_path):
    bad = ProbeSet(torch.randn(2, 3, 16, 16), torch.tensor([0, 5]))
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, [GradCAMMonitor(bad)], max_epochs=1)
    with pytest.raises(ValueError, match="probe target 5 is out of range: the model outputs 2 classes"):
        tr.fit(LitClassifier(), train, val)
    assert tr.global_step == 0


def test_model_without_conv_layers_fails_at_setup(tmp_path):
    class MLP(LitClassifier):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))

    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, [GradCAMMonitor(probe(), layers="auto")], max_epochs=1)
    with pytest.raises(ValueError, match="no 2-D convolution"):
        tr.fit(MLP(), train, val)
    assert tr.global_step == 0


def test_filter_monitor_on_a_non_conv_layer_fails_at_setup(tmp_path):
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, [FilterMonitor(layers=["model.1"])], max_epochs=1)
    with pytest.raises(ValueError, match="are not 2-D convolutions"):
        tr.fit(LitClassifier(), train, val)
    assert tr.global_step == 0
