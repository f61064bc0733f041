"""Bad input fails early with a message that names the option, the value and the fix (docs/errors.md lists each
case with its test here): in the constructor where it can be known there, else at fit start, before the first
training step."""

from __future__ import annotations

import warnings
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from lit import LitClassifier, loaders, random_data, read_events, shared_pass_of, trainer
from probelens import (
    ActivationMonitor,
    DeconvMonitor,
    FeatureVisMonitor,
    FilterMonitor,
    GradCAMMonitor,
    OcclusionMonitor,
    ProbeMonitor,
    ProbeSet,
    SaliencyMonitor,
    ShortcutMonitor,
)
from probelens.core.session import SharedPass
from probelens.methods import grad_cam


def make_probe(n=6, size=(16, 16)):
    return ProbeSet.from_dataset(random_data(32, size=size, seed=2), num_samples=n, seed=0)


PROBE = make_probe()

# (case, constructor call, the words the message must contain)
CONSTRUCTOR_CASES = [
    (
        "reshape= not a function",
        lambda: GradCAMMonitor(PROBE, reshape="tokens"),
        "reshape= must be None, a function (raw output -> [N, C, h, w]) or a {layer name: function} mapping",
    ),
    (
        "reshape= mapping to a non-function",
        lambda: ActivationMonitor(PROBE, reshape={"model.4": 3}),
        "reshape= must map layer names (str) to functions",
    ),
    (
        "SmoothGrad samples=0",
        lambda: SaliencyMonitor(PROBE, ("smoothgrad",), method_options={"smoothgrad": {"samples": 0}}),
        "samples must be an integer >= 1, got 0",
    ),
    (
        "SmoothGrad noise<0",
        lambda: SaliencyMonitor(PROBE, ("smoothgrad",), method_options={"smoothgrad": {"noise": -0.1}}),
        "noise must be a finite number >= 0",
    ),
    (
        "IG steps=0",
        lambda: SaliencyMonitor(
            PROBE, ("integrated_gradients",), method_options={"integrated_gradients": {"steps": 0}}
        ),
        "steps must be an integer >= 1, got 0",
    ),
    (
        "IG baseline of the wrong shape",
        lambda: SaliencyMonitor(
            PROBE,
            ("integrated_gradients",),
            method_options={"integrated_gradients": {"baseline": torch.zeros(3, 5, 5)}},
        ),
        "baseline",
    ),
    (
        "expected gradients samples=0",
        lambda: SaliencyMonitor(PROBE, ("expected_gradients",), method_options={"expected_gradients": {"samples": 0}}),
        "samples must be an integer >= 1",
    ),
    (
        "saliency alpha out of range",
        lambda: SaliencyMonitor(PROBE, alpha=1.5),
        "alpha=1.5 is not allowed; alpha must be a finite number in [0.0, 1.0]",
    ),
    ("Grad-CAM alpha out of range", lambda: GradCAMMonitor(PROBE, alpha=-0.1), "alpha=-0.1 is not allowed"),
    ("occlusion stride<0", lambda: OcclusionMonitor(PROBE, window=4, stride=-1), "stride=-1 is not allowed"),
    ("occlusion stride=0", lambda: OcclusionMonitor(PROBE, window=4, stride=0), "stride=0 is not allowed"),
    (
        "occlusion stride beyond the window",
        lambda: OcclusionMonitor(PROBE, window=4, stride=6),
        "larger than the window",
    ),
    (
        "occlusion window beyond the image",
        lambda: OcclusionMonitor(PROBE, window=32),
        "window=(32, 32) is larger than the probe images",
    ),
    (
        "occlusion baseline of the wrong shape",
        lambda: OcclusionMonitor(PROBE, window=4, baseline=torch.zeros(2, 3, 3)),
        "baseline",
    ),
    (
        "occlusion unknown baseline",
        lambda: OcclusionMonitor(PROBE, baseline="median"),
        "baseline='median' is not allowed",
    ),
    (
        "FeatureVis lr<0",
        lambda: FeatureVisMonitor(PROBE, lr=-0.05),
        "lr=-0.05 is not allowed; lr must be a finite number in (0.0, inf)",
    ),
    ("FeatureVis channels=[]", lambda: FeatureVisMonitor(PROBE, channels=[]), "channels=[] is not allowed"),
    (
        "FeatureVis negative channel",
        lambda: FeatureVisMonitor(PROBE, channels=[0, -2]),
        "channels=[0, -2] is not allowed",
    ),
    ("FeatureVis steps=0", lambda: FeatureVisMonitor(PROBE, steps=0), "steps=0 is not allowed"),
    (
        "max_images=0",
        lambda: GradCAMMonitor(PROBE, max_images=0),
        "max_images=0 is not allowed; max_images must be an integer >= 1 or None",
    ),
    ("max_images=-1", lambda: SaliencyMonitor(PROBE, max_images=-1), "max_images=-1 is not allowed"),
    ("activation max_images=0", lambda: ActivationMonitor(PROBE, max_images=0), "max_images=0 is not allowed"),
    ("deconv top_k=0", lambda: DeconvMonitor(PROBE, top_k=0), "top_k=0 is not allowed"),
    (
        "layers=123",
        lambda: GradCAMMonitor(PROBE, layers=123),
        "layers=123 is not allowed; layers must be 'auto', 'all', a layer name",
    ),
    ("layers=[]", lambda: ActivationMonitor(PROBE, layers=[]), "layers=[] is not allowed"),
    ("FilterMonitor layers=[1, 2]", lambda: FilterMonitor(layers=[1, 2]), "layers=[1, 2] is not allowed"),
    ("every_n_epochs=0", lambda: GradCAMMonitor(PROBE, every_n_epochs=0), "every_n_epochs=0 is not allowed"),
    ("every_n_steps=1.5", lambda: GradCAMMonitor(PROBE, every_n_steps=1.5), "every_n_steps=1.5 is not allowed"),
    ("never fires", lambda: GradCAMMonitor(PROBE, every_n_epochs=None), "would never fire"),
    ("probe_size=0", lambda: GradCAMMonitor(probe_size=0), "probe_size=0 is not allowed"),
    ("max_image_side=8", lambda: GradCAMMonitor(PROBE, max_image_side=8), "max_image_side=8 is not allowed"),
    ("name=''", lambda: GradCAMMonitor(PROBE, name=""), "name='' is not allowed"),
    (
        "output_transform not callable",
        lambda: GradCAMMonitor(PROBE, output_transform="logits"),
        "output_transform='logits' is not allowed",
    ),
    (
        "target misspelt",
        lambda: GradCAMMonitor(PROBE, target="labels"),
        "target='labels' is not allowed; target must be one of 'pred', 'label', 'both'",
    ),
    ("shortcut threshold > 1", lambda: ShortcutMonitor(PROBE, threshold=2.0), "threshold=2.0 is not allowed"),
    ("shortcut patience=0", lambda: ShortcutMonitor(PROBE, patience=0), "patience=0 is not allowed"),
    ("shortcut mask_margin < 0", lambda: ShortcutMonitor(PROBE, mask_margin=-1), "mask_margin=-1 is not allowed"),
    ("shortcut min_accuracy > 1", lambda: ShortcutMonitor(PROBE, min_accuracy=1.5), "min_accuracy=1.5 is not allowed"),
    (
        "shortcut max_panel_images=0",
        lambda: ShortcutMonitor(PROBE, max_images=0),
        "max_images=0 is not allowed",
    ),
    (
        "shortcut on_shortcut misspelt",
        lambda: ShortcutMonitor(PROBE, on_shortcut="halt"),
        "on_shortcut='halt' is not allowed",
    ),
    (
        "shortcut threshold=0",
        lambda: ShortcutMonitor(PROBE, threshold=0.0),
        "threshold=0.0 is not allowed; threshold must be a finite number in (0.0, 1.0]",
    ),
    (
        "shortcut saliency_methods=None",
        lambda: ShortcutMonitor(PROBE, saliency_methods=None),
        "saliency_methods=None is not allowed",
    ),
    (
        "shortcut two layers",
        lambda: ShortcutMonitor(PROBE, layers=["model.4", "model.8"]),
        "layers=['model.4', 'model.8'] is not allowed; layers must be one layer",
    ),
    (
        "deconv layer='all'",
        lambda: DeconvMonitor(PROBE, layers="all"),
        "layers='all' is not allowed; layers must be one layer",
    ),
    (
        "saliency methods=None",
        lambda: SaliencyMonitor(PROBE, methods=None),
        "methods=None is not allowed; methods must be a non-empty list of distinct names",
    ),
    ("saliency methods=[]", lambda: SaliencyMonitor(PROBE, methods=[]), "methods=[] is not allowed"),
    (
        "saliency a method twice",
        lambda: SaliencyMonitor(PROBE, methods=("vanilla", "vanilla")),
        "methods=('vanilla', 'vanilla') is not allowed",
    ),
    (
        "cmap=None",
        lambda: GradCAMMonitor(PROBE, cmap=None),
        "cmap=None is not allowed; cmap must be a matplotlib colormap name",
    ),
    ("cmap unknown", lambda: SaliencyMonitor(PROBE, cmap="nope"), "cmap='nope' is not allowed"),
    (
        "occlusion NaN baseline",
        lambda: OcclusionMonitor(PROBE, window=4, baseline=float("nan")),
        "baseline=nan is not allowed; a baseline must be finite",
    ),
    ("FeatureVis a channel twice", lambda: FeatureVisMonitor(PROBE, channels=(0, 0)), "channels=(0, 0) is not allowed"),
    (
        "GradCAM unknown CAM method",
        lambda: GradCAMMonitor(PROBE, methods=("gradcam", "gradcampp")),
        "methods=['gradcam', 'gradcampp'] is not allowed",
    ),
]


