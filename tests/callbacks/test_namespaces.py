"""Both Lightning namespaces: ``pytorch_lightning`` (probelens.pl) and ``lightning.pytorch`` (probelens.lightning)."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import probelens
from lit import decode, random_data, read_events
from models import small_cnn
from probelens import ProbeSet

L = pytest.importorskip("lightning.pytorch")
import pytorch_lightning  # noqa: E402

from probelens import lightning as probelens_lightning  # noqa: E402
from probelens import pl as probelens_pl  # noqa: E402


class LitL(L.LightningModule):
    """The same tiny classifier on the ``lightning.pytorch`` base class."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.model = small_cnn()
        self.lr = lr

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return DataLoader(random_data(32), batch_size=16)

    def val_dataloader(self):
        return DataLoader(random_data(16, seed=1), batch_size=16)


def test_each_namespace_gets_its_own_callback_subclasses():
    for name in ("GradCAMMonitor", "SaliencyMonitor", "ShortcutMonitor", "FilterMonitor"):
        pl_cls, l_cls = getattr(probelens_pl, name), getattr(probelens_lightning, name)
        assert issubclass(pl_cls, pytorch_lightning.Callback) and not issubclass(pl_cls, L.Callback)
        assert issubclass(l_cls, L.Callback) and not issubclass(l_cls, pytorch_lightning.Callback)
        assert pl_cls.__mro__[1] is l_cls.__mro__[1]  # one framework-free core
        assert getattr(probelens, name) is pl_cls
    assert probelens_pl.GradCAMMonitor(ProbeSet(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))).state_key.startswith(
        "GradCAMMonitor{"
    )


def test_lightning_pytorch_trainer_with_its_monitors(tmp_path):
    probe = ProbeSet.from_dataset(random_data(32, seed=2), num_samples=4)
    monitors = [
        probelens_lightning.GradCAMMonitor(probe, layers="all"),
        probelens_lightning.SaliencyMonitor(probe),
        probelens_lightning.FilterMonitor(),
    ]
    logger = L.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    trainer = L.Trainer(
        max_epochs=2,
        logger=logger,
        callbacks=monitors,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(LitL())
    assert [(m.fire_count, m.failure_count) for m in monitors] == [(2, 0)] * 3
    acc = read_events(logger.log_dir)
    events = acc.Images("probelens/gradcam/model.8")
    assert [e.step for e in events] == [1, 3] and decode(events[-1]).std() > 5  # the val_loss steps


@pytest.mark.parametrize("namespace", ["lightning", "pl"])
def test_lightning_cli_accepts_the_monitors_by_class_path(tmp_path, namespace):
    """LightningCLI validates callbacks with isinstance: each namespace's CLI needs that namespace's classes."""
    if namespace == "lightning":
        from lightning.pytorch.cli import LightningCLI

        model_class = LitL
    else:
        from pytorch_lightning.cli import LightningCLI

        from lit import LitClassifier as model_class
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
trainer:
  max_epochs: 1
  logger: false
  enable_progress_bar: false
  callbacks:
    - class_path: probelens.{namespace}.FilterMonitor
      init_args:
        layers: all
        max_images: 8
        every_n_epochs: 1
"""
    )
    cli = LightningCLI(model_class, args=["--config", str(config)], run=False, save_config_callback=None)
    monitors = [c for c in cli.trainer.callbacks if type(c).__name__ == "FilterMonitor"]
    assert len(monitors) == 1
    assert monitors[0].max_images == 8 and type(monitors[0]).__module__ == f"probelens.{namespace}"
    bad = tmp_path / "bad.yaml"
    bad.write_text(config.read_text().replace("max_images: 8", "max_images: many"))
    with pytest.raises(SystemExit):  # jsonargparse validates the typed constructor arguments
        LightningCLI(model_class, args=["--config", str(bad)], run=False, save_config_callback=None)


def test_lightning_cli_fit_with_probe_built_from_the_validation_data(tmp_path):
    """No ProbeSet in YAML: monitors with probe=None pick one from the validation data when training starts, and
    monitors with the same probe_size/probe_seed share it (one probe pass per log step)."""
    from lightning.pytorch.cli import LightningCLI

    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
trainer:
  max_epochs: 2
  default_root_dir: {tmp_path}
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args:
      save_dir: {tmp_path}
      name: tb
  enable_progress_bar: false
  enable_checkpointing: false
  num_sanity_val_steps: 0
  callbacks:
    - class_path: probelens.lightning.GradCAMMonitor
      init_args:
        layers: all
        probe_size: 6
    - class_path: probelens.lightning.SaliencyMonitor
      init_args:
        methods: [vanilla, smoothgrad]
        probe_size: 6
"""
    )
    cli = LightningCLI(LitL, args=["fit", "--config", str(config)], save_config_callback=None)
    grad_cam, sal = [c for c in cli.trainer.callbacks if type(c).__module__ == "probelens.lightning"]
    assert grad_cam.probe is sal.probe and len(grad_cam.probe) == 6
    assert grad_cam.fire_count == 2 and sal.fire_count == 2 and sal.failure_count == 0
    acc = read_events(cli.trainer.logger.log_dir)
    assert [e.step for e in acc.Images("probelens/saliency/smoothgrad")] == [1, 3]
    assert len(acc.Images("probelens/gradcam/model.4")) == 2


