"""probelens' own event file next to a TensorBoardLogger's: read back by TensorBoard's reader, its Python
``EventAccumulator`` and a real ``tensorboard`` server (Rust data server and Python loader), during and after a run
and across a resume."""

from __future__ import annotations

import io
import os

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from tb_server import tensorboard
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, TENSORS, EventAccumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow
from torch.utils.tensorboard import summary as torch_summary

from lit import LitClassifier, loaders
from probelens.logs import load_run
from probelens.writing import event_file
from probelens.writing.event_file import EventFileWriter, masked_crc32c

RUN = "tb/version_0"


def png(step: int, size: int = 8) -> bytes:
    """A small PNG whose pixels (and so bytes) differ per step."""
    g = torch.Generator().manual_seed(step)
    pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def records(path: str) -> list[event_pb2.Event]:
    """Every record of ``path`` through TensorBoard's own record reader, which checks both CRCs of each record."""
    reader = pywrap_tensorflow.PyRecordReader_New(path)
    out = []
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return out
        out.append(event_pb2.Event.FromString(reader.record()))


def own_files(run_dir: str) -> list[str]:
    return sorted(os.path.join(run_dir, f) for f in os.listdir(run_dir) if ".probelens" in f)


# -- the file itself ------------------------------------------------------------------------------------------


def test_no_file_before_the_first_write_then_one_tensorboard_recognises(tmp_path):
    writer = EventFileWriter(tmp_path / "run")
    assert writer.path is None and not (tmp_path / "run").exists()
    writer.add_image("a", png(0), 8, 8, step=0)
    writer.close()
    (name,) = os.listdir(tmp_path / "run")
    assert "tfevents" in name and name.endswith(".probelens")
    from tensorboard.backend.event_processing.io_wrapper import IsSummaryEventsFile

    assert IsSummaryEventsFile(str(tmp_path / "run" / name))


def test_records_pass_tensorboards_crc_check_and_hold_the_png_as_given(tmp_path):
    writer = EventFileWriter(tmp_path)
    pngs = {step: png(step, size=64) for step in (0, 3, 7)}
    for step, data in pngs.items():
        writer.add_image("probelens/gradcam/layer", data, 64, 64, step=step, wall_time=100.0 + step)
    writer.close()
    (path,) = own_files(str(tmp_path))
    events = records(path)
    assert events[0].file_version == "brain.Event:2" and not events[0].HasField("summary")
    images = [(e.step, e.wall_time, e.summary.value[0]) for e in events[1:]]
    assert [(s, w) for s, w, _ in images] == [(0, 100.0), (3, 103.0), (7, 107.0)]
    for step, _, value in images:
        assert value.tag == "probelens/gradcam/layer"
        assert value.image.encoded_image_string == pngs[step]
        assert (value.image.height, value.image.width, value.image.colorspace) == (64, 64, 3)


def test_a_corrupted_byte_is_caught_by_tensorboards_reader(tmp_path):
    """The CRC check above can fail: flip one byte of the PNG payload and TensorBoard's reader refuses the record."""
    writer = EventFileWriter(tmp_path)
    writer.add_image("a", png(1, size=32), 32, 32, step=1)
    writer.close()
    (path,) = own_files(str(tmp_path))
    with open(path, "r+b") as fh:
        data = bytearray(fh.read())
        data[-40] ^= 0xFF
        fh.seek(0)
        fh.write(bytes(data))
    with pytest.raises(errors.DataLossError):
        records(path)


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 255, 4096, 100_003])
def test_the_checksum_equals_tensorboards_with_and_without_the_c_code(monkeypatch, size):
    data = os.urandom(size)
    assert masked_crc32c(data) == pywrap_tensorflow.masked_crc32c(data)
    monkeypatch.setattr(event_file, "_CRC32C", None)  # google_crc32c's C extension missing
    assert masked_crc32c(data) == pywrap_tensorflow.masked_crc32c(data)


def test_the_c_checksum_is_used_here():
    assert event_file.FAST_CRC, "google_crc32c's C extension is a declared dependency and should load"


def test_text_has_summary_writers_layout_under_the_tag_as_given(tmp_path):
    writer = EventFileWriter(tmp_path)
    writer.add_text("shortcut/alert", "**background** ü", step=5)
    writer.close()
    (path,) = own_files(str(tmp_path))
    ours = records(path)[1].summary.value[0]
    theirs = torch_summary.text("shortcut/alert", "**background** ü").value[0]
    assert ours.tag == "shortcut/alert" and theirs.tag == "shortcut/alert/text_summary"
    assert ours.metadata == theirs.metadata and ours.tensor == theirs.tensor
    acc = EventAccumulator(str(tmp_path), size_guidance={TENSORS: 0})
    acc.Reload()
    (event,) = acc.Tensors("shortcut/alert")
    assert event.step == 5 and event.tensor_proto.string_val == ["**background** ü".encode()]