@pytest.mark.parametrize("case, build, words", CONSTRUCTOR_CASES, ids=[c[0] for c in CONSTRUCTOR_CASES])
def test_bad_options_fail_in_the_constructor_naming_option_and_value(case, build, words):
    with pytest.raises(ValueError) as info:
        build()
    message = str(info.value)
    assert words in message, message
    assert message.split(":")[0].endswith("Monitor"), message  # the monitor is named


def test_the_probe_given_to_filter_monitor_is_named_short():
    with pytest.raises(TypeError) as info:
        FilterMonitor(PROBE)
    assert len(str(info.value)) < 300 and "takes no probe" in str(info.value)


def test_numpy_numbers_are_numbers():
    import numpy as np

    monitor = GradCAMMonitor(PROBE, every_n_epochs=np.int64(2), alpha=np.float32(0.4), fixed_scale=np.bool_(True))
    assert monitor.every_n_epochs == 2
    OcclusionMonitor(PROBE, window=np.int64(4))


def test_expected_gradients_layer_is_checked_against_the_real_model(tmp_path):
    options = {"expected_gradients": {"layer": "model.4", "samples": 2}}
    good = SaliencyMonitor(PROBE, ("expected_gradients",), method_options=options)  # not judged on a stand-in
    bad = SaliencyMonitor(PROBE, ("expected_gradients",), method_options={"expected_gradients": {"layer": "model.44"}})
    train, val = loaders(n=32)
    tr = trainer(tmp_path / "good", [good], max_epochs=1)
    tr.fit(LitClassifier(), train, val)
    assert (good.fire_count, good.failure_count) == (1, 0)
    tr = trainer(tmp_path / "bad", [bad], max_epochs=1)
    with pytest.raises(ValueError, match=r"unknown layer 'model\.44'; did you mean 'model\.4'"):
        tr.fit(LitClassifier(), train, val)
    assert tr.global_step == 0


