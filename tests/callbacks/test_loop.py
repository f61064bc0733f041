"""probelens.loop.Lens: the monitors in a plain PyTorch loop and in a Lightning Fabric loop, with the same pictures
and tags as the same monitors on a Trainer."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lit import LitClassifier, decode, random_data, read_events, trainer
from probelens import ActivationMonitor, GradCAMMonitor, ProbeSet, SaliencyMonitor, ShortcutMonitor
from probelens.loop import Lens

pytestmark = pytest.mark.integration


def _probe() -> ProbeSet:
    data = random_data(16, seed=3)
    return ProbeSet(data.tensors[0][:8], data.tensors[1][:8])


def _monitors(probe: ProbeSet) -> list:
    every = {"every_n_steps": 2}
    return [
        GradCAMMonitor(probe, layers="all", filmstrip=False, **every),
        SaliencyMonitor(probe, **every),
        ActivationMonitor(probe, **every),
    ]


def _pictures(log_dir) -> dict[str, list]:
    """tag -> decoded pictures in step order (the architecture table and text left out)."""
    acc = read_events(log_dir)
    return {
        tag: [decode(e) for e in sorted(acc.Images(tag), key=lambda e: e.step)]
        for tag in acc.Tags()["images"]
        if tag.startswith("probelens/") and "architecture" not in tag
    }


def test_a_plain_loop_writes_the_same_pictures_and_tags_as_the_trainer(tmp_path):
    from lightning_fabric.loggers import TensorBoardLogger

    data = random_data(32, seed=0)

    # the Trainer
    torch.manual_seed(0)
    lit = LitClassifier()
    t = trainer(tmp_path / "trainer", _monitors(_probe()), max_steps=4, max_epochs=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(lit, DataLoader(data, batch_size=8))
    want = _pictures(t.log_dir)

    # the same model, data and optimizer in a loop of our own
    torch.manual_seed(0)
    plain = LitClassifier()
    optimizer = plain.configure_optimizers()
    logger = TensorBoardLogger(str(tmp_path / "loop"), name="run")
    lens = Lens(_monitors(_probe()), logger)
    for step, (x, y) in enumerate(DataLoader(data, batch_size=8), start=1):
        loss = F.cross_entropy(plain(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lens.step(plain, step)
    lens.close(plain)
    got = _pictures(logger.log_dir)

    for name, p in lit.named_parameters():  # the loops trained alike, so the pictures must be alike
        assert torch.equal(p, dict(plain.named_parameters())[name]), name
    assert sorted(got) == sorted(want)
    assert len(want) >= 5
    for tag in want:
        assert len(got[tag]) == len(want[tag]) == 2, tag  # fired at the 2nd and 4th optimizer step
        for a, b in zip(got[tag], want[tag], strict=True):
            assert a.shape == b.shape and (a == b).all(), tag


def test_a_fabric_loop_with_an_alert_that_stops_it(tmp_path):
    from lightning_fabric import Fabric
    from lightning_fabric.loggers import TensorBoardLogger

    fabric = Fabric(accelerator="cpu", devices=1, loggers=TensorBoardLogger(str(tmp_path), name="fabric"))
    torch.manual_seed(0)
    model = LitClassifier().model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model, optimizer = fabric.setup(model, optimizer)
    probe = _probe()
    masks = torch.zeros(len(probe), 1, 16, 16, dtype=torch.bool)
    masks[:, :, 4:12, 4:12] = True  # an object in the middle
    probe = ProbeSet(probe.images, probe.targets, masks=masks)
    shortcut = ShortcutMonitor(probe, every_n_epochs=1, on_shortcut="stop", threshold=0.01, patience=1)
    lens = Lens([GradCAMMonitor(probe, every_n_steps=2), shortcut], fabric.logger, is_global_zero=fabric.is_global_zero)
    loader = fabric.setup_dataloaders(DataLoader(random_data(32, seed=0), batch_size=8))
    step, epochs = 0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(5):
            for x, y in loader:
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                fabric.backward(loss)
                optimizer.step()
                step += 1
                lens.step(model, step)
            lens.epoch_end(model, epoch)
            epochs += 1
            if lens.should_stop:
                break
    lens.close(model)
    acc = read_events(fabric.logger.log_dir)
    grad_cam = [t for t in acc.Tags()["images"] if t.startswith("probelens/gradcam/")]
    assert grad_cam and [e.step for e in acc.Images(grad_cam[0])][:2] == [2, 4]
    assert "shortcut/score" in acc.Tags()["scalars"]
    assert lens.should_stop == (epochs < 5)  # the alert (a threshold every model passes) stopped the loop
    assert epochs < 5


def test_state_dict_resumes_the_monitors_and_bad_input_is_refused(tmp_path):
    from lightning_fabric.loggers import TensorBoardLogger

    probe = _probe()
    model = LitClassifier()
    lens = Lens([GradCAMMonitor(probe, every_n_steps=1)], TensorBoardLogger(str(tmp_path), name="a"))
    for step in (1, 2):
        lens.step(model, step)
    state = lens.state_dict()
    lens.close(model)
    (key,) = state
    assert state[key]["fire_count"] == 2

    again = Lens([GradCAMMonitor(probe, every_n_steps=1)], TensorBoardLogger(str(tmp_path), name="a", version=0))
    again.load_state_dict(state)
    again.step(model, 2)  # a step already written is not written twice
    again.step(model, 3)
    assert again.monitors[0].state.fire_count == 3
    again.close(model)

    with pytest.raises(ValueError, match="has no probe set; without a Trainer"):
        Lens([GradCAMMonitor()], log_dir=str(tmp_path))
    with pytest.raises(TypeError, match="Lens takes probelens monitors"):
        Lens([object()], log_dir=str(tmp_path))  # type: ignore[list-item]
    with pytest.raises(ValueError, match="needs at least one monitor"):
        Lens([], log_dir=str(tmp_path))
    with pytest.raises(ValueError, match="give log_dir="):
        Lens([GradCAMMonitor(probe)])
    with pytest.raises(ValueError, match="global_step must be an integer >= 0, got -1"):
        Lens([GradCAMMonitor(probe)], log_dir=str(tmp_path)).step(model, -1)
