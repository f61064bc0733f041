"""Real Trainer runs with real TensorBoard event files read back."""

import glob
import os

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from lit import LitClassifier, decode, loaders, probe_cells, random_data, read_events, shared_pass_of, trainer
from probelens import ActivationMonitor, FilterMonitor, GradCAMMonitor, ProbeSet, SaliencyMonitor, ShortcutMonitor


def boxes(images, targets):
    masks = torch.zeros(images.shape[0], 1, *images.shape[-2:], dtype=torch.bool)
    masks[..., 2:8, 3:9] = True
    return masks


def make_probe(n=6, channels=3, size=(16, 16)):
    data = random_data(32, channels=channels, size=size, seed=2)
    return ProbeSet.from_dataset(data, num_samples=n, seed=0, class_names=["cat", "dog"], masks=boxes)


def all_monitors(probe, **kw):
    return [
        FilterMonitor(**kw),
        ActivationMonitor(probe, layers="auto", **kw),
        GradCAMMonitor(probe, layers="all", **kw),
        SaliencyMonitor(probe, methods=("vanilla", "gradient_x_input"), **kw),
        ShortcutMonitor(probe, **kw),
    ]


def test_all_four_kinds_logged_on_the_loss_step_axis(tmp_path):
    train, val = loaders(n=64, batch_size=16)
    probe = make_probe()
    tr = trainer(tmp_path, all_monitors(probe), max_epochs=3)
    tr.fit(LitClassifier(), train, val)
    acc = read_events(tr.logger.log_dir)
    tags = acc.Tags()["images"]
    expected = {
        "probelens/filters/model.0",
        "probelens/filters/model.8",
        "probelens/gradcam/model.0",
        "probelens/gradcam/model.4",
        "probelens/gradcam/model.8",
        "probelens/saliency/vanilla",
        "probelens/saliency/gradient_x_input",
    }
    assert expected <= set(tags), tags
    assert any(t.startswith("probelens/activations/") for t in tags)
    for tag in tags:  # the probe-image layout the export reads: grids of probe images have it, weight images not
        cells = probe_cells(acc.Images(tag)[-1])
        if tag.startswith(("probelens/filters/", "probelens/gradcam_filmstrip/")):  # weights; a history strip
            assert cells == [], tag
        elif tag.startswith("probelens/"):
            assert cells == probe.interleaved()[: len(cells)].tolist() and len(cells) >= 2, (tag, cells)
    # the images sit exactly on the validation loss curve's steps (Lightning logs epoch-end validation one step
    # behind trainer.global_step: 3, 7, 11 for 4 batches per epoch)
    val_steps = [e.step for e in acc.Scalars("val_loss")]
    steps_per_epoch = 4
    assert val_steps == [steps_per_epoch * (k + 1) - 1 for k in range(3)]
    for tag in tags:
        events = acc.Images(tag)
        assert [e.step for e in events] == val_steps, tag
        for e in events:
            pixels = decode(e)
            assert pixels.std() > 5, f"{tag} at step {e.step} is blank"
    scalars = acc.Tags()["scalars"]
    for name in ("FilterMonitor", "ActivationMonitor", "GradCAMMonitor", "SaliencyMonitor", "ShortcutMonitor"):
        cost = acc.Scalars(f"probelens/cost_ms/{name}")
        assert len(cost) == 3 and all(c.value > 0 for c in cost)
    # loss curves share the axis
    assert "train_loss" in scalars
    # the architecture table, once, at fit start
    table = acc.Tensors("probelens/architecture/text_summary")
    assert len(table) == 1 and b"| **model.4** | Conv2d | (16, 8, 8) |" in table[0].tensor_proto.string_val[0]
    assert not any(t.startswith("probelens/failures") for t in scalars)


