"""PNG writing: ``encode_png`` (hand-written: one filter per image, ISA-L deflate) and ``TensorBoardSink`` writing
the encoded bytes into probelens' own event file beside the logger's.
Every image must decode to exactly its pixels."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from probelens.render import encode_png, save_png


def _decode(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image)


def _filter_bytes(data: bytes) -> set[int]:
    """The PNG filter types used by the scanlines of an 8-bit, non-interlaced PNG (parsed by hand)."""
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and interlace == 0
    stride = 1 + width * (3 if color_type == 2 else 1)
    raw = zlib.decompress(idat)
    assert len(raw) == stride * height
    return {raw[row * stride] for row in range(height)}


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
    def __init__(self, experiment, log_dir) -> None:
        self.experiment, self.log_dir = experiment, str(log_dir)


def test_tensorboard_sink_writes_encoded_pngs_readable_by_event_accumulator(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from probelens.core.sinks import TensorBoardSink

    gallery = _gallery()
    writer = SummaryWriter(str(tmp_path))
    sink = TensorBoardSink(_Logger(writer, tmp_path))
    before = time.time()
    sink.add_image("probelens/test/rgb", gallery["upscaled"], 3)
    sink.add_image("probelens/test/rgb", gallery["drifting"], 7)
    sink.add_image("probelens/test/gray", gallery["noise"][:1], 7)
    sink.events.close()
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


def test_text_chunks_come_before_the_pixels() -> None:
    """probelens.logs reads a grid's layout from the header alone: the text chunks must precede IDAT."""
    from probelens.render import CELLS_KEY, cells_to_text

    data = encode_png(_gallery()["flat"], text=cells_to_text([(0, 0, 0, 4, 4)]))
    assert 0 < data.index(b"tEXt" + CELLS_KEY.encode()) < data.index(b"IDAT")
    with Image.open(io.BytesIO(data)) as image:  # the header only: no pixel decoded yet
        assert CELLS_KEY in image.info


def test_rows_that_drift_use_the_up_filter_small_and_large() -> None:
    gallery = _gallery()
    for name in ("drifting", "big_drifting"):
        data = encode_png(gallery[name])
        assert _filter_bytes(data) == {2}, name
        # a constant difference between rows compresses to almost nothing under Up
        assert len(data) < gallery[name].numel() // 20, name


def test_each_filter_choice_never_loses_much_to_the_other() -> None:
    for name, image in _gallery().items():
        data = encode_png(image)
        rows = np.ascontiguousarray(image.permute(1, 2, 0).numpy()).reshape(image.shape[1], -1)
        for filter_type in (0, 2):
            lines = np.concatenate([np.full((rows.shape[0], 1), filter_type, np.uint8), rows], axis=1)
            if filter_type == 2:
                lines[1:, 1:] = rows[1:] - rows[:-1]
            alternative = len(zlib.compress(lines.tobytes(), 1))
            assert len(data) <= 1.25 * alternative + 100, (name, filter_type)


@pytest.mark.parametrize("backend", ["isal", "zlib"])
@pytest.mark.parametrize("level", [1, 2, 3])
def test_both_deflate_backends_decode_to_the_pixels(monkeypatch, backend: str, level: int) -> None:
    """ISA-L (when installed) and zlib both write standard deflate: every image decodes exactly, at levels 1-3."""
    from probelens.render import image as image_module

    if backend == "zlib":
        monkeypatch.setattr(image_module, "_isal_zlib", None)
    elif image_module._isal_zlib is None:
        pytest.skip("the isal package is not installed on this platform")
    for name, image in _gallery().items():
        data = encode_png(image, compress_level=level)
        assert np.array_equal(_decode(data), image.permute(1, 2, 0).numpy()), (backend, name)
        assert _filter_bytes(data) <= {0, 2}


def test_isal_is_used_where_it_is_a_dependency() -> None:
    """pyproject lists isal for x86_64/aarch64; there encode_png must take the fast path (same bytes as ISA-L)."""
    import platform

    from probelens.render import image as image_module

    if platform.machine() not in ("x86_64", "AMD64", "aarch64", "arm64"):
        pytest.skip(f"isal is not a dependency on {platform.machine()}")
    assert image_module._isal_zlib is not None, "isal should be installed with probelens on this machine"
    rows = np.ascontiguousarray(_gallery()["noise"].permute(1, 2, 0).numpy()).reshape(37, -1)
    lines = np.concatenate([np.zeros((37, 1), np.uint8), rows], axis=1).tobytes()
    assert image_module._deflate(lines, 1) == image_module._isal_zlib.compress(lines, 1)