def test_an_output_transform_that_raises_is_named_at_setup(tmp_path):
    def broken(out):
        raise RuntimeError("no such head")

    train, val = loaders(n=32)
    tr = trainer(tmp_path, [GradCAMMonitor(PROBE, output_transform=broken)], max_epochs=1)
    with pytest.raises(ValueError, match="GradCAMMonitor: output_transform raised RuntimeError: no such head"):
        tr.fit(LitClassifier(), train, val)


def test_building_the_probe_leaves_the_training_rng_alone(tmp_path):
    """A lazy probe drawn from a dataset whose items use the global RNGs (random augmentation) must not shift the
    training's random streams: weights equal those of the run without the monitor."""
    import random

    import numpy as np
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, Dataset

    class Augmenting(Dataset):
        def __init__(self):
            self.base = random_data(32)

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            x, y = self.base[i]
            shift = torch.rand(()) + random.random() + float(np.random.rand())
            return x + 0.01 * shift, y

    def run(callbacks, root):
        pl.seed_everything(0, verbose=False)
        module = LitClassifier()
        loader = DataLoader(Augmenting(), batch_size=8, shuffle=True)
        trainer(root, callbacks, max_epochs=1, limit_val_batches=0).fit(module, loader)
        return module.state_dict()

    plain = run([], tmp_path / "plain")
    watched = run([GradCAMMonitor(None, probe_size=4, layers="last")], tmp_path / "watched")
    assert all(torch.equal(plain[k], watched[k]) for k in plain)