def test_monitors_firing_together_share_one_forward(tmp_path):
    train, val = loaders(n=32, batch_size=16)
    probe = make_probe()
    module = LitClassifier()
    probe_passes = []

    def count(mod, args):
        # probe passes are the only forwards in eval mode with grad enabled (validation runs under no_grad); the
        # setup checks (architecture table with its batched receptive-field pass, gradient reachability) run at step 0
        if not mod.training and torch.is_grad_enabled() and module.trainer.global_step > 0:
            probe_passes.append(args[0].shape[0])

    module.model.register_forward_pre_hook(count)
    monitors = [*all_monitors(probe), GradCAMMonitor(probe, layers="auto", target="both", name="both")]
    tr = trainer(tmp_path, monitors, max_epochs=2)
    tr.fit(module, train, val)
    # 6 monitors x 2 log steps share 2 probe passes
    assert probe_passes == [len(probe)] * 2
    assert shared_pass_of(tr, module).forward_count == 2
    assert all(m.fire_count == 2 for m in monitors)


def test_training_is_bit_identical_with_and_without_monitors(tmp_path):
    def run(callbacks):
        pl.seed_everything(123, workers=True)
        train, val = loaders(n=64, batch_size=8)
        module = LitClassifier(seed=7)
        tr = trainer(
            tmp_path / str(len(callbacks)),
            callbacks,
            max_epochs=2,
            accumulate_grad_batches=2,
            deterministic=True,
            logger=False,
        )
        tr.fit(module, train, val)
        return module.state_dict(), torch.get_rng_state()

    probe = make_probe()
    plain, rng_plain = run([])
    watched, rng_watched = run([*all_monitors(probe, every_n_steps=1, log_at_start=True)])
    assert plain.keys() == watched.keys()
    for key in plain:
        assert torch.equal(plain[key], watched[key]), f"{key} differs"
    assert torch.equal(rng_plain, rng_watched)


@pytest.mark.parametrize("fn", ["validate", "test"])
def test_works_from_validate_and_test_under_inference_mode(tmp_path, fn):
    _, val = loaders(n=32)
    probe = make_probe()
    monitors = all_monitors(probe)
    tr = trainer(tmp_path, monitors)
    getattr(tr, fn)(LitClassifier(), val)
    assert all(m.fire_count == 1 and m.failure_count == 0 for m in monitors)
    acc = read_events(tr.logger.log_dir)
    # outside fit the stage leads the tag, so these never share a (tag, step) with the training pictures
    assert f"{fn}/probelens/gradcam/model.8" in acc.Tags()["images"]
    assert not [t for t in acc.Tags()["images"] if t.startswith("probelens/")]


def test_falls_back_to_train_epoch_end_without_validation(tmp_path):
    train, _ = loaders(n=32, batch_size=16)
    probe = make_probe()
    tr = trainer(tmp_path, [GradCAMMonitor(probe, layers="last")], max_epochs=2)
    tr.fit(LitClassifier(), train)
    acc = read_events(tr.logger.log_dir)
    # Lightning logs epoch-end training metrics one step behind global_step (2 batches per epoch: steps 1 and 3)
    assert [e.step for e in acc.Images("probelens/gradcam/model.8")] == [1, 3]
    epoch_marks = [e.step for e in acc.Scalars("epoch")]
    assert {1, 3} <= set(epoch_marks)


def test_every_n_steps_schedule(tmp_path):
    train, val = loaders(n=64, batch_size=16)
    probe = make_probe()
    tr = trainer(tmp_path, [SaliencyMonitor(probe, methods="vanilla", every_n_steps=3)], max_epochs=2)
    tr.fit(LitClassifier(), train, val)
    acc = read_events(tr.logger.log_dir)
    # fired after batches 3 and 6 (global_step 3, 6), written where Lightning writes those batches' train_loss
    steps = [e.step for e in acc.Images("probelens/saliency/vanilla")]
    assert steps == [2, 5]
    assert set(steps) <= {e.step for e in acc.Scalars("train_loss")}


