"""The monitors' pictures drawn, encoded and written off the training thread (probelens.writing.pipeline; the
default where the model trains on an accelerator, ``PROBELENS_SYNC_IMAGES=0`` here): the same bytes as drawing them on
the training thread, in step order, flushed when fit ends or crashes, and a picture that fails on the worker is
warned about once and counted while training goes on."""

import threading

import pytest
import torch

from lit import LitClassifier, loaders, read_events, trainer
from probelens import (
    ActivationMonitor,
    FilterMonitor,
    GradCAMMonitor,
    OcclusionMonitor,
    ProbeSet,
    SaliencyMonitor,
)
from probelens.writing.pipeline import SYNC_ENV_VAR

PROBE = ProbeSet(torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 0, 1]))


def monitors():
    return [
        FilterMonitor(every_n_steps=1),
        ActivationMonitor(PROBE, every_n_steps=1),
        GradCAMMonitor(PROBE, layers="all", every_n_steps=1),
        SaliencyMonitor(PROBE, methods=("vanilla", "gradient_x_input"), every_n_steps=1),
    ]


def pictures(log_dir) -> dict[tuple[str, int], bytes]:
    acc = read_events(log_dir)
    return {(t, e.step): e.encoded_image_string for t in acc.Tags()["images"] for e in acc.Images(t)}


def fit(tmp_path, name, **kw):
    torch.manual_seed(0)
    train, val = loaders(n=48, batch_size=16)
    tr = trainer(tmp_path / name, monitors(), max_epochs=2, **kw)
    tr.fit(LitClassifier(), train, val)
    return tr


@pytest.fixture
def worker(monkeypatch):
    """The image pipeline's worker thread although the model trains on the CPU."""
    monkeypatch.setenv(SYNC_ENV_VAR, "0")