def test_tensor_options_wait_for_the_probe_then_fail_at_fit_start(tmp_path):
    """Without a probe the baseline's shape is unknown in the constructor: it fails at fit start instead."""
    monitor = SaliencyMonitor(
        None,
        ("integrated_gradients",),
        method_options={"integrated_gradients": {"baseline": torch.zeros(3, 5, 5)}},
        probe_size=4,
    )
    train, val = loaders(n=32)
    module = LitClassifier()
    tr = trainer(tmp_path, [monitor], max_epochs=1)
    with pytest.raises(ValueError, match="method_options\\['integrated_gradients'\\] rejected: baseline"):
        tr.fit(module, train, val)
    assert tr.global_step == 0  # before the first training step


def test_option_checks_leave_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    SaliencyMonitor(PROBE, ("smoothgrad",), method_options={"smoothgrad": {"samples": 2}})
    OcclusionMonitor(PROBE, window=4)
    assert torch.equal(torch.rand(3), expected)


def test_top_k_above_the_channel_count_fails_at_fit_start(tmp_path):
    train, val = loaders(n=32)
    tr = trainer(tmp_path, [DeconvMonitor(PROBE, layers="model.0", top_k=9)], max_epochs=1)
    with pytest.raises(ValueError, match=r"top_k=9 but layer 'model\.0' has only 8 channels"):
        tr.fit(LitClassifier(), train, val)
    assert tr.global_step == 0


