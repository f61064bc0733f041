"""ShortcutMonitor on real training runs of the snow/desert generator (CI-sized: each well under 60 s)."""

import importlib.util
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lit import LitClassifier, decode, loaders, probe_cells, random_data, read_events, trainer
from probelens import GradCAMMonitor, ProbeSet, ShortcutMonitor
from probelens.core.shortcut import SCALAR_TAGS
from probelens.data import BACKGROUND_NAMES, CLASS_NAMES, MEAN, STD, SnowDesertDataset
from shortcut_truth import ConflictAccuracy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def leopard_module(width=8):
    spec = importlib.util.spec_from_file_location("snow_vs_desert", EXAMPLES / "snow_vs_desert.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    return demo.LeopardClassifier(width=width)


def conflict_truth(**data):
    """Ground truth: accuracy on demo images whose background disagrees with the class (p=0)."""
    conflict = SnowDesertDataset(n=128, p=0.0, seed=7, **data)
    return ConflictAccuracy(conflict.images, conflict.labels)


def group_monitor(val):
    """A second ShortcutMonitor beside the mask one, on a probe of the same validation set balanced over (class,
    background) cells with the background as group (tags ``shortcut/groups/...``)."""
    probe = ProbeSet.from_dataset(
        val,
        num_samples=32,
        seed=0,
        mean=MEAN,
        std=STD,
        class_names=CLASS_NAMES,
        groups=val.backgrounds,
        group_names=BACKGROUND_NAMES,
    )
    return ShortcutMonitor(probe, name="groups", panels=False)


def run(tmp_path, p, n, epochs, data=None, with_groups=False, **monitor_kw):
    data = data or {}
    pl.seed_everything(0)
    train = SnowDesertDataset(n=n, p=p, seed=0, **data)
    val = SnowDesertDataset(n=256, p=p, seed=1, return_masks=True, **data)
    probe = ProbeSet.from_dataset(val, num_samples=32, seed=0, mean=MEAN, std=STD, class_names=CLASS_NAMES)
    monitor = ShortcutMonitor(probe, **monitor_kw)
    truth = conflict_truth(**data)
    extra = [group_monitor(val)] if with_groups else []
    tr = trainer(tmp_path, [monitor, truth, *extra], max_epochs=epochs, log_every_n_steps=10)
    tr.fit(leopard_module(), DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=256))
    tr.truth = truth
    tr.groups = extra[0] if extra else None
    return tr, monitor


