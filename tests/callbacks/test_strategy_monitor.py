"""StrategyMonitor: a real Trainer with a TensorBoardLogger, its event files read back, and its clusters recomputed
through the functional API (probelens.methods.grad_cam, not the shared pass) from the trained model."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lit import LitClassifier, NaNAfter, decode, probe_cells, read_events, trainer
from probelens import ProbeSet, StrategyMonitor
from probelens.data import MEAN, STD, generate_snow_desert
from probelens.methods import grad_cam
from probelens.metrics import discover_strategies

NAMES = ("snow", "arabian")


def data(n: int, p: float, seed: int):
    s = generate_snow_desert(n, size=32, p=p, purity=1.0, seed=seed)
    m, sd = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (s.images - m) / sd, s.labels


def fit(tmp_path, monitors, train, val):
    """Two epochs of the tests' classifier on ``train``/``val`` (image, label) tensors; the trainer and the model."""
    tr = trainer(tmp_path, monitors, max_epochs=2)
    model = LitClassifier(lr=0.02)
    tr.fit(
        model,
        DataLoader(TensorDataset(*train), batch_size=32, shuffle=True),
        DataLoader(TensorDataset(*val), batch_size=80),
    )
    return tr, model


@pytest.mark.integration
def test_logs_clusters_per_class_pictures_and_says_it_is_no_verdict(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="lightning_utilities")
    x, y = data(192, 0.95, seed=1)
    vx, vy = data(48, 0.5, seed=2)
    probe = ProbeSet(vx, vy, mean=MEAN, std=STD, class_names=NAMES)
    monitor = StrategyMonitor(probe, seed=3)
    spare = StrategyMonitor(probe, seed=3, source="features", name="spare")  # SPARE-style, beside it
    tr, model = fit(tmp_path, [monitor, spare], (x, y), (vx, vy))
    assert monitor.fire_count == 2 and monitor.failure_count == 0
    said = [r.getMessage() for r in caplog.records if "not a verdict" in r.getMessage()]
    assert len(said) == 2 and "docs/discovery.md" in said[0]  # once per monitor

    events = read_events(tr.logger.log_dir)
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    steps = [s for s, _ in scalars["discovery/snow/clusters"]]
    assert len(steps) == 2 and steps == sorted(steps)

    # the last firing, recomputed from the trained model through the functional Grad-CAM at the same layer
    net = model.eval()
    with torch.no_grad():
        preds = net(vx).argmax(1)
    layer = next(iter(monitor._layer))
    cam = grad_cam(net, vx, preds, layers=[layer])[layer]
    expected = discover_strategies(cam, vy, seed=3)
    for c, name in enumerate(NAMES):
        found = expected.classes[c]
        last = {key: dict(scalars[f"discovery/{name}/{key}"])[steps[-1]] for key in ("clusters", "largest_share")}
        assert last["clusters"] == found.num_clusters
        assert last["largest_share"] == pytest.approx(found.largest_share)
        gap = dict(scalars[f"discovery/{name}/eigengap"])[steps[-1]]
        assert gap == pytest.approx(found.eigengap, abs=1e-5) and not math.isnan(gap)
        assert dict(scalars[f"discovery/{name}/two_strategies"])[steps[-1]] == float(found.two_strategies)
        assert monitor.last_report is not None
        assert monitor.last_report.classes[c].sizes == found.sizes

        # one picture per class and step: a row per cluster (mean map, prototype), each tile at least 64 px in a
        # captioned cell at least 128 px wide
        pictures = events.Images(f"probelens/discovery/{name}")
        assert [e.step for e in pictures] == steps
        pixels = decode(pictures[-1])
        assert pixels.shape[0] >= found.num_clusters * 64 and pixels.shape[1] >= 2 * 128
        assert pixels.std() > 10  # not a blank canvas
    assert f"probelens/cost_ms/{monitor.name}" in scalars

    # SPARE-style: the deepest stage's activations averaged over space, recomputed by slicing the model there
    index = int(layer.split(".")[-1])
    with torch.no_grad():
        features = net.model[: index + 1](vx).mean((2, 3))
    expected_features = discover_strategies(features, vy, seed=3)
    for c, name in enumerate(NAMES):
        found = expected_features.classes[c]
        assert spare.last_report is not None and spare.last_report.classes[c].sizes == found.sizes
        assert dict(scalars[f"discovery/spare/{name}/clusters"])[steps[-1]] == found.num_clusters
        assert [e.step for e in events.Images(f"probelens/spare/discovery/{name}")] == steps


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grid": 1}, "grid"),
        ({"max_clusters": 1}, "max_clusters"),
        ({"min_share": 0.0}, r"min_share=0.0 .*\(0, 0.5\]"),
        ({"min_share": 0.8}, "min_share"),
        ({"min_eigengap": 2.0}, "min_eigengap"),
        ({"min_images": 2}, "min_images"),
        ({"neighbours": 0}, "neighbours"),
        ({"source": "spray"}, r"source='spray'.*'gradcam', 'features'"),
        ({"discovery_size": 100}, r"discovery_size=100 .*forward-only.*source='features'"),
        ({"discovery_size": 5, "source": "features"}, r"discovery_size"),
        ({"discovery_set": ProbeSet(torch.randn(12, 3, 8, 8), torch.arange(12) % 2)}, r"discovery_set clusters"),
        (
            {"discovery_size": 64, "discovery_set": ProbeSet(torch.randn(12, 3, 8, 8), torch.arange(12) % 2)},
            r"discovery_size=64 and a discovery_set were both given",
        ),
    ],
)
def test_bad_options_fail_at_construction_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StrategyMonitor(None, **kwargs)


