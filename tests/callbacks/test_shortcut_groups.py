"""The group-label verdict of ShortcutMonitor against ground truth: real Trainer runs, event files read back.

The group of a probe image is its background cue (a generator family's ``backgrounds``); the probe is picked from a
*biased* validation set (background agreeing with the class with probability ``p``) balanced over (class, group)
cells, so the rare conflicting images are half of it. Ground truth is the model's accuracy on cue-conflicting images
(``shortcut_truth.ConflictAccuracy``): below 0.3 the model has learned the shortcut. Cases, as for the mask verdict
(``test_shortcut_families.py``): a model that learns the background at p=0.95 (the alert fires within 2 epochs and
clears once the model recovers), a clean run (p=0.5) and an object model with an informative background (never
fire). Plus: masks and groups together (both logged, the alert names the evidence), NaN weights, an unarmed verdict,
tiny probes and a lazily built probe from dict items. Tiny CNNs at 32 px, CPU.
"""

from __future__ import annotations

import logging
import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lit import LitClassifier, NaNAfter, loaders, random_data, read_events, trainer
from probelens import ProbeSet, ShortcutMonitor
from probelens.core.shortcut import GROUP_SCALAR_TAGS
from probelens.data import BACKGROUND_NAMES, CLASS_NAMES, generate_cue_scenes, generate_snow_desert
from shortcut_truth import ConflictAccuracy

pytestmark = pytest.mark.integration

SIZE = 32
DEMO_SIZE = 48  # the coat needs more pixels than the cue scenes
MEAN, STD = (0.5,) * 3, (0.25,) * 3
CLASSES = {"stripes": ("disc", "square"), "markers": ("disc", "square"), "snow_desert": CLASS_NAMES}
GROUP_NAMES = {"stripes": ("horizontal", "vertical"), "markers": ("green", "magenta"), "snow_desert": BACKGROUND_NAMES}


def scenes(family: str, n: int, p: float, object_cue: float, seed: int):
    """(normalised images, labels, masks, backgrounds); the object cue of snow/desert is the coat's purity."""
    if family == "snow_desert":
        s = generate_snow_desert(n, size=DEMO_SIZE, p=p, purity=object_cue, spot_contrast=1.0, seed=seed)
    else:
        s = generate_cue_scenes(
            n, family=family, size=SIZE, p=p, object_cue=object_cue, object_kind="colour", seed=seed
        )
    m, sd = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (s.images - m) / sd, s.labels, s.masks, s.backgrounds


def train(tmp_path, family, schedule, probe_p, *, with_masks=False, lr=0.02, n=640, model=None, callbacks=(), **kw):
    """One epoch per entry of ``schedule`` (p, object_cue). The probe: 32 images of a 512-image validation set at
    ``probe_p``, balanced over (class, background) cells, with the background as group (and masks if asked)."""
    pl.seed_everything(0)
    x, y, masks, bg = scenes(family, 512, p=probe_p, object_cue=1.0, seed=1)
    val = TensorDataset(x, y, masks) if with_masks else TensorDataset(x, y)
    probe = ProbeSet.from_dataset(
        val,
        num_samples=32,
        seed=0,
        mean=MEAN,
        std=STD,
        class_names=CLASSES[family],
        groups=bg,
        group_names=GROUP_NAMES[family],
    )
    monitor = ShortcutMonitor(probe, panels=False, **kw)
    truth = ConflictAccuracy(*scenes(family, 128, p=0.0, object_cue=1.0, seed=7)[:2])

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            p, cue = schedule[self.trainer.current_epoch]
            xs, ys, *_ = scenes(family, n, p=p, object_cue=cue, seed=10 + self.trainer.current_epoch)
            return DataLoader(TensorDataset(xs, ys), batch_size=32, shuffle=True)

        def val_dataloader(self):
            return DataLoader(TensorDataset(x[:128], y[:128]), batch_size=128)

    tr = trainer(
        tmp_path,
        [monitor, truth, *callbacks],
        max_epochs=len(schedule),
        log_every_n_steps=5,
        reload_dataloaders_every_n_epochs=1,
    )
    tr.fit(model or LitClassifier(lr=lr), datamodule=Data())
    events = read_events(tr.logger.log_dir)
    scalars = {tag: dict((e.step, e.value) for e in events.Scalars(tag)) for tag in events.Tags()["scalars"]}
    return monitor, truth, scalars, events, probe