def test_two_writers_in_one_directory_and_two_runs_do_not_clash(tmp_path):
    a, b = EventFileWriter(tmp_path / "run"), EventFileWriter(tmp_path / "run")
    other = EventFileWriter(tmp_path / "other")
    for step in range(6):  # interleaved, all opened in the same second
        a.add_image("a", png(step), 8, 8, step)
        b.add_image("b", png(100 + step), 8, 8, step)
        other.add_image("a", png(200 + step), 8, 8, step)
    for w in (a, b, other):
        w.close()
    assert a.path is None and len(own_files(str(tmp_path / "run"))) == len(os.listdir(tmp_path / "run")) == 2
    acc = load_run(tmp_path / "run")
    assert [e.encoded_image_string for e in acc.Images("a")] == [png(s) for s in range(6)]
    assert [e.encoded_image_string for e in acc.Images("b")] == [png(100 + s) for s in range(6)]
    acc = load_run(tmp_path / "other")
    assert acc.Tags()["images"] == ["a"]
    assert [e.encoded_image_string for e in acc.Images("a")] == [png(200 + s) for s in range(6)]


def test_a_write_after_close_starts_a_new_file(tmp_path):
    writer = EventFileWriter(tmp_path)
    writer.add_scalar("cost_ms", 1.5, step=0)
    first = writer.path
    writer.close()
    writer.close()  # idempotent
    writer.add_scalar("cost_ms", 2.5, step=1)
    writer.flush()
    assert writer.path not in (None, first)
    acc = load_run(tmp_path)  # read while the second file is still open: flush() made it visible
    assert [(e.step, e.value) for e in acc.Scalars("cost_ms")] == [(0, 1.5), (1, 2.5)]
    writer.close()


def test_a_suffix_with_a_path_separator_is_refused(tmp_path):
    with pytest.raises(ValueError, match="path separator"):
        EventFileWriter(tmp_path, filename_suffix="x/y")


# -- next to a real Lightning run -----------------------------------------------------------------------------


class WritesImages(pl.Callback):
    """Writes a PNG per training step to its own event file while Lightning logs ``train_loss`` to the logger's;
    every ``reload_every`` steps it reloads the given live readers and records what they see."""

    def __init__(self, live: dict[str, object] | None = None, reload_every: int = 4) -> None:
        self.writer: EventFileWriter | None = None
        self.live = live or {}
        self.reload_every = reload_every
        self.seen: dict[str, list[tuple[int, int, int]]] = {name: [] for name in self.live}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.writer is None:
            trainer.logger.experiment  # noqa: B018 (the logger's own file exists first, so ours sorts after it)
            self.writer = EventFileWriter(trainer.logger.log_dir)
        step = trainer.global_step
        self.writer.add_image("probelens/img", png(step), 8, 8, step)
        self.writer.flush()
        trainer.logger.experiment.flush()
        if step % self.reload_every == 0:
            for name, acc in self.live.items():
                acc.Reload()  # type: ignore[attr-defined]
                self.seen[name].append((step, *_last_steps(acc)))

    def teardown(self, trainer, pl_module, stage):
        if self.writer is not None:
            self.writer.close()


def _last_steps(acc) -> tuple[int, int]:
    """(last image step, last train_loss step) an accumulator holds, -1 where none."""
    if isinstance(acc, EventAccumulator):
        tags = acc.Tags()
        img = acc.Images("probelens/img")[-1].step if "probelens/img" in tags["images"] else -1
        loss = acc.Scalars("train_loss")[-1].step if "train_loss" in tags["scalars"] else -1
        return img, loss
    tensors = acc.Tags()["tensors"]
    img = acc.Tensors("probelens/img")[-1].step if "probelens/img" in tensors else -1
    loss = acc.Tensors("train_loss")[-1].step if "train_loss" in tensors else -1
    return img, loss


def fit(root, callback, max_epochs, ckpt_path=None, checkpoint=False):
    train, _ = loaders(n=64, batch_size=8)  # 8 steps per epoch
    callbacks = [callback]
    if checkpoint:
        callbacks.append(ModelCheckpoint(dirpath=os.path.join(root, "ckpt"), save_last=True))
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=TensorBoardLogger(str(root), name="tb", version=0),
        callbacks=callbacks,
        enable_checkpointing=checkpoint,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        default_root_dir=str(root),
    )
    torch.manual_seed(0)
    trainer.fit(LitClassifier(), train, ckpt_path=ckpt_path)
    return trainer


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """A Lightning run (2 epochs, 16 steps), then a second process-like session resuming it into the same version
    directory for 2 more epochs: four event files, two the logger's, two ours, steps interleaved within each pair."""
    root = tmp_path_factory.mktemp("resumed")
    fit(root, WritesImages(), max_epochs=2, checkpoint=True)
    fit(root, WritesImages(), max_epochs=4, ckpt_path=os.path.join(root, "ckpt", "last.ckpt"), checkpoint=True)
    return root