def test_a_discovery_set_that_is_not_a_probe_set_is_refused():
    with pytest.raises(TypeError, match=r"discovery_set is a Tensor; pass a ProbeSet"):
        StrategyMonitor(None, source="features", discovery_set=torch.randn(12, 3, 8, 8))


def test_the_docstring_claims_no_verdict():
    assert "claims no verdict" in (StrategyMonitor.__doc__ or "")


@pytest.mark.integration
def test_a_discovery_set_from_the_validation_data_is_clustered_forward_only(tmp_path, caplog):
    """discovery_size=: the pooled features of that many validation images (drawn when training starts, keyed by
    their dataset positions) are clustered at each firing, not the probe's. Recomputed from the trained model by
    slicing it at the layer; the pictures show the prototypes (discovery images: no probe cell recorded)."""
    caplog.set_level(logging.INFO, logger="lightning_utilities")
    x, y = data(192, 0.95, seed=1)
    vx, vy = data(160, 0.95, seed=2)
    # a class name that is not one tag segment is written as one ("snow leopard/alpine" -> snow_leopard_alpine)
    probe = ProbeSet(vx[:24], vy[:24], mean=MEAN, std=STD, class_names=("snow leopard/alpine", "arabian"))
    monitor = StrategyMonitor(probe, source="features", discovery_size=96, seed=3)
    tr, model = fit(tmp_path, [monitor], (x, y), (vx, vy))
    assert monitor.fire_count == 2 and monitor.failure_count == 0
    found_set = monitor.discovery_set
    assert found_set is not None and len(found_set.targets) == 96 and found_set.indices is not None
    index = found_set.indices
    assert torch.equal(found_set.images, vx[index]) and torch.equal(found_set.targets, vy[index])
    assert [int((found_set.targets == c).sum()) for c in (0, 1)] == [48, 48]  # class-balanced
    assert any("discovery set of 96 images from the val dataset" in r.getMessage() for r in caplog.records)

    events = read_events(tr.logger.log_dir)
    scalars = {tag: dict((e.step, e.value) for e in events.Scalars(tag)) for tag in events.Tags()["scalars"]}
    assert not any(tag.startswith("discovery/snow leopard") for tag in scalars)
    last = max(scalars["discovery/snow_leopard_alpine/clusters"])
    layer = next(iter(monitor._layer))
    net = model.eval()
    with torch.no_grad():
        features = net.model[: int(layer.split(".")[-1]) + 1](vx[index]).mean((2, 3))
    expected = discover_strategies(features, vy[index], seed=3)
    for c, name in enumerate(("snow_leopard_alpine", "arabian")):
        found = expected.classes[c]
        assert len(found.indices) == 48  # the discovery set's class, not the probe's 12
        assert monitor.last_report is not None and monitor.last_report.classes[c].sizes == found.sizes
        assert scalars[f"discovery/{name}/clusters"][last] == found.num_clusters
        assert scalars[f"discovery/{name}/largest_share"][last] == pytest.approx(found.largest_share)
        pictures = events.Images(f"probelens/discovery/{name}")
        assert len(pictures) == 2
        pixels = decode(pictures[-1])
        assert pixels.shape[0] >= found.num_clusters * 64 and pixels.std() > 10
        assert probe_cells(pictures[-1]) == []  # the prototypes are not probe images


class _Stream(IterableDataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


@pytest.mark.integration
def test_a_discovery_set_without_map_style_data_is_refused_before_training(tmp_path):
    x, y = data(64, 0.5, seed=1)
    probe = ProbeSet(x[:16], y[:16], mean=MEAN, std=STD, class_names=NAMES)
    monitor = StrategyMonitor(probe, source="features", discovery_size=32)
    tr = trainer(tmp_path, [monitor], max_epochs=1)
    model = LitClassifier(lr=0.02)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"discovery_size=32 .*no map-style validation or training dataset"):
        tr.fit(model, DataLoader(_Stream(x, y), batch_size=16), DataLoader(_Stream(x, y), batch_size=16))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # not one training step