def check_group_numbers(scalars, probe, min_accuracy=0.75):
    """Every logged group number against the per-cell accuracies logged beside it (the score is the largest
    within-class gap; the gate the worst class's best group; armed iff gate >= min_accuracy)."""
    groups, names = probe.group_names, probe.class_names
    for step, score in scalars["shortcut/score"].items():
        cell = {(c, g): scalars[f"shortcut/group_accuracy/{c}/{g}"][step] for c in names for g in groups}
        gaps = {c: max(cell[c, g] for g in groups) - min(cell[c, g] for g in groups) for c in names}
        group_score = scalars.get("shortcut/score/groups", scalars["shortcut/score"])[step]
        assert group_score == pytest.approx(max(gaps.values()))
        assert score >= group_score - 1e-6
        for c in names:
            assert scalars[f"shortcut/group_gap/{c}"][step] == pytest.approx(gaps[c])
        assert scalars["shortcut/worst_group_accuracy"][step] == pytest.approx(min(cell.values()))
        gate = min(max(cell[c, g] for g in groups) for c in names)
        assert scalars["shortcut/agreeing_group_accuracy"][step] == pytest.approx(gate)
        assert scalars["shortcut/armed"][step] == float(gate >= min_accuracy)


def test_groups_alert_within_two_epochs_of_the_shortcut_and_clears_on_recovery(tmp_path):
    """Three epochs at p=0.95 with an uninformative object (the background shortcut is learned), then two with an
    uninformative background and an informative object (the model recovers)."""
    schedule = [(0.95, 0.5)] * 3 + [(0.5, 1.0)] * 2
    with pytest.warns(UserWarning, match="Shortcut suspected") as record:
        monitor, truth, scalars, events, probe = train(tmp_path, "stripes", schedule, probe_p=0.95)
    steps, conflict, worst = sorted(truth.by_step), truth.epochs(), truth.worst_class_by_step
    why = (truth.by_step, worst, monitor.verdicts["groups"].history, scalars["shortcut/agreeing_group_accuracy"])
    assert monitor.verdict is monitor.verdicts["groups"]
    learned = next(k for k, a in enumerate(conflict) if a < 0.3)
    assert len(monitor.alerts) == 1 and monitor.alert_evidence == [("groups",)], why
    assert 0 <= steps.index(monitor.alerts[0]) - learned <= 2, why
    recovered = next(k for k, s in enumerate(steps) if k > steps.index(monitor.alerts[0]) and worst[s] >= 0.7)
    assert len(monitor.clears) == 1 and steps.index(monitor.clears[0]) <= recovered + 1, why
    assert scalars["shortcut/verdict"][monitor.alerts[0]] == 1.0 and scalars["shortcut/verdict"][steps[-1]] == 0.0
    # the probe holds the rare conflicting images; at the alert the agreeing cells are right, the conflicting wrong
    assert int((probe.groups != probe.targets).sum()) == 16
    assert scalars["shortcut/score"][monitor.alerts[0]] >= 0.5
    assert scalars["shortcut/worst_group_accuracy"][monitor.alerts[0]] <= 0.5
    for tag in (*GROUP_SCALAR_TAGS, "shortcut/probe_accuracy"):
        assert sorted(scalars[tag]) == steps, tag
    check_group_numbers(scalars, probe)
    texts = events.Tensors("shortcut/alert/text_summary")
    assert [e.step for e in texts] == [monitor.alerts[0], monitor.clears[0]]
    alert = texts[0].tensor_proto.string_val[0].decode()
    assert "evidence: groups" in alert and "within class" in alert and "group 'horizontal'" in alert
    cleared = texts[1].tensor_proto.string_val[0].decode()
    assert "Shortcut alert cleared" in cleared and "group 'horizontal'" in cleared and "group 'vertical'" in cleared
    assert sum("Shortcut suspected" in str(w.message) for w in record) == 1
    assert "shortcut/background_swap_flip_rate" not in scalars  # no masks, no mask numbers
    assert monitor.failure_count == 0
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout()
    layout.ParseFromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for c in layout.category[0].chart}
    assert "shortcut/group_accuracy/.*" in charts["accuracy per (class, group)"]
    assert "counterfactual accuracy" not in charts and "shortcut/score" in charts["verdict"]