def test_probe_size_above_the_data_and_a_schedule_beyond_the_run_are_said(tmp_path):
    train, val = loaders(n=32, batch_size=16)  # 16 validation images, 2 steps per epoch
    monitors = [
        GradCAMMonitor(probe_size=1000, layers="last"),
        SaliencyMonitor(PROBE, every_n_epochs=None, every_n_steps=50),
        ActivationMonitor(PROBE, every_n_epochs=5),
    ]
    tr = trainer(tmp_path, monitors, max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.fit(LitClassifier(), train, val)
    said = "\n".join(str(w.message) for w in caught)
    assert "probe_size=1000 but the val dataset has only 16 images, so the probe set holds all 16" in said
    assert (
        "SaliencyMonitor: every_n_steps=50 but this run has only 4 optimizer steps, so the monitor never fires" in said
    )
    assert "ActivationMonitor: every_n_epochs=5 but this run has only 2 epochs" in said
    assert len(monitors[0].probe) == 16


def test_two_monitors_that_would_write_one_tag_fail_at_setup_naming_both(tmp_path):
    train, val = loaders(n=32)
    pred, label = GradCAMMonitor(PROBE, layers="last"), GradCAMMonitor(PROBE, layers="last", target="label")
    tr = trainer(tmp_path, [pred, label], max_epochs=1)
    with pytest.raises(ValueError) as info:
        tr.fit(LitClassifier(), train, val)
    message = str(info.value)
    assert "two probelens monitors on this Trainer are named 'GradCAMMonitor'" in message
    assert "'target': 'pred'" in message and "'target': 'label'" in message, message  # both are described
    assert "give each its own name=" in message
    assert tr.global_step == 0


def test_a_given_name_enters_every_tag_and_two_of_a_kind_coexist(tmp_path):
    train, val = loaders(n=32)
    monitors = [
        GradCAMMonitor(PROBE, layers="last", name="gradcam_pred"),
        GradCAMMonitor(PROBE, layers="last", target="label", name="gradcam_label"),
        SaliencyMonitor(PROBE, methods="vanilla", name="small_probe"),
        SaliencyMonitor(make_probe(4), methods="vanilla", name="large_probe"),
        ShortcutMonitor(PROBE, name="bg"),
        GradCAMMonitor(PROBE, layers="last"),  # the default name keeps the default tags
    ]
    tr = trainer(tmp_path, monitors, max_epochs=1)
    tr.fit(LitClassifier(), train, val)
    acc = read_events(tr.logger.log_dir)
    images, scalars = set(acc.Tags()["images"]), set(acc.Tags()["scalars"])
    assert {
        "probelens/gradcam_pred/gradcam/model.8",
        "probelens/gradcam_label/gradcam/model.8",
        "probelens/small_probe/saliency/vanilla",
        "probelens/large_probe/saliency/vanilla",
        "probelens/gradcam/model.8",
        "probelens/gradcam_pred/gradcam_filmstrip/model.8",
    } <= images, images
    assert {
        "probelens/cost_ms/gradcam_pred",
        "probelens/cost_ms/GradCAMMonitor",
        "shortcut/bg/probe_accuracy",
    } <= scalars
    for tag in {t for t in images | scalars if t.startswith(("probelens/", "shortcut/"))}:
        steps = [e.step for e in (acc.Images(tag) if tag in images else acc.Scalars(tag))]
        assert len(steps) == len(set(steps)), tag


def test_a_subclass_cannot_replace_the_firing_path():
    with pytest.raises(TypeError, match="overrides \\['_fire'\\], which belong to the one firing path"):

        class Broken(ProbeMonitor):
            def _fire(self, trainer, pl_module):  # the signature mismatch that crashed ShortcutMonitor
                pass


# ------------------------------------------------------------------ outputs that are not [N, K]


class DictHead(LitClassifier):
    def forward(self, x):
        return {"scores": self.model(x), "aux": x.mean()}

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0])["scores"], batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0])["scores"], batch[1]))


def test_an_output_without_class_scores_is_refused_at_setup_showing_output_transform(tmp_path):
    train, val = loaders(n=32)
    tr = trainer(tmp_path, [GradCAMMonitor(PROBE, layers="last")], max_epochs=1)
    with pytest.raises(ValueError) as info:
        tr.fit(DictHead(), train, val)
    message = str(info.value)
    assert "keys ['aux', 'scores'], no 'logits'" in message and "output_transform=lambda out:" in message, message
    assert tr.global_step == 0


def test_output_transform_on_every_monitor_that_runs_the_model(tmp_path):
    train, val = loaders(n=32)
    pick = lambda out: out["scores"]  # noqa: E731
    masked = ProbeSet(PROBE.images, PROBE.targets, masks=torch.ones(len(PROBE), 1, 16, 16, dtype=torch.bool).tril())
    monitors = [
        GradCAMMonitor(PROBE, layers="last", output_transform=pick),
        SaliencyMonitor(
            PROBE,
            ("vanilla", "smoothgrad", "integrated_gradients"),
            output_transform=pick,
            method_options={"smoothgrad": {"samples": 2}, "integrated_gradients": {"steps": 2}},
        ),
        OcclusionMonitor(PROBE, window=8, every_n_epochs=1, output_transform=pick),
        FeatureVisMonitor(PROBE, layers=None, steps=2, every_n_epochs=1, output_transform=pick),
        ShortcutMonitor(masked, output_transform=pick),
        ActivationMonitor(PROBE, output_transform=pick),
        DeconvMonitor(PROBE, top_k=2, every_n_epochs=1, output_transform=pick),
    ]
    tr = trainer(tmp_path, monitors, max_epochs=1)
    tr.fit(DictHead(), train, val)
    assert [(m.fire_count, m.failure_count) for m in monitors] == [(1, 0)] * len(monitors)


