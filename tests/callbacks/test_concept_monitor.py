"""ConceptMonitor (TCAV over training) on real Trainer runs of the snow/desert generator, event files read back.

Ground truth as in the shortcut tests: accuracy on cue-conflicting images at every validation (below 0.3: the
shortcut is learned). The concept pictures are plain snow and plain desert backgrounds from the generator
(``with_backgrounds=True``), normalised like the model input. The demo CNN at 48 px, width 8 (CPU, CI-sized).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lit import LitClassifier, NaNAfter, loaders, read_events, trainer
from probelens import ConceptMonitor, ProbeSet
from probelens.core.concept import MIN_CONCEPT_PICTURES, RECOMMENDED_CONCEPT_PICTURES
from probelens.data import CLASS_NAMES, MEAN, STD, SnowDesertDataset, generate_snow_desert
from shortcut_truth import ConflictAccuracy

SIZE = 48
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
_M, _S = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)


def leopard_module(width: int = 8):
    spec = importlib.util.spec_from_file_location("snow_vs_desert", EXAMPLES / "snow_vs_desert.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo.LeopardClassifier(width=width)


def backgrounds(count: int = 30, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` plain snow and ``count`` plain desert pictures, normalised like the model input."""
    s = generate_snow_desert(4 * count, size=SIZE, p=0.5, seed=seed, with_backgrounds=True)
    bg = (s.background_images - _M) / _S
    return bg[s.backgrounds == 0][:count], bg[s.backgrounds == 1][:count]


def run(tmp_path, p: float, epochs: int, n: int = 640, purity: float = 0.8, **monitor_kw):
    pl.seed_everything(0)
    train = SnowDesertDataset(n=n, size=SIZE, p=p, seed=0, purity=purity)
    val = SnowDesertDataset(n=128, size=SIZE, p=p, seed=1)
    probe = ProbeSet.from_dataset(val, num_samples=32, seed=0, mean=MEAN, std=STD, class_names=CLASS_NAMES)
    snow, sand = backgrounds()
    monitor = ConceptMonitor(probe, concepts={"snow": snow, "sand": sand}, spurious=("snow", "sand"), **monitor_kw)
    conflict = SnowDesertDataset(n=128, size=SIZE, p=0.0, seed=7)
    truth = ConflictAccuracy(conflict.images, conflict.labels)
    tr = trainer(tmp_path, [monitor, truth], max_epochs=epochs, log_every_n_steps=5)
    tr.fit(leopard_module(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=128))
    events = read_events(tr.logger.log_dir)
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return monitor, truth, scalars, events


@pytest.mark.integration
def test_the_alert_fires_within_two_epochs_of_the_shortcut_and_stops_the_run(tmp_path):
    """p=0.95: the shortcut is learned (conflict accuracy < 0.3) and the alert names concept, class, layer and step
    within two epochs of it; with on_concept="stop" the run ends there; every scalar lands on the validation steps."""
    with pytest.warns(UserWarning, match="Spurious concept suspected"):
        monitor, truth, scalars, events = run(tmp_path, p=0.95, epochs=4, on_concept="stop")
    steps = sorted(truth.by_step)
    assert steps[-1] == monitor.alerts[0][0] and len(steps) < 4  # stopped at the alert's epoch
    learned = [s for s in steps if truth.by_step[s] < 0.3]
    assert learned, truth.by_step  # ground truth: this run does learn the shortcut
    first = steps.index(learned[0])
    assert monitor.alerts, "no alert on a shortcut run"
    step, concept, class_name, layer = monitor.alerts[0]
    assert step in steps[first : first + 2]  # within 2 epochs of the shortcut being learned
    assert concept in ("snow", "sand") and class_name in CLASS_NAMES and layer == "net.0"  # the deepest stage
    text = events.Tensors("concept/alert/text_summary")
    message = text[0].tensor_proto.string_val[0].decode()
    assert text[0].step == step and f"step {step}" in message
    assert f"concept {concept!r}" in message and f"class {class_name!r}" in message and f"layer {layer!r}" in message
    for concept_name in ("snow", "sand"):
        assert [s for s, _ in scalars[f"concept/{concept_name}/cav_accuracy"]] == steps
        for cls in CLASS_NAMES:
            prefix = f"concept/{concept_name}/{cls}"
            for suffix in ("", "/p_value", "/cosine", "/cosine_p_value", "/significant"):
                assert [s for s, _ in scalars[prefix + suffix]] == steps, prefix + suffix
            assert all(0.0 <= v <= 1.0 for _, v in scalars[prefix])
    # the alert's criterion, read back: the background concept of the class it agrees with, aligned and significant
    alerted = f"concept/{concept}/{class_name}"
    assert dict(scalars[alerted + "/significant"])[step] == 1.0
    assert dict(scalars[alerted + "/cosine"])[step] >= monitor.threshold
    assert dict(scalars[alerted + "/cosine_p_value"])[step] < monitor.alpha


