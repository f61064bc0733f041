"""The multi-pass techniques as training-time monitors: real Trainer runs, event files read back."""

import pytest
import pytorch_lightning as pl
import torch

from lit import LitClassifier, decode, loaders, probe_cells, random_data, read_events, shared_pass_of, trainer
from probelens import DeconvMonitor, FeatureVisMonitor, GradCAMMonitor, OcclusionMonitor, ProbeSet, SaliencyMonitor
from probelens.methods import deconv_projections, feature_visualization, integrated_gradients, saliency, smoothgrad

MULTI = ("guided_backprop", "deconvnet", "smoothgrad", "integrated_gradients", "expected_gradients")


def make_probe():
    return ProbeSet.from_dataset(random_data(32, seed=2), num_samples=4, class_names=["a", "b"])


def test_saliency_monitor_logs_multi_pass_methods_equal_to_the_functional_api(tmp_path):
    probe = make_probe()
    options = {"smoothgrad": {"samples": 4, "noise": 0.1}, "integrated_gradients": {"steps": 8}}
    monitor = SaliencyMonitor(probe, methods=("vanilla", *MULTI), method_options=options)
    train, val = loaders(n=32, batch_size=16)
    module = LitClassifier()
    tr = trainer(tmp_path, [monitor], max_epochs=2)
    tr.fit(module, train, val)
    assert monitor.fire_count == 2 and monitor.failure_count == 0
    acc = read_events(tr.logger.log_dir)
    for method in ("vanilla", *MULTI):
        events = acc.Images(f"probelens/saliency/{method}")
        assert [e.step for e in events] == [1, 3]
        assert decode(events[-1]).std() > 5
    # what the monitor computes is the functional API's result for the predicted classes
    module.eval()
    x = probe.images
    pred = module(x).argmax(1)
    sg = smoothgrad(module, x, pred, samples=4, noise=0.1)
    ig = integrated_gradients(module, x, pred, steps=8)
    result = monitor._shared.get(module, probe, tr.global_step, monitor._needs)
    torch.testing.assert_close(monitor._attribution(module, result, "pred", "smoothgrad", torch.arange(4)), sg)
    torch.testing.assert_close(
        monitor._attribution(module, result, "pred", "integrated_gradients", torch.arange(4)), ig
    )
    guided = saliency(module, x, pred, method="guided_backprop")
    torch.testing.assert_close(monitor._attribution(module, result, "pred", "guided_backprop", torch.arange(4)), guided)


def test_occlusion_monitor_defaults_to_a_sparser_schedule(tmp_path):
    probe = make_probe()
    sparse = OcclusionMonitor(probe, window=4)
    dense = OcclusionMonitor(probe, window=8, stride=4, every_n_epochs=1, name="dense")
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, [sparse, dense], max_epochs=5)
    tr.fit(LitClassifier(), train, val)
    assert sparse.fire_count == 1 and dense.fire_count == 5
    acc = read_events(tr.logger.log_dir)
    assert [e.step for e in acc.Images("probelens/occlusion/4x4")] == [9]
    assert [e.step for e in acc.Images("probelens/dense/occlusion/8x8")] == [1, 3, 5, 7, 9]  # named: name in tag
    assert decode(acc.Images("probelens/occlusion/4x4")[0]).std() > 5
    assert probe_cells(acc.Images("probelens/occlusion/4x4")[0]) == probe.interleaved().tolist()  # for the export


def test_occlusion_monitor_argument_checks():
    probe = make_probe()  # 16x16
    with pytest.raises(ValueError, match="window"):
        OcclusionMonitor(probe, window=32)
    with pytest.raises(ValueError, match="baseline"):
        OcclusionMonitor(probe, baseline="median")
    with pytest.raises(ValueError, match="unknown option"):
        SaliencyMonitor(probe, methods=("smoothgrad",), method_options={"smoothgrad": {"n_samples": 4}})
    with pytest.raises(ValueError, match="not among the multi-pass methods"):
        SaliencyMonitor(probe, methods=("vanilla",), method_options={"smoothgrad": {"samples": 4}})


def test_new_monitors_keep_training_bit_identical(tmp_path):
    def run(callbacks):
        pl.seed_everything(3, workers=True)
        train, val = loaders(n=32, batch_size=8)
        module = LitClassifier(seed=5)
        tr = trainer(tmp_path / str(len(callbacks)), callbacks, max_epochs=1, deterministic=True, logger=False)
        tr.fit(module, train, val)
        return module.state_dict(), torch.get_rng_state()

    probe = make_probe()
    plain, rng_plain = run([])
    watched, rng_watched = run(
        [
            SaliencyMonitor(probe, methods=MULTI, method_options={"smoothgrad": {"samples": 2}}, every_n_steps=1),
            OcclusionMonitor(probe, window=8, every_n_steps=2),
            DeconvMonitor(probe, layers="model.4", every_n_steps=2),
            FeatureVisMonitor(probe, layers="model.8", channels=2, steps=4, every_n_steps=2),
        ]
    )
    for key in plain:
        assert torch.equal(plain[key], watched[key]), key
    assert torch.equal(rng_plain, rng_watched)


