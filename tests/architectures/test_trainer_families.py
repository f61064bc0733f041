"""One short Lightning run per architecture family with GradCAMMonitor + ActivationMonitor at layers="auto", read
back from the TensorBoard event file: every auto layer's images are there, at every firing, and show a map."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lit import read_events, trainer
from probelens import ActivationMonitor, GradCAMMonitor, ProbeSet
from probelens.methods.layers import resolve_layers

tvm = pytest.importorskip("torchvision.models")
timm = pytest.importorskip("timm")
from timm.models.swin_transformer import SwinTransformer  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SIZE = (64, 48)  # non-square: a grid read on the wrong axis would not fit


class Wrapped(pl.LightningModule):
    def __init__(self, make) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = make()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


FAMILIES = {
    # torchvision's Bottleneck (a ReLU run three times per block, stride in conv2), one block per stage
    "bottleneck resnet": lambda: tvm.ResNet(tvm.resnet.Bottleneck, [1, 1, 1, 1], num_classes=2),
    "squeeze-excite": lambda: tvm.mobilenet_v3_small(num_classes=2),
    "convnext (channels-last blocks)": lambda: timm.create_model("convnext_atto", num_classes=2),
    "mobilevit": lambda: timm.create_model("mobilevit_xxs", num_classes=2),
    "vit (tokens)": lambda: VisionTransformer(
        img_size=SIZE, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=2
    ),
    "swin (channels-last stages)": lambda: SwinTransformer(
        img_size=SIZE, patch_size=4, window_size=4, embed_dim=16, depths=(2, 2), num_heads=(1, 2), num_classes=2
    ),
}


def _decode(event) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    return np.asarray(Image.open(BytesIO(event.encoded_image_string)))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_training_run_logs_every_auto_layer(family, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, *SIZE, generator=g)
    y = torch.arange(16) % 2
    probe = ProbeSet(x[:4], y[:4], class_names=["a", "b"])
    module = Wrapped(FAMILIES[family])
    expected = ["net." + n for n in resolve_layers(module.net, "auto", example_input=x[:1])]
    monitors = [GradCAMMonitor(probe, every_n_steps=2), ActivationMonitor(probe, every_n_steps=2, max_channels=2)]
    tr = trainer(tmp_path, monitors, max_epochs=1, limit_val_batches=1)
    tr.fit(module, DataLoader(TensorDataset(x, y), batch_size=4), DataLoader(TensorDataset(x[:4], y[:4]), batch_size=4))
    assert all(m.failure_count == 0 and m.fire_count == 2 for m in monitors)
    acc = read_events(tr.logger.log_dir)
    tags = monitors[0].layer_tags  # the layer's name, or its depth and name where the names do not sort by depth
    assert list(tags) == expected and monitors[1].layer_tags == tags
    steps = [e.step for e in acc.Images(f"probelens/gradcam/{tags[expected[0]]}")]
    assert len(steps) == 2
    for layer in expected:
        cams = acc.Images(f"probelens/gradcam/{tags[layer]}")
        assert [e.step for e in cams] == steps, layer
        assert _decode(cams[-1]).std() > 1, layer  # a drawn map, not a blank card
        assert [e.step for e in acc.Images(f"probelens/activations/{tags[layer]}")] == steps, layer
    if family == "vit (tokens)":  # setup says how token layers are read: the class token dropped
        assert f"GradCAMMonitor: reading {expected[0]} as tokens 1+8x6 (1 prefix token dropped)" in caplog.text


def test_the_vit_example_trains_with_grad_cam_on_token_layers(tmp_path):
    spec = importlib.util.spec_from_file_location("vit_example", EXAMPLES / "vit_snow_vs_desert.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    tr = example.main(["--n", "64", "--epochs", "1", "--logdir", str(tmp_path)])
    acc = read_events(tr.logger.log_dir)
    tags = acc.Tags()["images"]
    for block in (1, 2, 4, 5):  # evenly spaced over 6 blocks, ending at the last, at each block's first token output
        for method in ("gradcam", "layercam"):
            assert _decode(acc.Images(f"probelens/{method}/net.blocks.{block}.norm1")[0]).std() > 1
    assert "probelens/activations/net.blocks.5.norm1" in tags
    table = acc.Tensors("probelens/architecture/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "tokens 1+8x8 (1 prefix token dropped)" in table
