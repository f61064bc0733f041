"""The write path: a monitor hands its pictures, texts and scalars to its writer as values; the writer keeps a firing's
records until the firing has succeeded and writes them on the training thread, so a failed firing writes nothing of
its step, a failing sink is counted like any failed firing, and a sink that cannot take a grid's facts is refused at
setup. The run's shared state lives on the monitors, not in module globals."""

from __future__ import annotations

import gc
import types
import weakref

import pytest
import torch

import probelens
from lit import LitClassifier, loaders, read_events, trainer
from probelens import GradCAMMonitor, ProbeSet, SaliencyMonitor
from probelens.core.writer import MonitorWriter, Picture, Scalars, Text
from probelens.logformat import NO_FACTS, Cell, GridFacts

PROBE = ProbeSet(torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 0, 1]))


class MemorySink:
    """A sink that keeps what it is given (the protocol's two methods, nothing else)."""

    def __init__(self) -> None:
        self.images: list[tuple[str, int, tuple[int, ...], GridFacts]] = []
        self.texts: list[tuple[str, str, int]] = []

    def add_image(self, tag, image, step, facts=NO_FACTS):
        self.images.append((tag, step, tuple(image.shape), facts))
        return 100

    def add_text(self, tag, text, step):
        self.texts.append((tag, text, step))


class ScalarLogger:
    def __init__(self) -> None:
        self.rows: list[tuple[dict, int]] = []

    def log_metrics(self, metrics, step):
        self.rows.append((dict(metrics), step))


def test_a_firing_is_written_only_when_committed_in_the_order_handed_over():
    writer, sink, logger = MonitorWriter("M", True, max_image_side=None), MemorySink(), ScalarLogger()
    writer.attach(sink, PROBE, [logger])
    writer.begin("fit", 3)
    writer.open()
    image = torch.zeros(3, 8, 16, dtype=torch.uint8)
    writer.picture(Picture.grid("probelens/x/a", 3, image, [(0, 0, 8, 8), (8, 0, 16, 8)], shown=[2, 0]))
    writer.text("probelens/x/t", "hello", 3)
    writer.scalars({"probelens/x/s": 1.0}, 3)
    assert sink.images == [] and sink.texts == [] and logger.rows == []  # held until the firing commits
    assert writer.commit() == 100
    (tag, step, shape, facts) = sink.images[0]
    assert (tag, step, shape) == ("probelens/M/x/a", 3, (3, 8, 16))  # the monitor's name enters the tag
    assert facts.cells == (Cell(2, 0, 0, 8, 8), Cell(0, 8, 0, 16, 8)) and facts.probe == PROBE.fingerprint()
    assert sink.texts == [("probelens/M/x/t", "hello", 3)] and logger.rows == [({"probelens/M/x/s": 1.0}, 3)]

    writer.begin("validate", 4)
    writer.open()
    writer.picture(Picture("probelens/x/a", 4, image))
    writer.discard()  # a failed firing: nothing of it is written
    assert len(sink.images) == 1
    writer.picture(Picture("probelens/x/a", 4, image))  # outside a firing: written at once, under the stage
    assert sink.images[-1][0] == "validate/probelens/M/x/a" and sink.images[-1][3] == NO_FACTS


def test_a_grid_with_more_boxes_than_its_probe_images_is_refused():
    image = torch.zeros(3, 8, 24, dtype=torch.uint8)
    with pytest.raises(ValueError, match="3 cell boxes for 1 probe images x 2 per image"):
        Picture.grid("t", 0, image, [(0, 0, 8, 8)] * 3, shown=[1], per_probe=2)


def test_records_are_values():
    picture = Picture("t", 1, torch.zeros(1, 2, 2, dtype=torch.uint8))
    with pytest.raises(AttributeError):
        picture.tag = "other"  # type: ignore[misc]
    assert Text("t", 1, "x") == Text("t", 1, "x") and Scalars({"a": 1.0}, 2).named


class FailsAtStep(GradCAMMonitor):
    """Grad-CAM that fails after it handed over its pictures, at one step."""

    fail_at = 3

    def explain(self, step, pl_module, trainer):
        super().explain(step, pl_module, trainer)
        if step == self.fail_at:
            raise RuntimeError("the explanation broke after drawing")