def test_deconv_and_feature_vis_monitors(tmp_path):
    probe = make_probe()
    deconv = DeconvMonitor(probe, layers="model.4", top_k=3, max_images=2, every_n_epochs=1)
    fvis = FeatureVisMonitor(probe, layers="model.8", channels=4, steps=8, every_n_epochs=1)
    classes = FeatureVisMonitor(probe, layers=None, steps=8, every_n_epochs=2, name="classes")
    train, val = loaders(n=32, batch_size=16)
    module = LitClassifier()
    tr = trainer(tmp_path, [deconv, fvis, classes], max_epochs=2)
    tr.fit(module, train, val)
    assert [(m.fire_count, m.failure_count) for m in (deconv, fvis, classes)] == [(2, 0), (2, 0), (1, 0)]
    acc = read_events(tr.logger.log_dir)
    for tag, steps in (
        ("probelens/deconv/model.4", [1, 3]),
        ("probelens/feature_vis/model.8", [1, 3]),
        ("probelens/classes/feature_vis/classes", [3]),
    ):
        events = acc.Images(tag)
        assert [e.step for e in events] == steps, tag
        assert decode(events[-1]).std() > 5, tag
        # rows of the first two probe images interleaved by class (one of each class)
        assert probe_cells(events[-1]) == (probe.interleaved()[:2].tolist() if "deconv" in tag else []), tag
    # the same seed at every step: with unchanged weights the images are identical (comparable across training)
    module.eval()
    a = feature_visualization(module, "model.8", [0, 1], image_shape=(3, 16, 16), steps=8)
    b = feature_visualization(module, "model.8", [0, 1], image_shape=(3, 16, 16), steps=8)
    assert torch.equal(a, b)
    proj, channels = deconv_projections(module, probe.images[:2], "model.4", top_k=3)
    assert proj.shape == (2, 3, 3, 16, 16) and channels.shape == (2, 3)


def test_feature_vis_channel_out_of_range_fails_at_setup(tmp_path):
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, [FeatureVisMonitor(make_probe(), layer="model.4", channels=[0, 99])], max_epochs=1)
    with pytest.raises(ValueError, match="out of range"):
        tr.fit(LitClassifier(), train, val)
    assert tr.global_step == 0


def test_grad_cam_monitor_logs_the_whole_cam_family_from_one_shared_pass(tmp_path):
    from probelens.methods.cam import CAM_METHODS, GRADIENT_CAMS

    probe = make_probe()
    family = GradCAMMonitor(probe, layers="all", methods=CAM_METHODS, target="both", filmstrip=True)
    gradient_only = GradCAMMonitor(probe, layers="all", methods=(*GRADIENT_CAMS, "eigencam"), name="gradients")
    saliency = SaliencyMonitor(probe, methods="vanilla")
    train, val = loaders(n=32, batch_size=16)
    module = LitClassifier()
    tr = trainer(tmp_path, [family, gradient_only, saliency], max_epochs=2)
    tr.fit(module, train, val)
    assert [(m.fire_count, m.failure_count) for m in (family, gradient_only, saliency)] == [(2, 0)] * 3
    # the three monitors, all variants at every layer and both target sets: one shared pass per firing
    assert shared_pass_of(tr, module).forward_count == 2
    acc = read_events(tr.logger.log_dir)
    images = set(acc.Tags()["images"])
    for method in CAM_METHODS:
        for layer in ("model.0", "model.4", "model.8"):
            assert f"probelens/{method}/{layer}" in images, (method, layer)
            assert f"probelens/gradients/{method}/{layer}" in images or method == "scorecam"
    assert "probelens/gradcam_filmstrip/model.8" in images  # the first method's strip, tag unchanged
    cells = [i for i in probe.interleaved().tolist() for _ in "pl"]  # pred and label tiles per probe image
    assert probe_cells(acc.Images("probelens/gradcam++/model.8")[-1]) == cells
    pictures = {m: decode(acc.Images(f"probelens/{m}/model.4")[-1]) for m in CAM_METHODS}
    assert len({p.tobytes() for p in pictures.values()}) == len(CAM_METHODS)  # eight different pictures


def test_grad_cam_monitor_rejects_unknown_cam_methods():
    with pytest.raises(ValueError, match=r"methods=\['gradcam', 'gradcampp'\] is not allowed"):
        GradCAMMonitor(make_probe(), methods=("gradcam", "gradcampp"))
