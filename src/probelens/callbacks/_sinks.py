"""Where pictures go: TensorBoard when a ``TensorBoardLogger`` is attached, PNG files under the log dir otherwise."""

from __future__ import annotations

import os
import re
from typing import Any, Protocol

from torch import Tensor

from probelens.render import save_png


class ImageSink(Protocol):
    """Receives rendered ``uint8 [3,H,W]`` images and text on the trainer's global step axis."""

    def add_image(self, tag: str, image: Tensor, step: int) -> None: ...

    def add_text(self, tag: str, text: str, step: int) -> None: ...


class TensorBoardSink:
    """Writes through a ``TensorBoardLogger``'s ``SummaryWriter`` (``logger.experiment``)."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def add_image(self, tag: str, image: Tensor, step: int) -> None:
        self.logger.experiment.add_image(tag, image.cpu().numpy(), global_step=step, dataformats="CHW")

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.logger.experiment.add_text(tag, text, global_step=step)


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class PngSink:
    """Writes ``<root>/<tag path>/step_<step>.png`` (and ``.txt`` for text)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def _path(self, tag: str, step: int, ext: str) -> str:
        parts = [_UNSAFE.sub("_", p) for p in tag.split("/") if p]
        return os.path.join(self.root, *parts, f"step_{step:08d}.{ext}")

    def add_image(self, tag: str, image: Tensor, step: int) -> None:
        save_png(image, self._path(tag, step, "png"))

    def add_text(self, tag: str, text: str, step: int) -> None:
        path = self._path(tag, step, "txt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