class SingleLogit(nn.Module):
    """A binary head with one logit: ``[N]`` (squeeze=True) or ``[N, 1]``."""

    def __init__(self, squeeze: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1))
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1))
        self.squeeze = squeeze

    def forward(self, x):
        z = self.head(self.features(x))
        return z.squeeze(1) if self.squeeze else z


@pytest.mark.parametrize("squeeze", [True, False], ids=["[N]", "[N,1]"])
def test_a_single_logit_head_is_read_as_two_classes(squeeze):
    """Class 1's score is z/2 and class 0's -z/2 (softmax = sigmoid): Grad-CAM is then half of Captum's LayerGradCam
    of +z for class 1 and of -z for class 0 (the sign convention of pytorch-grad-cam's BinaryClassifierOutputTarget)."""
    model = SingleLogit(squeeze).eval()
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 0, 1])
    ours = grad_cam(model, x, targets, layers=["features.2"])["features.2"]
    for sign, cls in ((-1.0, 0), (1.0, 1)):
        signed = nn.Sequential(model, nn.Unflatten(0, (-1, 1)) if squeeze else nn.Identity())

        def scaled(inp, sign=sign, signed=signed):
            return sign * signed(inp)

        ref = LayerGradCam(scaled, model.features[2]).attribute(x, target=0, relu_attributions=True)
        ref = LayerAttribution.interpolate(ref, (12, 12), interpolate_mode="bilinear")
        rows = targets == cls
        torch.testing.assert_close(2 * ours[rows], ref[rows], rtol=1e-4, atol=1e-6)
    probs = torch.sigmoid(model(x).reshape(-1))
    from probelens.methods import forward_backward

    result = forward_backward(model, x, None, {}, gradients=False, input_gradient=False)
    torch.testing.assert_close(result.probabilities[:, 1], probs)
    assert torch.equal(result.predictions, (probs > 0.5).long())


# ------------------------------------------------------------------ memory