@pytest.mark.integration
def test_a_clean_run_never_alerts(tmp_path):
    """p=0.5: the background carries no information; the alert never fires, and the criterion (not only the
    accuracy gate) never holds. The sign-count score alone would have called many steps significant."""
    monitor, truth, scalars, _ = run(tmp_path, p=0.5, epochs=3)
    assert monitor.alerts == []
    assert min(truth.epochs()) > 0.3, truth.by_step  # ground truth: no shortcut was learned
    significant = [v for tag, vals in scalars.items() if tag.endswith("/significant") for _, v in vals]
    assert significant and set(significant) == {0.0}
    cosines = [v for tag, vals in scalars.items() if tag.endswith("/cosine") for _, v in vals]
    assert max(cosines) < monitor.threshold


@pytest.mark.integration
def test_an_object_model_with_an_informative_background_never_alerts(tmp_path):
    """p=0.9 with every spot class-typical (purity 1.0): the background is informative but the model decides
    conflicts by the coat (ground truth: conflict accuracy well above 0.3 at every epoch). It may align a little with
    the background concepts (docs/concepts.md: 0.46 at most), never up to the alert's criterion."""
    monitor, truth, scalars, _ = run(tmp_path, p=0.9, epochs=3, n=1280, purity=1.0)
    conflict = truth.epochs()
    # ground truth: mixed in the first epoch (0.45 of conflicts won), an object model after (0.9 and more)
    assert conflict[0] > 0.3 and min(conflict[1:]) > 0.85, truth.by_step
    assert monitor.alerts == []
    significant = [v for tag, vals in scalars.items() if tag.endswith("/significant") for _, v in vals]
    assert significant and set(significant) == {0.0}
    cosines = [v for tag, vals in scalars.items() if tag.endswith("/cosine") for _, v in vals]
    assert max(cosines) < monitor.threshold, max(cosines)