def _expected(root):
    run_dir = os.path.join(root, RUN)
    assert len(own_files(run_dir)) == 2
    assert len([f for f in os.listdir(run_dir) if "tfevents" in f]) == 4
    return run_dir, list(range(1, 33)), list(range(32))  # image steps (after each step), train_loss steps


def test_after_a_resumed_run_the_python_reader_has_every_image_and_scalar_at_its_step(resumed_run):
    run_dir, image_steps, loss_steps = _expected(resumed_run)
    # default settings but for the reservoir sizes (EventAccumulator keeps 4 images per tag by default)
    acc = EventAccumulator(run_dir, size_guidance={IMAGES: 0, SCALARS: 0})
    acc.Reload()
    assert acc.purge_orphaned_data
    images = acc.Images("probelens/img")
    assert [e.step for e in images] == image_steps
    assert [e.encoded_image_string for e in images] == [png(s) for s in image_steps]
    assert [e.step for e in acc.Scalars("train_loss")] == loss_steps


def _server_reads_everything(server, image_steps, loss_steps):
    def images(s):
        listing = s.json("/data/plugin/images/images", run=RUN, tag="probelens/img")
        return listing if [e["step"] for e in listing] == image_steps else None

    listing = server.wait_for(images)
    for entry in (listing[0], listing[-1]):  # the bytes served are the bytes written
        data = server.get("/data/plugin/images/individualImage?" + entry["query"])
        assert data == png(entry["step"])
    scalars = server.wait_for(lambda s: s.json("/data/plugin/scalars/scalars", run=RUN, tag="train_loss"))
    assert [int(step) for _, step, _ in scalars] == loss_steps
    return {(e["step"], e["wall_time"]) for e in listing}, [(int(st), v) for _, st, v in scalars]


@pytest.mark.parametrize("flags", [("--load_fast=true",), ("--load_fast=false",)], ids=["rust", "python"])
def test_a_tensorboard_server_serves_every_image_and_scalar_of_the_resumed_run(resumed_run, flags):
    run_dir, image_steps, loss_steps = _expected(resumed_run)
    with tensorboard(str(resumed_run), "--samples_per_plugin", "images=1000,scalars=1000", *flags) as server:
        assert server.json("/data/runs") == [RUN]
        served_images, served_scalars = _server_reads_everything(server, image_steps, loss_steps)
    acc = load_run(run_dir)  # the server and probelens' reader agree
    assert served_images == {(e.step, e.wall_time) for e in acc.Images("probelens/img")}
    scalars = acc.Scalars("train_loss")
    assert [step for step, _ in served_scalars] == [e.step for e in scalars]
    assert [value for _, value in served_scalars] == pytest.approx([e.value for e in scalars])


def test_while_the_run_goes_on_readers_that_poll_every_file_follow_both(tmp_path):
    """One accumulator reloaded during the run: the multi-file loader (what ``--reload_multifile`` and the Rust
    data server do) sees every new image and scalar; the default Python one follows only the last file in name
    order (DirectoryWatcher), ours: it keeps seeing the images, but the logger's scalars stop at the switch."""
    run_dir = tmp_path / RUN
    run_dir.mkdir(parents=True)
    live = {
        "legacy": EventAccumulator(str(run_dir), size_guidance={IMAGES: 0, SCALARS: 0}),
        "multifile": plugin_event_accumulator.EventAccumulator(
            str(run_dir), size_guidance={TENSORS: 0}, event_file_active_filter=lambda wall_time: True
        ),
    }
    callback = WritesImages(live)
    fit(tmp_path, callback, max_epochs=2)
    steps = [s for s, _, _ in callback.seen["multifile"]]
    assert steps == [4, 8, 12, 16]
    # the scalar of the step that just ended is logged after on_train_batch_end, so the latest is step - 2
    assert callback.seen["multifile"] == [(s, s, s - 2) for s in steps]
    legacy = callback.seen["legacy"]
    assert [img for _, img, _ in legacy] == steps
    assert len({loss for _, _, loss in legacy}) == 1, f"documented DirectoryWatcher behaviour changed: {legacy}"


def test_a_live_rust_server_follows_both_files(tmp_path):
    """The default ``tensorboard --logdir`` (Rust data server) polled during the run shows each new image and
    scalar."""
    seen: list[tuple[int, int, int]] = []

    class Polls(WritesImages):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            step = trainer.global_step
            if step % 4:
                return

            def latest(s):
                img = s.json("/data/plugin/images/images", run=RUN, tag="probelens/img")[-1]["step"]
                loss = int(s.json("/data/plugin/scalars/scalars", run=RUN, tag="train_loss")[-1][1])
                return (img, loss) if img >= step and loss >= step - 2 else None

            seen.append((step, *server.wait_for(latest, timeout=30)))

    (tmp_path / RUN).mkdir(parents=True)
    with tensorboard(str(tmp_path), "--load_fast=true") as server:
        fit(tmp_path, Polls(), max_epochs=1)
    assert seen == [(4, 4, 2), (8, 8, 6)]
