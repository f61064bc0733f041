"""A log directory of hostile inputs for the readers (``probelens export`` and the dashboard): oversized PNGs (a header
claiming 100000 x 100000, a real 20000 x 20000), tags that look like paths or HTML, a NaN scalar, a run behind a
symbolic link and a link loop. Written with probelens' own event writer, so the records are well-formed; only their
content is hostile."""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from probelens.logformat import PNG_SIGNATURE, GridFacts, png_chunk
from probelens.render.image import encode_png
from probelens.writing.event_file import EventFileWriter

GOOD = "probelens/gradcam/net.0"
BOMB = "probelens/saliency/vanilla"  # good pictures at steps 0 and 2, the oversized ones at 1 and 3
HOSTILE_TAGS = (
    "probelens/../../../../outside/evil",
    "probelens/<script>top.pwned='script'</script>/net.0",
    'probelens/gradcam/"><img src=x onerror=top.pwned=1>',
    "probelens/gradcam/..",
)


@dataclass
class HostileLogs:
    logdir: Path
    run: Path
    linked: str  # the run's name through the symbolic link
    skipped: dict[int, str] = field(default_factory=dict)  # step of BOMB -> what the warning must name


def header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with a few bytes of (valid, far too short) data."""
    import zlib

    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return PNG_SIGNATURE + ihdr + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")


def real_bomb(side: int = 20_000) -> bytes:
    """A real ``side`` x ``side`` PNG (1 bit per pixel, all black: a few hundred KiB on disk, 1.2 GB as RGB)."""
    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, format="PNG")
    return out.getvalue()


def grid(step: int) -> bytes:
    image = torch.full((3, 8, 16), 40 * step, dtype=torch.uint8)
    facts = GridFacts(((0, 0, 0, 8, 8), (1, 8, 0, 16, 8)), "fp", ((0, "a", "b", 0.6), (1, "b", "b", 0.9)))
    return encode_png(image, text=facts.text())


def write_hostile_logs(root: Path) -> HostileLogs:
    logdir = root / "logs"
    run = logdir / "real" / "version_0"
    with EventFileWriter(run) as writer:
        for step in range(4):
            writer.add_image(GOOD, grid(step), 8, 16, step)
            for tag in HOSTILE_TAGS:
                writer.add_image(tag, grid(step), 8, 16, step)
            writer.add_scalar("shortcut/score", float("nan") if step == 2 else 0.25 * step, step)
        writer.add_image(BOMB, grid(0), 8, 16, 0)
        writer.add_image(BOMB, header_bomb(), 100_000, 100_000, 1)
        writer.add_image(BOMB, grid(2), 8, 16, 2)
        writer.add_image(BOMB, real_bomb(), 20_000, 20_000, 3)
    linked = logdir / "linked"
    linked.mkdir()
    os.symlink(run, linked / "version_0", target_is_directory=True)  # a run reached only through a link
    os.symlink(logdir, run / "loop", target_is_directory=True)  # a link back up: walking it must end
    return HostileLogs(logdir, run, "linked/version_0", {1: "100000x100000", 3: "20000x20000"})
