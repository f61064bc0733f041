"""A long run: 1000 log steps with memory, tensor count and event-file growth measured."""

import gc
import os

import torch
from torch.utils.data import DataLoader

from lit import LitClassifier, random_data, read_events, trainer
from probelens import GradCAMMonitor, ProbeSet, SaliencyMonitor


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_tensors() -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def test_thousand_log_steps_keep_memory_and_tensors_flat(tmp_path):
    probe = ProbeSet.from_dataset(random_data(16, size=(12, 12), seed=2), num_samples=2)
    samples: dict[int, tuple[int, int]] = {}

    class Sampler(GradCAMMonitor):
        def explain(self, step, pl_module, trainer):
            super().explain(step, pl_module, trainer)
            if step in (199, 999):  # Lightning's log steps 0..999
                gc.collect()
                samples[step] = (rss_bytes(), live_tensors())

    monitors = [
        Sampler(probe, layers="last", every_n_steps=1, filmstrip=True, max_images=2),
        SaliencyMonitor(probe, methods="vanilla", every_n_steps=1, max_images=2),
    ]
    data = DataLoader(random_data(16, size=(12, 12)), batch_size=16)
    tr = trainer(tmp_path, monitors, max_epochs=-1, max_steps=1000, limit_val_batches=0, log_every_n_steps=1000)
    tr.fit(LitClassifier(), data)
    assert all(m.fire_count == 1000 and m.failure_count == 0 for m in monitors)
    (rss_200, tensors_200), (rss_1000, tensors_1000) = samples[199], samples[999]
    # 800 log steps later: no hook, graph or cache growth. The only history is the filmstrip's, bounded at
    # 4 x filmstrip_frames = 64 frames; a leak of one tensor per log step would add 800.
    assert tensors_1000 - tensors_200 < 80, (tensors_200, tensors_1000)
    assert rss_1000 - rss_200 < 40 * 2**20, (rss_200, rss_1000)
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    per_step = sum(e.stat().st_size for e in events) / 1000
    # three images per step (Grad-CAM grid, filmstrip, saliency grid) of two 12x12 probe images, plus scalars
    print(
        f"soak: rss {rss_200 / 2**20:.1f} -> {rss_1000 / 2**20:.1f} MiB, tensors {tensors_200} -> {tensors_1000}, "
        f"event bytes per log step {per_step:.0f}"
    )
    assert per_step < 60_000, per_step
    acc = read_events(tr.logger.log_dir)
    assert len(acc.Images("probelens/gradcam/model.8")) == 1000
    # the filmstrip holds the whole history: written when it would show a new frame slot (and at the end), not at
    # each of the 1000 one-step epochs
    strips = [e.step for e in acc.Images("probelens/gradcam_filmstrip/model.8")]
    assert 16 <= len(strips) <= 100 and strips[-1] == 999, strips