def test_background_model_fires_the_alert_within_two_epochs(tmp_path):
    with pytest.warns(UserWarning, match="Shortcut suspected"):
        tr, monitor = run(tmp_path, p=1.0, n=1280, epochs=2)
    steps_per_epoch = 20
    assert monitor.alerts == [2 * steps_per_epoch - 1]  # the second epoch's validation step
    assert tr.truth.epochs()[0] < 0.3  # ground truth: the shortcut is learned in the first epoch
    acc = read_events(tr.logger.log_dir)
    scalars = {tag: [s.value for s in acc.Scalars(tag)] for tag in SCALAR_TAGS}
    assert all(len(v) == 2 for v in scalars.values())
    assert scalars["shortcut/score"][-1] > 0.8
    assert scalars["shortcut/verdict"] == [0.0, 1.0]
    for name in CLASS_NAMES:  # both directions follow the background
        assert acc.Scalars(f"shortcut/background_swap_flip_rate/{name}")[-1].value > 0.8
    assert scalars["shortcut/background_only_accuracy"][-1] > 0.9
    assert scalars["shortcut/background_swap_flip_rate"][-1] > 0.8
    # the map metric sits near chance for a background model
    assert scalars["shortcut/mask_attribution"][-1] < scalars["shortcut/mask_attribution_chance"][-1] + 0.1
    alert = acc.Tensors("shortcut/alert/text_summary")
    assert [e.step for e in alert] == monitor.alerts == [s.step for s in acc.Scalars("val/loss")][-1:]
    assert b"Shortcut suspected" in alert[0].tensor_proto.string_val[0]
    # the custom-scalars layout groups the shortcut curves with the loss
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for c in layout.category[0].chart}
    assert "shortcut/score" in charts["verdict"] and charts["loss"] == [r".*loss.*"]
    panel = acc.Images("shortcut/counterfactuals")
    assert len(panel) == 2 and decode(panel[-1]).std() > 5
    cells = probe_cells(panel[-1])  # four panels (original, object only, background only, swapped) per probe image
    shown = monitor.probe.interleaved()[: len(cells) // 4].tolist()  # every class, keyed by probe index
    assert cells == [k for k in shown for _ in range(4)] and cells
    assert {int(monitor.probe.targets[k]) for k in shown} == {0, 1}


def test_object_model_never_fires(tmp_path):
    tr, monitor = run(tmp_path, p=0.5, n=2000, epochs=6, with_groups=True)
    assert monitor.alerts == []
    assert tr.groups.alerts == [] and tr.groups.failure_count == 0, tr.groups.verdicts["groups"].history
    acc = read_events(tr.logger.log_dir)
    score = [s.value for s in acc.Scalars("shortcut/score")]
    probe_acc = [s.value for s in acc.Scalars("shortcut/probe_accuracy")]
    assert max(score) < 0.5
    assert probe_acc[-1] > 0.8 and score[-1] < 0.2  # it learned the object, and the score says so
    bg_acc = [s.value for s in acc.Scalars("shortcut/background_only_accuracy")]
    assert all(0.3 < a < 0.7 for a in bg_acc)  # the background alone predicts nothing
    mass = acc.Scalars("shortcut/mask_attribution")[-1].value
    assert mass > acc.Scalars("shortcut/mask_attribution_chance")[-1].value + 0.1


def test_object_model_with_an_informative_background_never_fires(tmp_path):
    """An easy coat (every spot class-typical, full contrast) on a background that agrees with the class 90% of the
    time: the model decides most conflicts by the coat at every epoch and all but a few at the end (ground truth), so
    the mask verdict, which asks whether the background wins a conflict, stays 0. The group verdict beside it is held
    to the worst class's ground truth (below)."""
    tr, monitor = run(tmp_path, p=0.9, n=1280, epochs=3, data={"purity": 1.0, "spot_contrast": 1.0}, with_groups=True)
    assert min(tr.truth.epochs()) >= 0.5 and tr.truth.epochs()[-1] >= 0.9, tr.truth.by_step
    assert monitor.alerts == []
    # The group verdict (a probe balanced over (class, background) cells of the same validation set: 8 real snow
    # leopards on sand) sees what the swaps miss here: in epochs 1-2 the worst class loses 69% and 48% of its
    # conflicts (ground truth), and 5 of the probe's 8 snow leopards on sand are called arabian. It may fire only
    # while the worst class loses at least 40% of its conflicts, and must clear once it wins 70% (docs/shortcut.md).
    groups, worst = tr.groups, tr.truth.worst_class_by_step
    why = (groups.verdicts["groups"].history, worst)
    assert groups.failure_count == 0 and all(worst[s] < 0.6 for s in groups.alerts), why
    recovered = [s for s in sorted(worst) if worst[s] >= 0.7 and s > max(groups.alerts, default=-1)]
    assert not groups.alerts or (groups.clears and recovered and groups.clears[-1] <= recovered[0]), why
    acc = read_events(tr.logger.log_dir)
    assert acc.Scalars("shortcut/groups/verdict")[-1].value == 0.0
    assert {e.value for e in acc.Scalars("shortcut/verdict")} == {0.0}
    assert acc.Scalars("shortcut/score")[-1].value < 0.2


def test_stop_ends_the_run_cleanly(tmp_path):
    with pytest.warns(UserWarning, match="Shortcut suspected"):
        tr, monitor = run(tmp_path, p=1.0, n=640, epochs=6, on_shortcut="stop", patience=1)
    assert monitor.alerts and tr.should_stop
    assert tr.current_epoch < 5


def test_without_masks_logs_drift_and_says_masks_enable_the_verdict(tmp_path):
    data = random_data(32, seed=2)
    probe = ProbeSet.from_dataset(data, num_samples=8)
    train, val = loaders(n=32, batch_size=16)
    monitor = ShortcutMonitor(probe, layers="model.8")
    tr = trainer(tmp_path, [monitor], max_epochs=3)
    with pytest.warns(UserWarning, match="masks enable the shortcut verdict|no foreground masks") as record:
        tr.fit(LitClassifier(), train, val)
    assert sum("no foreground masks" in str(w.message) for w in record) == 1
    acc = read_events(tr.logger.log_dir)
    assert len(acc.Scalars("shortcut/drift_previous")) == 2
    assert "shortcut/score" not in acc.Tags()["scalars"]


def test_bad_arguments():
    probe = ProbeSet(torch.randn(2, 3, 8, 8), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="on_shortcut"):
        ShortcutMonitor(probe, on_shortcut="panic")
    with pytest.raises(ValueError, match="patience"):
        ShortcutMonitor(probe, patience=0)


def test_gradcam_filmstrip_grows_with_log_steps(tmp_path):
    probe = ProbeSet.from_dataset(random_data(32, seed=2), num_samples=4)
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, [GradCAMMonitor(probe, layers="all", filmstrip=True)], max_epochs=3)
    tr.fit(LitClassifier(), train, val)
    acc = read_events(tr.logger.log_dir)
    strips = acc.Images("probelens/gradcam_filmstrip/model.8")  # the deepest monitored layer
    assert [e.step for e in strips] == [1, 3, 5]
    widths = [decode(e).shape[1] for e in strips]
    assert widths[0] < widths[1] < widths[2]