class BatchRecorder(nn.Module):
    """A CNN whose forward records each batch size it sees."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2)
        )
        self.seen: list[int] = []

    def forward(self, x):
        self.seen.append(x.shape[0])
        return self.net(x)


@pytest.mark.parametrize("n", [8, 64, 256])
def test_the_shared_pass_runs_in_chunks_within_the_memory_budget(monkeypatch, n):
    """The autograd graph of one chunk stays under the budget however large the probe grows; the result is the same
    as one pass over the whole probe."""
    from probelens.methods import batching

    budget = 4 * 2**20
    monkeypatch.setattr(batching, "CPU_DEFAULT_BUDGET_BYTES", budget)
    model = BatchRecorder()
    probe = ProbeSet(torch.randn(n, 3, 32, 32), torch.zeros(n, dtype=torch.long))
    session = SharedPass()
    layers = {"net.0": model.net[0]}
    session.register(probe, layers, gradients=True, input_gradient=True, target_sets={"pred"})
    per_image, _ = batching.activation_bytes(model, probe.images)  # measured once (one image), then cached
    model.seen.clear()
    from probelens.core.session import PassNeeds

    result = session.get(model, probe, 0, PassNeeds(layers, True, True, {"pred"}))
    assert max(model.seen) * per_image * 2 <= budget  # every chunk's graph within the budget
    assert sum(model.seen) == n
    reference = grad_cam(model, probe.images, result.targets["pred"], layers=["net.0"])["net.0"]
    from probelens.methods.grad_cam import grad_cam_map

    chunked = grad_cam_map(result.activations["net.0"], result.gradients["pred"]["net.0"], (32, 32))
    torch.testing.assert_close(chunked, reference, rtol=1e-5, atol=1e-7)
    assert result.input_gradients["pred"].shape == probe.images.shape


def test_no_pass_tensor_is_kept_between_firings_and_a_large_pass_is_warned_about(tmp_path, monkeypatch):
    from probelens.core import session as _shared

    monkeypatch.setattr(_shared, "PASS_WARN_BYTES", 1000)
    train, val = loaders(n=32)
    module = LitClassifier()
    tr = trainer(tmp_path, [GradCAMMonitor(PROBE), SaliencyMonitor(PROBE)], max_epochs=2)
    with pytest.warns(UserWarning, match="one explanation pass over the 6-image probe set takes about"):
        tr.fit(module, train, val)
    assert shared_pass_of(tr, module)._cache == {}  # released after the run


def test_monitors_reading_the_output_differently_never_share_a_pass(tmp_path):
    train, val = loaders(n=32)
    module = LitClassifier()
    flipped = GradCAMMonitor(PROBE, layers="last", output_transform=lambda out: -out, name="flipped")
    plain = GradCAMMonitor(PROBE, layers="last")
    tr = trainer(tmp_path, [plain, flipped], max_epochs=1)
    tr.fit(module, train, val)
    a = plain._pass(module, 99)
    b = flipped._pass(module, 99)
    torch.testing.assert_close(b.logits, -a.logits)


# ------------------------------------------------------------------ smaller findings


def test_a_model_without_convolutions_gets_a_hint_that_works(tmp_path):
    class MLPModule(LitClassifier):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8), nn.ReLU(), nn.Linear(8, 2))

    train, val = loaders(n=32)
    tr = trainer(tmp_path, [GradCAMMonitor(PROBE, layers=["model.2"])], max_epochs=1)
    with pytest.raises(ValueError) as info:
        tr.fit(MLPModule(), train, val)
    message = str(info.value)
    assert "e.g. )" not in message and "has no 2-D convolution" in message and "SaliencyMonitor" in message


def test_a_3d_probe_names_the_1d_signal_case():
    with pytest.raises(ValueError, match="a batch of 1-D signals \\[N,C,L\\] \\(Conv1d models\\) is not supported"):
        ProbeSet(torch.randn(4, 3, 100), torch.zeros(4, dtype=torch.long))


def test_a_summary_writer_subclass_that_overrides_add_image_is_honoured(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger
    from torch.utils.tensorboard import SummaryWriter

    class Counting(SummaryWriter):
        calls: ClassVar[list[str]] = []

        def add_image(self, tag, *args, **kwargs):
            Counting.calls.append(tag)
            super().add_image(tag, *args, **kwargs)

    logger = TensorBoardLogger(str(tmp_path), name="tb")
    logger._experiment = Counting(logger.log_dir)
    train, val = loaders(n=32)
    tr = trainer(tmp_path, [GradCAMMonitor(PROBE, layers="last", filmstrip=False)], logger=logger, max_epochs=1)
    tr.fit(LitClassifier(), train, val)
    assert Counting.calls == ["probelens/gradcam/model.8"]


_PEAK_SCRIPT = """
import resource, sys, torch
from torch import nn
from probelens import ProbeSet
from probelens.core.session import SharedPass, PassNeeds
torch.set_num_threads(1)
n = int(sys.argv[1])
torch.manual_seed(0)
# wide early convs (about 4 MiB of saved activations per 64 px image), a small captured layer
model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                      nn.MaxPool2d(8), nn.Conv2d(64, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
probe = ProbeSet(torch.randn(n, 3, 64, 64), torch.zeros(n, dtype=torch.long))
layers = {"5": model[5]}
session = SharedPass()
session.register(probe, layers, gradients=True, input_gradient=True, target_sets={"pred"})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
session.get(model, probe, 0, PassNeeds(layers, True, True, {"pred"}))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_peak_memory_of_one_pass_stays_bounded_as_the_probe_grows():
    """Peak RSS of one shared pass over 32 and over 512 images: without chunking the autograd graph alone would grow
    by ~1.9 GB (480 more images x ~4 MiB of saved activations); chunked to the 256 MiB budget, the growth is only
    what the pass keeps (input gradients, the small captured layer)."""
    import subprocess
    import sys

    def peak_kib(n: int) -> int:
        out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(n)], capture_output=True, text=True, check=True)
        return int(out.stdout.strip().splitlines()[-1])

    small, large = peak_kib(32), peak_kib(512)
    graph_growth_kib = 480 * 4 * 2**10  # ~4 MiB per image of saved activations, had the whole probe gone at once
    kept_growth_kib = 480 * 3 * 64 * 64 * 4 * 2 // 2**10  # images + input gradients of the extra images
    assert large - small < kept_growth_kib + graph_growth_kib // 4, (small, large)