def test_failing_explanation_warns_once_and_training_goes_on(tmp_path):
    class Broken(GradCAMMonitor):
        def explain(self, step, pl_module, trainer):
            raise RuntimeError("explanation exploded")

    train, val = loaders(n=32, batch_size=16)
    probe = make_probe()
    broken = Broken(probe, layers="last")
    tr = trainer(tmp_path, [broken, SaliencyMonitor(probe)], max_epochs=3)
    with pytest.warns(UserWarning, match="explanation exploded") as record:
        tr.fit(LitClassifier(), train, val)
    assert sum("explanation exploded" in str(w.message) for w in record) == 1
    assert tr.global_step == 6 and broken.failure_count == 3
    acc = read_events(tr.logger.log_dir)
    assert [s.value for s in acc.Scalars("probelens/failures/Broken")] == [1.0, 2.0, 3.0]
    assert len(acc.Images("probelens/saliency/vanilla")) == 3  # the other monitor is unaffected


def test_without_tensorboard_logger_writes_pngs_and_warns_once(tmp_path):
    train, val = loaders(n=32, batch_size=16)
    probe = make_probe()
    logger = CSVLogger(str(tmp_path), name="csv")
    tr = trainer(tmp_path, [GradCAMMonitor(probe, layers="last"), SaliencyMonitor(probe)], logger=logger, max_epochs=2)
    with pytest.warns(UserWarning, match="no TensorBoardLogger") as record:
        tr.fit(LitClassifier(), train, val)
    assert sum("no TensorBoardLogger" in str(w.message) for w in record) == 1
    pngs = sorted(glob.glob(os.path.join(logger.log_dir, "probelens_images", "**", "*.png"), recursive=True))
    gradcam = [p for p in pngs if f"{os.sep}gradcam{os.sep}" in p]
    assert [os.path.basename(p) for p in gradcam] == ["step_00000001.png", "step_00000003.png"]
    assert len(pngs) == 8  # + the Grad-CAM filmstrip, vanilla and gradient_x_input saliency


def test_unknown_layer_fails_before_the_first_step(tmp_path):
    train, val = loaders(n=32)
    tr = trainer(tmp_path, [GradCAMMonitor(make_probe(), layers=["model.44"])])
    with pytest.raises(ValueError, match=r"unknown layer 'model.44'.*did you mean 'model.4'"):
        tr.fit(LitClassifier(), train, val)
    assert tr.global_step == 0


def test_probe_that_does_not_fit_the_model_fails_at_setup(tmp_path):
    train, val = loaders(n=32)
    tr = trainer(tmp_path, [SaliencyMonitor(make_probe(channels=1))])
    with pytest.raises(ValueError, match="cannot run on the probe images"):
        tr.fit(LitClassifier(), train, val)
    assert tr.global_step == 0


def test_non_spatial_layer_fails_at_setup(tmp_path):
    train, val = loaders(n=32)
    tr = trainer(tmp_path, [GradCAMMonitor(make_probe(), layers=["model.13"])])
    with pytest.raises(ValueError, match="do not output a spatial feature map"):
        tr.fit(LitClassifier(), train, val)


def test_grayscale_non_square_probe(tmp_path):
    train, val = loaders(n=32, channels=1, size=(12, 20))
    probe = make_probe(channels=1, size=(12, 20))
    monitors = all_monitors(probe)
    tr = trainer(tmp_path, monitors, max_epochs=1)
    tr.fit(LitClassifier(in_channels=1), train, val)
    assert all(m.fire_count == 1 and m.failure_count == 0 for m in monitors)
    acc = read_events(tr.logger.log_dir)
    img = decode(acc.Images("probelens/gradcam/model.4")[0])
    assert img.shape[2] == 3 and img.std() > 5


def test_two_monitors_of_one_class_keep_separate_checkpoint_state(tmp_path):
    probe = make_probe()
    a = GradCAMMonitor(probe, layers="last", fixed_scale=True)
    b = GradCAMMonitor(probe, layers="all", name="all-layers")
    assert a.state_key != b.state_key
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, [a, b], max_epochs=1)
    tr.fit(LitClassifier(), train, val)
    ckpt = tmp_path / "c.ckpt"
    tr.save_checkpoint(ckpt)
    states = torch.load(ckpt, weights_only=False)["callbacks"]
    assert states[a.state_key]["fire_count"] == 1 and "model.8" in states[a.state_key]["scale"]
    assert states[b.state_key]["probe_fingerprint"] == probe.fingerprint()


