"""probelens' log format (:mod:`probelens.logformat`): the PNG text chunks the writer puts in grid PNGs and the readers
take out of them, checked against Pillow's own PNG reader; the writer's bytes unchanged by the move out of
``render/image.py``; and the readers (``probelens.logs``, the dashboard, ``probelens export``) free of torch."""

from __future__ import annotations

import hashlib
import io
import json
import random
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image, PngImagePlugin

from probelens import logformat
from probelens.logformat import (
    PNG_SIGNATURE,
    Cell,
    GridFacts,
    cells_from_text,
    png_chunk,
    png_layout,
    png_text_chunks,
    read_png_header,
)
from probelens.render import image as render_image
from probelens.render.image import encode_png


def _cells() -> GridFacts:
    return GridFacts(
        (Cell(0, 0, 0, 30, 40), Cell(3, 30, 0, 60, 40)),
        "fp01",
        ((0, "snow", "arabian", 0.8123456), (3, "arabian", "arabian", 0.99)),
    )


def test_render_image_re_exports_the_log_format_and_writes_the_same_bytes():
    for name in ("CELLS_KEY", "PREDICTIONS_KEY", "PROBE_KEY", "Cell", "GridFacts", "cells_to_text", "cells_from_text"):
        assert getattr(render_image, name) is getattr(logformat, name), name
    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    png = encode_png(image, compress_level=0, text=_cells().text())
    # the digest of the same call before the chunk code moved to probelens.logformat (level 0: plain zlib, no ISA-L)
    assert hashlib.sha256(png).hexdigest() == "7380767b41f395a55368905388af531b12d26914fd53b2fbb70241a92adfc5f1"


@pytest.mark.parametrize("seed", range(20))
def test_header_reader_agrees_with_pillow(seed):
    rng = random.Random(seed)
    width, height = rng.randint(1, 64), rng.randint(1, 64)
    text = {
        f"k{i}-{rng.randint(0, 999)}": "".join(chr(rng.randint(32, 255)) for _ in range(rng.randint(0, 300)))
        for i in range(rng.randint(0, 5))
    }
    if rng.random() < 0.5:
        text.update(_cells().text())
    if seed % 2:  # probelens' own writer
        png = encode_png(torch.zeros(3, height, width, dtype=torch.uint8), text=text)
    else:  # Pillow's writer
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
        out = io.BytesIO()
        Image.new("RGB", (width, height)).save(out, format="PNG", pnginfo=info)
        png = out.getvalue()
    header = read_png_header(png)
    with Image.open(io.BytesIO(png)) as image:
        assert (header.width, header.height) == image.size
        assert header.text == image.text
        layout = png_layout(png)
        assert layout.probe == (text.get(logformat.PROBE_KEY) or None)
        inside = {c.probe_index for c in cells_from_text(image.text) if c.left < width and c.top < height}
        assert sorted(layout.boxes) == sorted(inside)  # cells past the picture are clipped away


def test_damaged_headers_are_refused_or_skipped_never_crash():
    good = encode_png(torch.zeros(3, 4, 4, dtype=torch.uint8), text={"probelens.probe": "ab"})
    with pytest.raises(ValueError, match="PNG signature"):
        read_png_header(b"GIF89a" + good[6:])
    with pytest.raises(ValueError, match="IHDR"):
        read_png_header(PNG_SIGNATURE + b"\0\0\0\0")
    for cut in range(33, len(good)):  # cut anywhere after the IHDR: the size is there, a cut chunk is not read
        header = read_png_header(good[:cut])
        assert (header.width, header.height) == (4, 4)
        assert header.text in ({}, {"probelens.probe": "ab"})
    # a text chunk whose CRC does not match is skipped
    chunk = png_text_chunks({"probelens.probe": "ab"})
    bad = good.replace(chunk, chunk[:-1] + bytes([chunk[-1] ^ 1]))
    assert read_png_header(bad).text == {}
    # a header claiming 100000 x 100000 pixels is read in microseconds: nothing is decoded
    import struct

    bomb = PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
    assert read_png_header(bomb + png_chunk(b"IEND", b"")).width == 100000


def test_malformed_layout_text_is_ignored():
    assert cells_from_text({logformat.CELLS_KEY: "not json"}) == []
    assert cells_from_text({logformat.CELLS_KEY: json.dumps([[0, 5, 5, 1, 1], [1, 0, 0, 2, 2], "x"])}) == [
        (1, 0, 0, 2, 2)
    ]
    assert logformat.predictions_from_text({logformat.PREDICTIONS_KEY: "[[0, 1, 2]]"}) == {}


_READERS = """
import sys
{prelude}
import probelens.logformat, probelens.logs, probelens.export, probelens.dashboard.index
from pathlib import Path
from probelens.dashboard.index import LogIndex
from probelens.logs import find_runs, png_layout
logdir = Path(sys.argv[1])
index = LogIndex(logdir, rescan_s=0.0)
index.refresh()
listing = index.listing()
assert listing["runs"] and listing["runs"][0]["probelens"], listing
run = index.runs()[0]
summary = run.summary()
item = (summary["grids"] + summary["pictures"])[0]
data = run.image(item["tag"], item["entries"][0]["step"])
assert png_layout(data).width > 0 and find_runs(logdir)
from probelens.export import main
assert main([str(logdir / "nowhere")]) == 2  # the command line up to its first error
assert main([str(logdir), "--out", str(logdir.parent / "exported")]) == 0  # a whole export: GIFs, filmstrips, page
assert (logdir.parent / "exported" / "index.html").is_file()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "lightning", "pytorch_lightning", "matplotlib")
               or m.startswith(("probelens.render", "probelens.callbacks", "probelens.methods")))
print("HEAVY:" + ",".join(heavy[:20]))
"""

# the package's modules without running probelens/__init__.py, which imports ProbeSet (and so torch) eagerly
_STUB = """
import importlib.util, types, pathlib
root = pathlib.Path(importlib.util.find_spec("probelens").origin).parent
stub = types.ModuleType("probelens"); stub.__path__ = [str(root)]; sys.modules["probelens"] = stub
"""


def _picture_log(tmp_path):
    from probelens.writing.event_file import EventFileWriter

    run = tmp_path / "logs" / "run"
    with EventFileWriter(run) as writer:
        png = encode_png(torch.zeros(3, 8, 8, dtype=torch.uint8), text=_cells().text())
        writer.add_image("probelens/gradcam/net.0", png, 8, 8, step=0)
    return tmp_path / "logs"


def _heavy_modules(script: str, logdir) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(logdir)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("HEAVY:")]
    return [m for m in line.removeprefix("HEAVY:").split(",") if m]


def test_readers_import_neither_torch_nor_render_code(tmp_path):
    """The modules of the readers themselves: logs, log format, dashboard index and a whole export, on a real log."""
    assert _heavy_modules(_READERS.format(prelude=_STUB), _picture_log(tmp_path)) == []


def test_readers_through_the_package_import_no_torch(tmp_path):
    """As TensorBoard imports the plugin: through ``probelens/__init__.py``."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, probelens; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.stdout.strip() == "True":
        pytest.xfail("probelens/__init__.py imports ProbeSet (torch) eagerly; it needs a lazy ProbeSet to pass")
    assert _heavy_modules(_READERS.format(prelude=""), _picture_log(tmp_path)) == []
