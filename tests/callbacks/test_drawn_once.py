"""Nothing drawn twice: a frozen layer's filters once, the Grad-CAM filmstrip at most once per epoch."""

import torch

from lit import LitClassifier, decode, loaders, read_events, trainer
from probelens import FilterMonitor, GradCAMMonitor, ProbeSet


def test_the_filmstrip_is_written_once_per_epoch_and_at_the_end(tmp_path):
    probe = ProbeSet(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1]))
    train, val = loaders(n=48, batch_size=16)  # 3 batches per epoch
    monitor = GradCAMMonitor(probe, layers="all", every_n_steps=1, filmstrip_frames=16)
    tr = trainer(tmp_path, [monitor], max_epochs=2)
    tr.fit(LitClassifier(), train, val)
    acc = read_events(tr.logger.log_dir)
    grids = [e.step for e in acc.Images("probelens/gradcam/model.8")]
    assert grids == [0, 1, 2, 3, 4, 5]  # a grid at every firing (log steps run one behind global_step)
    strips = acc.Images("probelens/gradcam_filmstrip/model.8")
    # the first firing of each epoch, then the last firing's step when training ends: its strip holds every frame
    assert [e.step for e in strips] == [0, 3, 5]
    widths = [decode(e).shape[1] for e in strips]
    assert widths[0] < widths[1] < widths[2]
    assert [s for s, _ in monitor._frames] == grids  # every firing's frame is kept (16 at most)


def test_a_frozen_layer_s_filters_are_drawn_once(tmp_path):
    model = LitClassifier()
    model.model[0].requires_grad_(False)  # the first conv never changes
    train, val = loaders(n=32, batch_size=16)
    tr = trainer(tmp_path, [FilterMonitor(every_n_steps=1)], max_epochs=2)
    tr.fit(model, train, val)
    acc = read_events(tr.logger.log_dir)
    assert [e.step for e in acc.Images("probelens/filters/model.0")] == [0]
    assert [e.step for e in acc.Images("probelens/filters/model.8")] == [0, 1, 2, 3]