@pytest.mark.integration
def test_folder_pictures_few_pictures_warning_and_a_built_probe(tmp_path):
    """Concept pictures from folders (resized to the probe's size, normalised with its mean/std), a warning at fit
    start below the recommended count, a probe built from the trainer's data, and tags on a run without a shortcut."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    folders = {}
    for name, tint in (("red", (220, 40, 40)), ("blue", (40, 40, 220))):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(6):
            noise = torch.randint(0, 30, (24, 24, 3), generator=g, dtype=torch.uint8)
            pixels = (torch.tensor(tint, dtype=torch.uint8) * 0.8).to(torch.uint8) + noise
            Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
        (folder / "notes.txt").write_text("not a picture")
        folders[name] = str(folder)
    train, val = loaders(n=64, size=(16, 16))
    monitor = ConceptMonitor(probe_size=8, concepts=folders, spurious=("red",), runs=3)
    tr = trainer(tmp_path, [monitor], max_epochs=1)
    with pytest.warns(UserWarning, match=f"few pictures.*at least {RECOMMENDED_CONCEPT_PICTURES}"):
        tr.fit(LitClassifier(), train, val)
    assert monitor.concepts["red"].shape == (6, 3, 16, 16)  # resized to the probe, six PNGs, the .txt skipped
    # normalised with the probe's mean/std (the loaders' data has none: [0, 1] pixels), red above blue in channel 0
    assert float(monitor.concepts["red"][:, 0].mean()) > 0.6 > float(monitor.concepts["blue"][:, 0].mean())
    assert monitor.failure_count == 0 and monitor.fire_count == 1
    tags = read_events(tr.logger.log_dir).Tags()["scalars"]
    assert {"concept/red/0", "concept/red/1/p_value", "concept/blue/1/cosine"} <= set(tags)


def test_bad_inputs_fail_at_construction_with_the_value_and_the_fix(tmp_path):
    probe = ProbeSet(torch.randn(8, 3, 16, 16), torch.arange(8) % 2)
    good = torch.randn(10, 3, 16, 16)
    cases = [
        ({"concepts": {"snow": torch.randn(10, 3, 8, 8), "sand": good}}, r"shape \(3, 8, 8\).*\(3, 16, 16\).*resize"),
        ({"concepts": {"snow": torch.randn(10, 1, 16, 16), "sand": good}}, r"\(1, 16, 16\).*channels"),
        ({"concepts": {"snow": torch.randn(10, 16, 16), "sand": good}}, r"shape \(10, 16, 16\).*\[M, C, H, W\]"),
        ({"concepts": {"snow": good[: MIN_CONCEPT_PICTURES - 1], "sand": good}}, r"has 3 pictures.*at least 4"),
        ({"concepts": {"snow": (good * 255).to(torch.uint8), "sand": good}}, r"dtype torch.uint8.*normalised"),
        ({"concepts": {"snow": good.clone().fill_(float("nan")), "sand": good}}, "NaN"),
        ({"concepts": {"snow": good}}, r"one concept \('snow'\).*negatives="),
        ({"concepts": {"snow": good, "sand": good}, "spurious": ("snwo",)}, r"\['snwo'\].*\['sand', 'snow'\]"),
        ({"concepts": {"snow": good, "sand": good}, "on_concept": "explode"}, "on_concept='explode'"),
        ({"concepts": {"snow": good, "sand": good}, "threshold": 0.0}, "threshold=0.0"),
        ({"concepts": {"snow": good, "sand": good}, "runs": 1}, "runs=1.*at least 2"),
        ({"concepts": {"snow": good, "sand": good}, "alpha": 2.0}, "alpha=2.0"),
        ({"concepts": {"snow": str(tmp_path / "missing"), "sand": good}}, "is not a folder"),
        ({"concepts": {}}, "non-empty mapping"),
        ({"concepts": {"a/b": good, "sand": good}}, "without '/'"),
        ({"concepts": {"snow cover": good, "snow?cover": good}}, r"concepts\[1\]='snow\?cover'.*'snow_cover'"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            ConceptMonitor(probe, **kwargs)
    with pytest.raises(TypeError, match="is a list"):
        ConceptMonitor(probe, concepts={"snow": [1, 2], "sand": good})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        ConceptMonitor(probe, concepts={"snow": str(tmp_path / "empty"), "sand": good})


def test_pictures_that_do_not_fit_a_built_probe_fail_at_fit_start(tmp_path):
    """Without a probe the pictures are checked when the probe is built from the trainer's data: before any step."""
    train, val = loaders(n=32, size=(16, 16))
    monitor = ConceptMonitor(concepts={"snow": torch.randn(8, 3, 32, 32), "sand": torch.randn(8, 3, 32, 32)})
    tr = trainer(tmp_path, [monitor], max_epochs=1)
    model = LitClassifier()
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings(), pytest.raises(ValueError, match=r"\(3, 32, 32\).*\(3, 16, 16\)"):
        warnings.simplefilter("ignore")
        tr.fit(model, train, val)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no training step ran