def test_a_second_validate_at_the_same_step_says_it_writes_nothing(tmp_path):
    train, val = loaders(n=32)
    module = LitClassifier()
    tr = trainer(tmp_path, [GradCAMMonitor(PROBE, layers="last")], max_epochs=1)
    tr.fit(module, train, val)
    tr.validate(module, val, verbose=False)
    step = tr.global_step  # after fit, validate logs at the last training step
    with pytest.warns(UserWarning, match=f"validate pictures for step {step} were already written in this run"):
        tr.validate(module, val, verbose=False)
    acc = read_events(tr.logger.log_dir)
    assert [e.step for e in acc.Images("validate/probelens/gradcam/model.8")] == [step]


class _Ambiguous(nn.Module):
    """A block whose output is [N, 16, 16, 16] made by a transpose of a map (its axes: batch, W, H, channels): shaped
    like a map, but not one probelens can read without guessing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)

    def forward(self, x):
        return self.conv(x).transpose(1, 3).contiguous() * 1.0


class _AmbiguousNet(LitClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Sequential(_Ambiguous(), nn.Flatten(), nn.Linear(16 * 16 * 16, 2))


def test_an_ambiguous_layout_is_refused_at_fit_start_and_reshape_resolves_it(tmp_path):
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, [GradCAMMonitor(PROBE, layers=["model.0"])], max_epochs=1)
    match = r"'model.0' .* shaped like a map \(NCHW 16x16 or NHWC 16x16\).*\(batch, W 16, H 16, channels\).*reshape="
    with pytest.raises(ValueError, match=match):
        tr.fit(_AmbiguousNet(), train, val)
    assert tr.global_step == 0
    monitor = GradCAMMonitor(PROBE, layers=["model.0"], reshape={"model.0": lambda t: t.permute(0, 3, 2, 1)})
    tr = trainer(tmp_path / "ok", [monitor], max_epochs=1)
    tr.fit(_AmbiguousNet(), train, val)
    assert monitor.failure_count == 0 and monitor.fire_count == 1


def test_a_reshape_that_does_not_make_a_map_fails_at_fit_start(tmp_path):
    train, val = loaders(n=32, batch_size=16)
    bad = GradCAMMonitor(PROBE, layers=["model.0"], reshape={"model.0": lambda t: t.flatten(1)})
    tr = trainer(tmp_path, [bad], max_epochs=1)
    with pytest.raises(ValueError, match=r"reshape= for layer 'model.0' must return \[N, C, h, w\]"):
        tr.fit(_AmbiguousNet(), train, val)
    other = GradCAMMonitor(PROBE, layers=["model.0"], reshape={"model.9": lambda t: t})
    tr = trainer(tmp_path / "b", [other], max_epochs=1)
    with pytest.raises(ValueError, match=r"reshape= names layers \['model.9'\] that are not among the selected"):
        tr.fit(_AmbiguousNet(), train, val)