def test_a_failed_firing_writes_nothing_of_its_step_warns_once_and_training_goes_on(tmp_path):
    failing = FailsAtStep(PROBE, layers="last", every_n_steps=1, name="cam")
    other = SaliencyMonitor(PROBE, methods="vanilla", every_n_steps=1)
    train, val = loaders(n=48, batch_size=16)
    tr = trainer(tmp_path, [failing, other], max_epochs=2)
    with pytest.warns(UserWarning, match=r"cam failed at step 3 and was skipped \(RuntimeError: the explanation broke"):
        tr.fit(LitClassifier(), train, val)
    assert (failing.fire_count, failing.failure_count) == (5, 1) and (other.fire_count, other.failure_count) == (6, 0)
    acc = read_events(tr.logger.log_dir)
    cam_tags = [t for t in acc.Tags()["images"] if t.startswith("probelens/cam/")]
    assert cam_tags
    for tag in cam_tags:  # the failed step wrote none of the pictures it had handed over
        assert 3 not in [e.step for e in acc.Images(tag)], tag
    assert [e.step for e in acc.Images("probelens/saliency/vanilla")] == [0, 1, 2, 3, 4, 5]
    assert [(e.step, e.value) for e in acc.Scalars("probelens/failures/cam")] == [(3, 1.0)]


class BrokenSink(MemorySink):
    def add_image(self, tag, image, step, facts=NO_FACTS):
        raise OSError("no space left on device")


def test_a_sink_failing_while_writing_is_a_failed_firing_and_training_goes_on(tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    class DiskLogger(CSVLogger):
        pass

    def factory(logger):
        return BrokenSink() if isinstance(logger, DiskLogger) else None

    probelens.register_sink(factory)
    try:
        cam = GradCAMMonitor(PROBE, layers="last", every_n_steps=1, filmstrip=False)
        train, val = loaders(n=48, batch_size=16)
        tr = trainer(tmp_path, [cam], logger=DiskLogger(tmp_path), max_epochs=1)
        with pytest.warns(UserWarning, match=r"GradCAMMonitor failed at step 0 and was skipped \(OSError: no space"):
            tr.fit(LitClassifier(), train, val)
    finally:
        probelens.unregister_sink(factory)
    assert (cam.fire_count, cam.failure_count) == (0, 3)  # each of the 3 steps


class CrashAt(LitClassifier):
    def training_step(self, batch, batch_idx):
        if self.global_step == 4:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)


def test_pictures_written_before_a_crash_are_on_disk(tmp_path):
    train, val = loaders(n=48, batch_size=16)
    tr = trainer(tmp_path, [GradCAMMonitor(PROBE, layers="last", every_n_steps=1)], max_epochs=3)
    with pytest.raises(RuntimeError, match="boom"):
        tr.fit(CrashAt(), train, val)
    acc = read_events(tr.logger.log_dir)
    assert [e.step for e in acc.Images("probelens/gradcam/model.8")] == [0, 1, 2, 3]  # every firing before it


def test_a_sink_that_cannot_take_a_grids_facts_is_refused_when_fit_starts(tmp_path):
    class OldSink:
        def add_image(self, tag, image, step):
            pass

        def add_text(self, tag, text, step):
            pass

    def factory(logger):
        return OldSink()

    probelens.register_sink(factory)
    try:
        train, val = loaders(n=48, batch_size=16)
        tr = trainer(tmp_path, [GradCAMMonitor(PROBE, layers="last")], max_epochs=1)
        with pytest.raises(TypeError, match=r"OldSink .* does not take a fourth argument, facts .* define add_image"):
            tr.fit(LitClassifier(), train, val)
    finally:
        probelens.unregister_sink(factory)


def _weak_key_maps(module: types.ModuleType) -> list[str]:
    return [name for name, value in vars(module).items() if isinstance(value, weakref.WeakKeyDictionary)]


def test_the_run_lives_on_its_monitors_not_in_module_globals(tmp_path):
    import importlib
    import pkgutil

    import probelens.core

    for info in pkgutil.iter_modules(probelens.core.__path__):
        module = importlib.import_module(f"probelens.core.{info.name}")
        assert not _weak_key_maps(module), (module.__name__, _weak_key_maps(module))

    train, val = loaders(n=32, batch_size=16)
    first = [GradCAMMonitor(PROBE, layers="last"), SaliencyMonitor(PROBE, methods="vanilla")]
    tr = trainer(tmp_path / "a", first, max_epochs=1)
    tr.fit(LitClassifier(), train, val)
    second = [GradCAMMonitor(PROBE, layers="last")]
    trainer(tmp_path / "b", second, max_epochs=1).fit(LitClassifier(), train, val)
    assert first[0]._run is first[1]._run  # one run per Trainer, shared by its monitors
    assert second[0]._run is not first[0]._run
    run = weakref.ref(first[0]._run)
    del first, tr
    gc.collect()
    assert run() is None  # freed with its Trainer and monitors