def threads_calling(monkeypatch, name: str) -> set[str]:
    """The names of the threads that call ``probelens.core.grad_cam.<name>`` from now on."""
    import probelens.core.grad_cam as grad_cam_core

    threads: set[str] = set()
    original = getattr(grad_cam_core, name)

    def spy(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(grad_cam_core, name, spy)
    return threads


@pytest.fixture
def drawn_by(monkeypatch) -> set[str]:
    """The names of the threads that draw Grad-CAM grids."""
    return threads_calling(monkeypatch, "labelled_grid")


def test_the_worker_writes_the_bytes_the_training_thread_would(tmp_path, monkeypatch, drawn_by):
    monkeypatch.setenv(SYNC_ENV_VAR, "1")
    sync = pictures(fit(tmp_path, "sync").logger.log_dir)
    assert drawn_by == {"MainThread"}
    drawn_by.clear()
    monkeypatch.setenv(SYNC_ENV_VAR, "0")
    tr = fit(tmp_path, "async")
    assert drawn_by == {"probelens-images"}
    workers_seen = [t.name for t in threading.enumerate() if t.name.startswith("probelens")]
    written = pictures(tr.logger.log_dir)
    assert len(sync) >= 40 and written.keys() == sync.keys()
    assert all(written[key] == sync[key] for key in sync), [k for k in sync if written[k] != sync[k]][:3]
    assert workers_seen == []  # teardown stopped the worker
    steps = {}
    for tag, step in written:
        steps.setdefault(tag, []).append(step)
    assert all(s == sorted(s) for s in steps.values())


class CrashAt(LitClassifier):
    def training_step(self, batch, batch_idx):
        if self.global_step == 4:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_pictures_drawn_before_a_crash_are_written(tmp_path, worker):
    train, val = loaders(n=48, batch_size=16)
    tr = trainer(tmp_path, monitors(), max_epochs=3)
    with pytest.raises(RuntimeError, match="boom"):
        tr.fit(CrashAt(), train, val)
    acc = read_events(tr.logger.log_dir)
    assert [e.step for e in acc.Images("probelens/gradcam/model.8")] == [0, 1, 2, 3]  # every firing before it


def test_a_picture_failing_on_the_worker_warns_once_and_training_goes_on(tmp_path, monkeypatch, worker):
    import probelens.core.saliency as saliency_core

    def broken(*args, **kwargs):
        raise ValueError("no colours today")

    monkeypatch.setattr(saliency_core, "saliency_to_heat", broken)  # runs inside the picture's render, on the worker
    sal = SaliencyMonitor(PROBE, methods="vanilla", every_n_steps=1)
    cam = GradCAMMonitor(PROBE, layers="last", every_n_steps=1)
    train, val = loaders(n=48, batch_size=16)
    tr = trainer(tmp_path, [sal, cam], max_epochs=2)
    with pytest.warns(
        UserWarning, match=r"SaliencyMonitor failed at step \d+ while drawing probelens/saliency/vanilla"
    ):
        tr.fit(LitClassifier(), train, val)
    assert sal.failure_count == 6 and cam.failure_count == 0 and cam.fire_count == 6
    acc = read_events(tr.logger.log_dir)
    assert "probelens/saliency/vanilla" not in acc.Tags()["images"]
    assert [e.value for e in acc.Scalars("probelens/failures/SaliencyMonitor")][-1] == 6


def test_on_the_cpu_pictures_are_drawn_on_the_training_thread_by_default(tmp_path, monkeypatch, drawn_by):
    """No free core for a worker when the model trains on the CPU (measured: benchmarks/RESULTS.md)."""
    monkeypatch.delenv(SYNC_ENV_VAR, raising=False)
    fit(tmp_path, "default")
    assert drawn_by == {"MainThread"}


def test_map_math_done_at_once_as_on_an_accelerator_writes_the_same_bytes(tmp_path, monkeypatch, worker):
    """On an accelerator the maps are normalised, coloured and blended on the training thread, on the device, and only
    the drawing is left to the worker; on the CPU all of it is the worker's. Forced here on the CPU: the same bytes,
    and the blending happens where it should."""
    blended_on = threads_calling(monkeypatch, "overlay_heatmap")

    def run(name, now):
        torch.manual_seed(0)
        train, val = loaders(n=48, batch_size=16)
        ms = [*monitors(), OcclusionMonitor(PROBE, window=8, every_n_steps=1)]
        for m in ms:
            m.writer.map_math_now = now
        tr = trainer(tmp_path / name, ms, max_epochs=2)
        tr.fit(LitClassifier(), train, val)
        return pictures(tr.logger.log_dir)

    deferred = run("deferred", None)
    assert blended_on == {"probelens-images"}
    assert any(tag.startswith("probelens/occlusion/") for tag, _ in deferred)
    blended_on.clear()
    now = run("now", True)
    assert blended_on == {"MainThread"}
    assert len(deferred) >= 40 and now.keys() == deferred.keys()
    assert all(now[key] == deferred[key] for key in deferred), [k for k in deferred if now[k] != deferred[k]][:3]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_the_maps_are_blended_on_the_device_and_drawn_on_the_worker(tmp_path, monkeypatch, drawn_by):
    """The default on an accelerator: map math on the device (training thread), drawing on the worker (the pixels
    against the host path: tests/writing/test_transfer.py)."""
    import probelens.core.grad_cam as grad_cam_core

    monkeypatch.delenv(SYNC_ENV_VAR, raising=False)
    blended: set[tuple[str, str]] = set()
    original = grad_cam_core.overlay_heatmap

    def spy(images, heat, *args, **kwargs):
        blended.add((threading.current_thread().name, heat.device.type))
        return original(images, heat, *args, **kwargs)

    monkeypatch.setattr(grad_cam_core, "overlay_heatmap", spy)
    tr = fit(tmp_path, "cuda", accelerator="gpu")
    assert blended == {("MainThread", "cuda")}
    assert drawn_by == {"probelens-images"}
    written = pictures(tr.logger.log_dir)
    assert any(tag.startswith("probelens/gradcam/") for tag, _ in written)