def test_lazy_probe_takes_masks_normalisation_and_class_names_from_the_dataset(tmp_path):
    from lit import LitClassifier, trainer
    from probelens.data import SnowDesertDataset

    train = SnowDesertDataset(n=64, size=16, seed=0)
    val = SnowDesertDataset(n=32, size=16, seed=1, return_masks=True)
    shortcut = probelens_pl.ShortcutMonitor(probe_size=8)
    grad_cam = probelens_pl.GradCAMMonitor(probe_size=8, layers="last")
    tr = trainer(tmp_path, [shortcut, grad_cam], max_epochs=1)
    tr.fit(LitClassifier(), DataLoader(train, batch_size=32), DataLoader(val, batch_size=32))
    probe = shortcut.probe
    assert probe is grad_cam.probe and len(probe) == 8 and probe.has_masks
    assert probe.mean == tuple(val.mean) and probe.class_names == list(val.class_names)
    assert torch.bincount(probe.targets).tolist() == [4, 4]
    assert shortcut.fire_count == 1 and shortcut.failure_count == 0
    assert "shortcut/score" in read_events(tr.logger.log_dir).Tags()["scalars"]
    with pytest.raises(ValueError, match="probe_size=0 is not allowed; probe_size must be an integer >= 1"):
        probelens_pl.GradCAMMonitor(probe_size=0)


@pytest.mark.parametrize(
    ("installed", "blocked"), [("lightning.pytorch", "pytorch_lightning"), ("pytorch_lightning", "lightning")]
)
def test_either_namespace_works_alone(tmp_path, installed, blocked):
    """With the other namespace not importable, ``probelens.GradCAMMonitor`` is a callback of the installed one and a
    Trainer of that namespace runs it; with neither, the error names both extras."""
    script = f"""
import sys
sys.modules[{blocked!r}] = None  # as if not installed: importing it raises ModuleNotFoundError
import torch, torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
import {installed} as L
import probelens
from probelens import GradCAMMonitor, ProbeSet
assert issubclass(GradCAMMonitor, L.Callback)
class Lit(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                       torch.nn.Flatten(), torch.nn.Linear(4, 2))
    def forward(self, x):
        return self.net(x)
    def training_step(self, batch, i):
        return F.cross_entropy(self(batch[0]), batch[1])
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)
data = TensorDataset(torch.randn(8, 3, 12, 12), torch.tensor([0, 1] * 4))
monitor = GradCAMMonitor(ProbeSet(data.tensors[0][:4], data.tensors[1][:4]))
trainer = L.Trainer(max_epochs=1, callbacks=[monitor], logger=L.loggers.TensorBoardLogger({str(tmp_path)!r}),
                    enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
trainer.fit(Lit(), DataLoader(data, batch_size=4))
assert monitor.fire_count == 1 and monitor.failure_count == 0, (monitor.fire_count, monitor.failure_count)
print(type(monitor).__module__)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == ("probelens.lightning" if installed == "lightning.pytorch" else "probelens.pl")


def test_without_lightning_the_error_names_the_extras():
    script = (
        "import sys\nsys.modules['pytorch_lightning'] = sys.modules['lightning'] = None\nimport probelens.methods\n"
        "try:\n    probelens.GradCAMMonitor\nexcept ModuleNotFoundError as err:\n    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "probelens[pl]" in out.stdout and "probelens[lightning]" in out.stdout, out.stdout