def test_groups_alert_on_the_snow_desert_shortcut(tmp_path):
    """The demo's family at p=0.95 with an uninformative coat (purity 0.5), 48 px: the background shortcut is learned
    in the first epoch, and the group alert names the class and its snow/desert accuracies."""
    with pytest.warns(UserWarning, match="Shortcut suspected"):
        monitor, truth, scalars, events, probe = train(tmp_path, "snow_desert", [(0.95, 0.5)] * 2, probe_p=0.95)
    steps = sorted(truth.by_step)
    learned = next(k for k, a in enumerate(truth.epochs()) if a < 0.3)
    assert monitor.alerts and 0 <= steps.index(monitor.alerts[0]) - learned <= 2, (
        truth.by_step,
        scalars["shortcut/score"],
    )
    check_group_numbers(scalars, probe)
    alert = events.Tensors("shortcut/alert/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "in group 'snow'" in alert and "in group 'desert'" in alert and "evidence: groups" in alert


@pytest.mark.parametrize("family", ["stripes", "markers"])
def test_groups_never_fire_on_a_clean_run(tmp_path, family):
    monitor, truth, scalars, _, probe = train(tmp_path, family, [(0.5, 1.0)] * 3, probe_p=0.5)
    assert monitor.alerts == [] and set(scalars["shortcut/verdict"].values()) == {0.0}
    assert max(scalars["shortcut/score"].values()) < 0.5, scalars["shortcut/score"]
    assert truth.epochs()[-1] >= 0.7  # it learned the object
    check_group_numbers(scalars, probe)


@pytest.mark.parametrize(("family", "p", "lr"), [("stripes", 0.9, 0.05), ("markers", 1.0, 0.02)])
def test_groups_never_fire_on_an_object_model_with_an_informative_background(tmp_path, family, p, lr):
    """An easy object on a strongly correlated background (p=0.9 / 1.0): the model decides conflicts by the object
    (ground truth), so its accuracy hardly depends on the group. The probe comes from a validation set at p=0.95
    (for p=1.0 it would have no conflicting image)."""
    monitor, truth, scalars, _, _ = train(tmp_path, family, [(p, 1.0)] * 3, probe_p=0.95, lr=lr)
    assert min(truth.epochs()[1:]) >= 0.8, truth.by_step
    assert monitor.alerts == [] and set(scalars["shortcut/verdict"].values()) == {0.0}
    assert max(scalars["shortcut/score"].values()) < 0.5


def test_masks_and_groups_both_are_logged_and_the_alert_names_the_evidence(tmp_path):
    schedule = [(1.0, 0.5)] * 3
    with pytest.warns(UserWarning, match="Shortcut suspected"):
        monitor, truth, scalars, events, probe = train(tmp_path, "markers", schedule, probe_p=0.95, with_masks=True)
    assert probe.has_masks and probe.has_groups
    for tag in ("shortcut/score/masks", "shortcut/score/groups", "shortcut/armed/masks", "shortcut/armed/groups"):
        assert sorted(scalars[tag]) == sorted(truth.by_step), tag
    for step, score in scalars["shortcut/score"].items():
        assert score == pytest.approx(
            max(scalars["shortcut/score/masks"][step], scalars["shortcut/score/groups"][step])
        )
        # with groups both verdicts are armed by the agreeing cells (the probe accuracy of a shortcut model is 0.5)
        assert scalars["shortcut/armed/masks"][step] == scalars["shortcut/armed/groups"][step]
    assert monitor.alerts, (monitor.verdicts["masks"].history, monitor.verdicts["groups"].history)
    assert {e for fired in monitor.alert_evidence for e in fired} <= {"masks", "groups"}
    texts = [e.tensor_proto.string_val[0].decode() for e in events.Tensors("shortcut/alert/text_summary")]
    for fired, text in zip(monitor.alert_evidence, texts):
        assert f"evidence: {' and '.join(fired)}" in text
    assert "shortcut/background_swap_flip_rate" in scalars and "shortcut/group_accuracy/disc/green" in scalars


def test_nan_weights_log_nan_and_warn_once_never_numbers_from_nan(tmp_path):
    with pytest.warns(UserWarning, match="non-finite values") as record:
        monitor, truth, scalars, _, _ = train(
            tmp_path, "markers", [(0.5, 1.0)] * 3, probe_p=0.95, with_masks=True, callbacks=[NaNAfter(2)]
        )
    steps = sorted(truth.by_step)
    assert sum("non-finite values" in str(w.message) for w in record) == 1
    assert "model's outputs" in next(str(w.message) for w in record if "non-finite" in str(w.message))
    healthy, broken = steps[:2], steps[2]
    for tag in (
        "shortcut/probe_accuracy",
        "shortcut/score",
        "shortcut/verdict",
        "shortcut/armed",
        "shortcut/worst_group_accuracy",
        "shortcut/background_swap_flip_rate",
        "shortcut/drift_first",
    ):
        assert math.isnan(scalars[tag][broken]), tag
        assert all(math.isfinite(scalars[tag][s]) for s in healthy if s in scalars[tag]), tag
    assert math.isnan(monitor.verdicts["groups"].history[-1]) and math.isnan(monitor.verdicts["masks"].history[-1])
    assert monitor.failure_count == 0


def test_an_unarmed_verdict_is_said_once_and_logged(tmp_path, caplog):
    """A model that does not learn (lr=0, a fixed random init): the gate stays below min_accuracy at every step."""
    caplog.set_level(logging.INFO, logger="lightning_utilities")
    _monitor, _truth, scalars, _, probe = train(tmp_path, "stripes", [(0.5, 1.0)] * 2, probe_p=0.5, lr=0.0)
    assert set(scalars["shortcut/armed"].values()) == {0.0}
    said = [r.getMessage() for r in caplog.records if "verdict is not armed" in r.getMessage()]
    assert len(said) == 1 and "min_accuracy 0.75" in said[0] and "best group" in said[0]
    check_group_numbers(scalars, probe)


def test_a_single_class_probe_is_refused_at_fit_start_with_the_minimum(tmp_path):
    masks = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    masks[..., 4:9, 4:9] = True
    probe = ProbeSet(torch.randn(1, 3, 16, 16), torch.tensor([1]), masks=masks)
    train_loader, val_loader = loaders(n=32)
    tr = trainer(tmp_path, [ShortcutMonitor(probe)], max_epochs=1)
    with pytest.raises(ValueError, match=r"1 image\(s\), all of class '1'.*at least 2 images \(1 per class\)"):
        tr.fit(LitClassifier(), train_loader, val_loader)
    assert tr.global_step == 0


def test_tiny_cells_are_warned_at_setup_and_an_unarmed_mask_verdict_is_said(tmp_path, caplog):
    """A 16-image probe over 2 x 2 cells (4 each): one warning at setup names every cell and its count. A masks-only
    probe with min_accuracy=1.0 on a model that does not learn (lr=0): armed 0 at every step, said once."""
    caplog.set_level(logging.INFO, logger="lightning_utilities")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, 16, 16, generator=g)
    masks = torch.zeros(16, 1, 16, 16, dtype=torch.bool)
    masks[..., 4:10, 4:10] = True
    t = torch.tensor([0, 1] * 8)
    grouped = ProbeSet(x, t, groups=torch.tensor([0, 0, 1, 1] * 4), group_names=["in", "out"])
    masked = ProbeSet(x, t, masks=masks)
    train_loader, val_loader = loaders(n=32)
    monitors = [ShortcutMonitor(grouped, name="g"), ShortcutMonitor(masked, name="m", min_accuracy=1.0, panels=False)]
    tr = trainer(tmp_path, monitors, max_epochs=2)
    with pytest.warns(
        UserWarning, match=r"cells \(class '0', group 'in'\): 4, \(class '0', group 'out'\): 4, .*fewer "
    ) as record:
        tr.fit(LitClassifier(lr=0.0), train_loader, val_loader)
    assert sum("(class, group) cells" in str(w.message) for w in record) == 1
    events = read_events(tr.logger.log_dir)
    assert [e.value for e in events.Scalars("shortcut/m/armed")] == [0.0, 0.0]
    said = [r.getMessage() for r in caplog.records] + [str(w.message) for w in record]
    said = [m for m in said if m.startswith("m: the masks verdict is not armed")]
    assert len(said) == 1 and "the probe accuracy" in said[0] and "< min_accuracy 1.00" in said[0], said