def test_a_small_shortcut_probe_is_warned_about_with_its_resolution(tmp_path):
    images = torch.randn(8, 3, 16, 16)
    masks = torch.zeros(8, 1, 16, 16, dtype=torch.bool)
    masks[..., 4:10, 4:10] = True
    probe = ProbeSet(images, torch.tensor([0, 1] * 4), masks=masks)
    train, val = loaders(n=32)
    tr = trainer(tmp_path, [ShortcutMonitor(probe)], max_epochs=1)
    with pytest.warns(UserWarning, match=r"the shortcut probe has 8 images \(4 in its smallest class\), so its"):
        tr.fit(LitClassifier(), train, val)


def test_an_alert_clears_when_the_model_moves_to_the_object(tmp_path):
    """Two epochs on backgrounds that always agree with the class (the alert fires), then three on uninformative
    backgrounds (p=0.5: the model turns to the coat): shortcut/verdict goes 0, 1, ..., 0 and the alert text says when
    it cleared, at a step where the model decides conflicts by the coat again (ground truth)."""
    pl.seed_everything(0)
    val = SnowDesertDataset(n=256, p=1.0, seed=1, return_masks=True)
    probe = ProbeSet.from_dataset(val, num_samples=32, seed=0, mean=MEAN, std=STD, class_names=CLASS_NAMES)
    monitor = ShortcutMonitor(probe)
    truth = conflict_truth()

    class Switching(pl.LightningDataModule):
        def train_dataloader(self):
            p = 1.0 if self.trainer.current_epoch < 2 else 0.5
            data = SnowDesertDataset(n=1280, p=p, seed=self.trainer.current_epoch)
            return DataLoader(data, batch_size=64, shuffle=True)

        def val_dataloader(self):
            return DataLoader(val, batch_size=256)

    tr = trainer(tmp_path, [monitor, truth], max_epochs=5, log_every_n_steps=10, reload_dataloaders_every_n_epochs=1)
    tr.fit(leopard_module(), datamodule=Switching())
    why = (monitor.verdict.history, truth.by_step, truth.worst_class_by_step)
    # ground truth: the shortcut is learned in the first epoch, the alert fires one epoch later
    assert truth.by_step[19] < 0.3 and monitor.alerts == [39], why
    assert len(monitor.clears) == 1 and monitor.clears[0] > 39, why
    cleared = monitor.clears[0]
    assert truth.worst_class_by_step[cleared] >= 0.5, why  # recovered: even the worst class wins most conflicts
    acc = read_events(tr.logger.log_dir)
    verdict = [(e.step, e.value) for e in acc.Scalars("shortcut/verdict")]
    assert verdict == [(s, float(39 <= s < cleared)) for s in (19, 39, 59, 79, 99)]
    assert [e.step for e in acc.Scalars("val/loss")] == [s for s, _ in verdict]  # on the loss curves' axis
    texts = acc.Tensors("shortcut/alert/text_summary")
    assert [e.step for e in texts] == [39, cleared]
    assert f"Shortcut alert cleared at step {cleared}".encode() in texts[1].tensor_proto.string_val[0]


def test_per_class_and_per_direction_flip_rates_with_three_classes(tmp_path):
    """Three classes: per-class flip rates (tag-safe class names) and per-direction ones, read back; each class's rate
    is the swap-count-weighted mean of its directions, and the score is the largest per-class rate."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(24, 3, 16, 16, generator=g)
    masks = torch.zeros(24, 1, 16, 16, dtype=torch.bool)
    masks[..., 4:10, 5:11] = True
    targets = torch.arange(24) % 3
    probe = ProbeSet(images, targets, masks=masks, class_names=["red fox", "cat", "dog/puppy"])
    train, val = loaders(n=48, num_classes=3)
    monitor = ShortcutMonitor(probe, layers="model.8", min_accuracy=0.0)
    tr = trainer(tmp_path, [monitor], max_epochs=1)
    tr.fit(LitClassifier(num_classes=3), train, val)
    events = read_events(tr.logger.log_dir)
    scalars = {t: events.Scalars(t)[-1].value for t in events.Tags()["scalars"]}
    names = ["red_fox", "cat", "dog_puppy"]
    per_class = [scalars[f"shortcut/background_swap_flip_rate/{n}"] for n in names]
    assert scalars["shortcut/score"] == pytest.approx(max(per_class))
    partners = monitor._counterfactual_batch().probes.partners
    for c, name in enumerate(names):
        weighted, count = 0.0, 0
        for b, other in enumerate(names):
            tag = f"shortcut/background_swap_flip_rate/{name}_on_{other}"
            n_swaps = int(((targets == c) & (targets[partners] == b)).sum())
            assert (tag in scalars) == (n_swaps > 0)  # b == c never: partners are of another class
            if n_swaps:
                weighted, count = weighted + scalars[tag] * n_swaps, count + n_swaps
        assert per_class[c] == pytest.approx(weighted / count)