class _SizedStream(_Stream):
    """An iterable dataset with a length: it has __getitem__ (torch's base) but cannot be sampled by index."""

    def __len__(self):
        return len(self.y)


@pytest.mark.integration
def test_a_discovery_set_is_drawn_for_validate_alone_and_from_train_when_val_cannot_be_sampled(tmp_path, caplog):
    """trainer.validate without a fit draws the set at its first firing; an iterable validation set with __len__
    is skipped (not sampled by index: a crash before) and the set is drawn from the training data, said once."""
    caplog.set_level(logging.INFO, logger="lightning_utilities")
    x, y = data(96, 0.5, seed=1)
    probe = ProbeSet(x[:16], y[:16], mean=MEAN, std=STD, class_names=NAMES)
    monitor = StrategyMonitor(probe, source="features", discovery_size=48, seed=3)
    model = LitClassifier(lr=0.02)
    trainer(tmp_path / "validate", [monitor], max_epochs=1).validate(model, DataLoader(TensorDataset(x, y), 32))
    assert monitor.failure_count == 0 and monitor.discovery_set is not None
    assert len(monitor.discovery_set.targets) == 48 and monitor.last_report is not None
    assert sum(len(found.indices) for found in monitor.last_report.classes.values()) == 48  # not the probe's 16

    again = StrategyMonitor(probe, source="features", discovery_size=48, seed=3)
    with pytest.warns(UserWarning, match="no validation dataset that can be sampled by index.*the train dataset"):
        trainer(tmp_path / "fit", [again], max_epochs=1).fit(
            model, DataLoader(TensorDataset(x, y), batch_size=32), DataLoader(_SizedStream(x, y), batch_size=32)
        )
    assert again.failure_count == 0 and again.discovery_set is not None
    assert torch.equal(again.discovery_set.images, x[again.discovery_set.indices])


def test_a_lens_takes_a_discovery_set_and_says_how_when_given_a_size(tmp_path):
    """A Lens has no loaders: discovery_size is refused at its first step with the fix, discovery_set= works."""
    from probelens.loop import Lens

    x, y = data(64, 0.5, seed=1)
    probe = ProbeSet(x[:16], y[:16], mean=MEAN, std=STD, class_names=NAMES)
    model = LitClassifier(lr=0.02).model
    lens = Lens([StrategyMonitor(probe, source="features", discovery_size=32, every_n_steps=1)], log_dir=tmp_path)
    with pytest.raises(ValueError, match=r"a Lens has no loaders.*discovery_set=ProbeSet.from_dataset"):
        lens.step(model, 1)
    given = ProbeSet(x[16:], y[16:], mean=MEAN, std=STD, class_names=NAMES)
    monitor = StrategyMonitor(probe, source="features", discovery_set=given, every_n_steps=1, seed=3)
    Lens([monitor], log_dir=tmp_path / "given").step(model, 1)
    assert monitor.fire_count == 1 and monitor.failure_count == 0 and monitor.discovery_set is given
    assert monitor.last_report is not None
    assert sum(len(found.indices) for found in monitor.last_report.classes.values()) == 48


@pytest.mark.integration
def test_nan_weights_log_nan_and_draw_no_picture(tmp_path):
    """Weights set to NaN at the second epoch: the probe's maps and the discovery set's features are NaN there.
    Every class's numbers are NaN at that step (not clusters of zeroed values), no picture is drawn, said once."""
    x, y = data(96, 0.5, seed=1)
    vx, vy = data(48, 0.5, seed=2)
    probe = ProbeSet(vx[:24], vy[:24], mean=MEAN, std=STD, class_names=NAMES)
    maps = StrategyMonitor(probe, seed=3)
    features = StrategyMonitor(probe, source="features", discovery_size=32, seed=3, name="discovery")
    with pytest.warns(UserWarning, match="hold NaN or Inf at step") as record:
        tr, _ = fit(tmp_path, [maps, features, NaNAfter(1)], (x, y), (vx, vy))
    assert sum("hold NaN or Inf" in str(w.message) for w in record) == 2  # once per monitor
    events = read_events(tr.logger.log_dir)
    for prefix in ("discovery", "discovery/discovery"):
        for name in NAMES:
            for key in ("clusters", "eigengap", "largest_share", "two_strategies"):
                values = [e.value for e in events.Scalars(f"{prefix}/{name}/{key}")]
                assert len(values) == 2 and math.isnan(values[1]), (prefix, name, key, values)
                assert key == "eigengap" or math.isfinite(values[0])
    for tag in ("probelens/discovery/snow", "probelens/discovery/discovery/snow"):
        assert len(events.Images(tag)) == 1  # the healthy epoch only
    assert maps.failure_count == 0 and features.failure_count == 0
