"""PNG writing: ``encode_png`` (Pillow) and ``TensorBoardSink`` writing the encoded bytes straight into the event file.
Every image must decode to exactly its pixels."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from probelens.render import encode_png, save_png


def _decode(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image)


def _gallery() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8, generator=g)
    flat = torch.zeros(3, 40, 60, dtype=torch.uint8)
    flat[0, :, 20:] = 200
    flat[2, 10:30] = 90
    tiles = torch.randint(0, 256, (3, 6, 8), dtype=torch.uint8, generator=g)
    upscaled = tiles.repeat_interleave(16, dim=1).repeat_interleave(16, dim=2)  # nearest-neighbour tiles
    ramp = (torch.randint(0, 256, (1, 1, 64), generator=g) + torch.arange(70)[None, :, None]) % 256
    drifting = ramp.expand(3, 70, 64).to(torch.uint8).contiguous()
    big = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8, generator=g)
    big = big.repeat_interleave(90, dim=1).repeat_interleave(70, dim=2)  # 720x560x3 > the whole-image trial size
    big_drift = ((torch.arange(400)[:, None] + torch.randint(0, 256, (1, 300), generator=g)) % 256).to(torch.uint8)
    return {
        "noise": noise,
        "flat": flat,
        "upscaled": upscaled,
        "drifting": drifting,
        "big": big,
        "big_drifting": big_drift.expand(3, -1, -1),  # a stride-0 view: must be made contiguous
        "one_pixel": torch.tensor([[[7]], [[8]], [[9]]], dtype=torch.uint8),
        "one_column": torch.randint(0, 256, (3, 50, 1), dtype=torch.uint8, generator=g),
        "one_row": torch.randint(0, 256, (3, 1, 50), dtype=torch.uint8, generator=g),
        "transposed": noise.transpose(1, 2),  # non-contiguous
    }


@pytest.mark.parametrize("name", list(_gallery()))
def test_rgb_images_decode_to_their_pixels(name: str) -> None:
    image = _gallery()[name]
    data = encode_png(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = _decode(data)
    assert decoded.shape == (image.shape[1], image.shape[2], 3)
    assert np.array_equal(decoded, image.permute(1, 2, 0).numpy())


@pytest.mark.parametrize("shape", [(1, 23, 31), (23, 31)])
def test_grayscale_decodes_as_mode_l(shape: tuple[int, ...]) -> None:
    image = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    data = encode_png(image)
    assert Image.open(io.BytesIO(data)).mode == "L"
    assert np.array_equal(_decode(data), image.reshape(23, 31).numpy())


def test_batched_single_image_and_compress_levels() -> None:
    image = _gallery()["upscaled"]
    for level in (0, 1, 6, 9):
        assert np.array_equal(_decode(encode_png(image[None], compress_level=level)), image.permute(1, 2, 0).numpy())
    assert len(encode_png(image, compress_level=0)) > len(encode_png(image, compress_level=9))


@pytest.mark.parametrize(
    ("image", "kwargs"),
    [
        (torch.zeros(3, 4, 4), {}),  # float
        (torch.zeros(4, 4, 4, dtype=torch.uint8), {}),  # 4 channels
        (torch.zeros(3, 0, 4, dtype=torch.uint8), {}),  # empty
        (torch.zeros(3, 4, 4, dtype=torch.uint8), {"compress_level": 10}),
    ],
)
def test_bad_input_is_rejected(image: torch.Tensor, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        encode_png(image, **kwargs)


def test_save_png_writes_the_encoding(tmp_path) -> None:
    image = _gallery()["flat"]
    path = tmp_path / "x" / "grid.png"
    save_png(image, path)
    assert path.read_bytes() == encode_png(image)
    assert np.array_equal(np.asarray(Image.open(path)), image.permute(1, 2, 0).numpy())


class _Logger:
    def __init__(self, experiment) -> None:
        self.experiment = experiment


def test_tensorboard_sink_writes_encoded_pngs_readable_by_event_accumulator(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from probelens.callbacks._sinks import TensorBoardSink

    gallery = _gallery()
    writer = SummaryWriter(str(tmp_path))
    sink = TensorBoardSink(_Logger(writer))
    before = time.time()
    sink.add_image("probelens/test/rgb", gallery["upscaled"], 3)
    sink.add_image("probelens/test/rgb", gallery["drifting"], 7)
    sink.add_image("probelens/test/gray", gallery["noise"][:1], 7)
    sink.add_image("probelens/test/float", torch.full((3, 5, 6), 0.5), 7)  # not uint8: SummaryWriter.add_image
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={IMAGES: 0})
    acc.Reload()
    rgb = acc.Images("probelens/test/rgb")
    assert [e.step for e in rgb] == [3, 7]
    for event, image in zip(rgb, (gallery["upscaled"], gallery["drifting"])):
        assert (event.height, event.width) == tuple(image.shape[1:])
        assert before - 1 <= event.wall_time <= time.time() + 1
        assert np.array_equal(_decode(event.encoded_image_string), image.permute(1, 2, 0).numpy())
    (gray,) = acc.Images("probelens/test/gray")
    decoded = _decode(gray.encoded_image_string)
    assert decoded.shape == (37, 53, 3)  # stored as RGB, as SummaryWriter.add_image does
    assert all(np.array_equal(decoded[..., c], gallery["noise"][0].numpy()) for c in range(3))
    (fallback,) = acc.Images("probelens/test/float")
    assert (fallback.height, fallback.width) == (5, 6)
    assert np.all(_decode(fallback.encoded_image_string) == 127)


def test_text_chunks_come_before_the_pixels() -> None:
    """probelens.logs reads a grid's layout from the header alone: the text chunks must precede IDAT."""
    from probelens.render import CELLS_KEY, cells_to_text

    data = encode_png(_gallery()["flat"], text=cells_to_text([(0, 0, 0, 4, 4)]))
    assert 0 < data.index(b"tEXt" + CELLS_KEY.encode()) < data.index(b"IDAT")
    with Image.open(io.BytesIO(data)) as image:  # the header only: no pixel decoded yet
        assert CELLS_KEY in image.info