class DictItems(Dataset):
    def __init__(self, base, image_key="pixel_values", label_key="labels"):
        self.base, self.image_key, self.label_key = base, image_key, label_key

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return {self.image_key: x, self.label_key: y}


class DictClassifier(LitClassifier):
    def __init__(self, image_key="pixel_values", label_key="labels"):
        super().__init__()
        self.keys = (image_key, label_key)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[self.keys[0]]), batch[self.keys[1]])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[self.keys[0]]), batch[self.keys[1]]))


def test_a_lazy_probe_from_hugging_face_items_and_a_clear_error_for_unknown_keys(tmp_path):
    data = DictItems(random_data(32, seed=2))
    monitor = ShortcutMonitor(probe_size=8)
    tr = trainer(tmp_path, [monitor], max_epochs=1)
    tr.fit(DictClassifier(), DataLoader(data, batch_size=16), DataLoader(data, batch_size=16))
    assert monitor.probe is not None and len(monitor.probe) == 8 and monitor.failure_count == 0
    odd = DictItems(random_data(32, seed=2), "photo", "cls")
    tr = trainer(tmp_path / "odd", [ShortcutMonitor(probe_size=8)], max_epochs=1, num_sanity_val_steps=2)
    with pytest.raises(ValueError, match=r"built without probe=.*keys \['cls', 'photo'\].*input_key="):
        tr.fit(DictClassifier("photo", "cls"), DataLoader(odd, batch_size=16), DataLoader(odd, batch_size=16))
    assert tr.global_step == 0
    # ... and named on the monitor (what a LightningCLI config can do: no ProbeSet there)
    named = ShortcutMonitor(probe_size=8, probe_input_key="photo", probe_target_key="cls")
    tr = trainer(tmp_path / "named", [named], max_epochs=1, num_sanity_val_steps=2)
    tr.fit(DictClassifier("photo", "cls"), DataLoader(odd, batch_size=16), DataLoader(odd, batch_size=16))
    assert named.probe is not None and len(named.probe) == 8 and named.failure_count == 0
    expected = torch.stack([odd[i]["photo"] for i in named.probe.indices.tolist()])
    assert torch.equal(named.probe.images, expected)  # the images under the named key, not another field
    with pytest.raises(ValueError, match=r"probe_input_key='' is not allowed"):
        ShortcutMonitor(probe_input_key="")
