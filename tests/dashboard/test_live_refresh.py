"""The dashboard follows a run while it trains: the logger's scalars (one event file) and probelens' pictures (its
own file, which sorts after the logger's) both stay current, although TensorBoard's reloaded EventAccumulator would
follow only the last file; each pass reads only the bytes appended since the last."""

import io

import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

from probelens.dashboard.index import RunIndex
from probelens.render import encode_png
from probelens.writing.event_file import EventFileWriter


def _png() -> bytes:
    return encode_png(torch.full((3, 8, 8), 128, dtype=torch.uint8))


def test_scalars_of_the_earlier_file_keep_coming_after_pictures_appear(tmp_path):
    logger = SummaryWriter(str(tmp_path))  # the logger's file first, as Lightning's logger creates it
    pictures = EventFileWriter(tmp_path)
    index = RunIndex(tmp_path.parent, tmp_path)
    for step in range(6):
        logger.add_scalar("shortcut/score", step / 10, step)
        logger.flush()
        if step % 2 == 0:
            pictures.add_image("probelens/gradcam/model.8", _png(), 8, 8, step)
            pictures.flush()
        assert index.refresh() is True
        summary = index.summary()
        assert [s for s, _ in summary["scalars"]["shortcut/score"]] == list(range(step + 1)), step
        assert [e["step"] for e in summary["pictures"][0]["entries"]] == list(range(0, step + 1, 2)), step
    assert Image.open(io.BytesIO(index.image("probelens/gradcam/model.8", 4))).size == (8, 8)
    logger.close()
    pictures.close()


def test_each_pass_reads_only_what_was_appended(tmp_path):
    logger = SummaryWriter(str(tmp_path))
    index = RunIndex(tmp_path.parent, tmp_path)
    logger.add_scalar("shortcut/score", 0.5, 0)
    logger.flush()
    index.refresh()
    (follower,) = index._followers.values()
    read_up_to = follower.offset
    assert read_up_to == follower.path.stat().st_size
    assert index.refresh() is False  # nothing appended: nothing read, nothing changed
    logger.add_scalar("shortcut/score", 0.25, 1)
    logger.flush()
    assert index.refresh() is True
    assert follower.offset == follower.path.stat().st_size > read_up_to
    assert index.summary()["scalars"]["shortcut/score"] == [[0, 0.5], [1, 0.25]]
    logger.close()