@pytest.mark.integration
def test_with_group_labels_the_alert_is_armed_by_each_class_best_group(tmp_path):
    """A probe balanced over (class, background) from a biased validation set (p=0.95): a background model scores
    about chance on it overall, so a probe-accuracy gate never arms the alert (the monitor without groups says so
    and that the step was held back); with the groups the gate is each class's best group, and the alert fires within
    two epochs of the shortcut being learned. Then the weights turn NaN: the step's numbers are NaN (warned once), the
    standing alert is neither cleared nor counted."""
    from probelens.data import BACKGROUND_NAMES

    pl.seed_everything(0)
    train = SnowDesertDataset(n=640, size=SIZE, p=0.95, seed=0)
    val = SnowDesertDataset(n=512, size=SIZE, p=0.95, seed=1)
    grouped = ProbeSet.from_dataset(
        val, num_samples=32, seed=0, mean=MEAN, std=STD, class_names=CLASS_NAMES,
        groups=val.backgrounds, group_names=BACKGROUND_NAMES,
    )  # fmt: skip
    plain = ProbeSet(grouped.images, grouped.targets, class_names=CLASS_NAMES, mean=MEAN, std=STD)
    snow, sand = backgrounds()
    kw = dict(concepts={"snow": snow, "sand": sand}, spurious=("snow", "sand"))
    with_groups = ConceptMonitor(grouped, name="with_groups", **kw)
    without = ConceptMonitor(plain, name="without", **kw)
    conflict = SnowDesertDataset(n=128, size=SIZE, p=0.0, seed=7)
    truth = ConflictAccuracy(conflict.images, conflict.labels)
    tr = trainer(tmp_path, [with_groups, without, truth, NaNAfter(4)], max_epochs=5, log_every_n_steps=5)
    with pytest.warns(UserWarning) as record:
        tr.fit(leopard_module(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=128))
    messages = [str(w.message) for w in record]
    events = read_events(tr.logger.log_dir)
    scalars = {tag: dict((e.step, e.value) for e in events.Scalars(tag)) for tag in events.Tags()["scalars"]}
    steps = sorted(truth.by_step)
    healthy, broken = steps[:-1], steps[-1]
    learned = [s for s in healthy if truth.by_step[s] < 0.3]
    assert learned, truth.by_step  # ground truth: the shortcut is learned
    assert with_groups.alerts, "no alert with the group gate on a shortcut run"
    first_alert = with_groups.alerts[0][0]
    assert first_alert in healthy[healthy.index(learned[0]) : healthy.index(learned[0]) + 2]
    # the group gate, read back: each class's best group is mostly right at the alert, the probe overall is not
    gate = scalars["concept/with_groups/agreeing_group_accuracy"]
    assert gate[first_alert] >= 0.75
    accuracy = scalars["concept/with_groups/probe_accuracy"]
    assert scalars["concept/with_groups/armed"][first_alert] == 1.0
    assert scalars["concept/without/armed"][first_alert] == 0.0
    assert accuracy[first_alert] < 0.75  # the probe-accuracy gate (default 0.75 with two classes) would not arm
    assert without.alerts == []
    unarmed = [m for m in messages if "without: the concept alert is not armed" in m]
    assert len(unarmed) == 1 and "probe accuracy" in unarmed[0] and "Held back" in unarmed[0]
    # NaN weights at the last epoch: NaN numbers, warned once per monitor, the alert kept
    assert sum("with_groups: the model's outputs on the probe hold NaN" in m for m in messages) == 1
    assert broken in gate, (broken, gate, accuracy, truth.by_step)
    assert math.isnan(gate[broken]) and math.isnan(accuracy[broken])
    assert math.isnan(scalars["concept/with_groups/snow/snow/significant"][broken])
    assert all(math.isfinite(scalars["concept/with_groups/snow/snow/significant"][s]) for s in healthy)
    assert with_groups.clears == [] or all(step < broken for step, *_ in with_groups.clears)
    assert any(v.active for v in with_groups.verdicts.values()) == bool(
        len(with_groups.alerts) > len(with_groups.clears)
    )
    assert all(math.isnan(v.history[-1]) for v in with_groups.verdicts.values())
    assert with_groups.failure_count == 0 and without.failure_count == 0