def test_bad_arguments_fail_in_init():
    probe = make_probe()
    with pytest.raises(ValueError, match="every_n_epochs"):
        GradCAMMonitor(probe, every_n_epochs=0)
    with pytest.raises(ValueError, match="target"):
        GradCAMMonitor(probe, target="labels")
    with pytest.raises(ValueError, match="smoothgradd"):
        SaliencyMonitor(probe, methods=("smoothgradd",))
    with pytest.raises(TypeError, match="ProbeSet"):
        GradCAMMonitor(torch.randn(2, 3, 8, 8))


def _first_grid(tmp_path, **options):
    import io

    from PIL import Image

    from probelens.render import cells_from_text

    torch.manual_seed(0)
    probe = ProbeSet.from_dataset(random_data(32, seed=2), num_samples=6, seed=0)
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, [GradCAMMonitor(probe, layers="last", filmstrip=False, **options)], max_epochs=1)
    tr.fit(LitClassifier(), train, val)
    event = read_events(tr.logger.log_dir).Images("probelens/gradcam/model.8")[0]
    with Image.open(io.BytesIO(event.encoded_image_string)) as im:
        return torch.from_numpy(decode(event).copy()).permute(2, 0, 1), cells_from_text(im.text)


def test_max_image_side_downscales_the_picture_and_its_probe_image_layout(tmp_path):
    full, full_cells = _first_grid(tmp_path / "full")
    small, small_cells = _first_grid(tmp_path / "small", max_image_side=150)
    assert max(full.shape[-2:]) > 150 and max(small.shape[-2:]) == 150
    # the same training, so the small picture is the full one area-downscaled
    expected = torch.nn.functional.interpolate(full[None].float(), size=small.shape[-2:], mode="area")[0]
    assert (expected.round() - small.float()).abs().max() <= 1
    sy, sx = small.shape[1] / full.shape[1], small.shape[2] / full.shape[2]
    order = ProbeSet.from_dataset(random_data(32, seed=2), num_samples=6, seed=0).interleaved().tolist()
    assert [c[0] for c in small_cells] == [c[0] for c in full_cells] == order
    for (_, *box), (_, *big) in zip(small_cells, full_cells, strict=True):
        scaled = (big[0] * sx, big[1] * sy, big[2] * sx, big[3] * sy)
        assert all(abs(a - b) <= 1 for a, b in zip(box, scaled, strict=True)), (box, scaled)
        assert 0 <= box[0] < box[2] <= small.shape[2] and 0 <= box[1] < box[3] <= small.shape[1]


def test_every_n_steps_fires_once_per_optimizer_step_with_gradient_accumulation(tmp_path):
    probe = ProbeSet.from_dataset(random_data(32, seed=2), num_samples=4, seed=0)
    monitor = FilterMonitor(every_n_steps=2)
    train, val = loaders(n=128, batch_size=8)  # 16 batches, 8 optimizer steps per epoch
    tr = trainer(
        tmp_path,
        [monitor, GradCAMMonitor(probe, layers="last", every_n_steps=2, filmstrip=False)],
        max_epochs=1,
        accumulate_grad_batches=2,
        log_every_n_steps=2,
        limit_val_batches=0,
    )
    tr.fit(LitClassifier(), train, val)
    assert tr.global_step == 8
    assert monitor.fire_count == 4  # optimizer steps 2, 4, 6, 8; not also on the micro-batches after them
    acc = read_events(tr.logger.log_dir)
    steps = [e.step for e in acc.Images("probelens/gradcam/model.8")]
    assert steps == sorted(set(steps)) and len(steps) == 4
    assert steps == [e.step for e in acc.Scalars("train_loss")]  # where Lightning's log_every_n_steps=2 logs
