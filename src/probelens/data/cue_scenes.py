"""Small procedural scenes with a class-correlated background cue of a chosen family, for testing shortcut monitors.

Every image shows one object (class 0: a disc, class 1: a square; or, with ``object_kind="colour"``, an easy cue: a
reddish vs a bluish object of either shape) on a background whose cue agrees with the class with probability ``p``.
Two background families, each with a different kind of cue than the snow/desert demo (a colour and texture cue over
the whole image):

* ``"stripes"``: oriented stripes in two random muted colours; the cue is the *orientation* only (horizontal for
  background 0, vertical for background 1, +-20 degrees), colours and period are drawn from one distribution for
  both, so no colour statistic tells them apart;
* ``"markers"``: a neutral mottled background with three small coloured discs, green for background 0 and magenta
  for background 1: a *local* cue that covers about 5% of the image and that an object can hide
  (:attr:`CueSample.cue_masks` says where the discs are).

``object_cue`` is the probability that the object's shape (or colour) is its class's; 0.5 makes the object
uninformative. Generation uses a private :class:`torch.Generator`: the global RNG is never touched and the same
arguments always give the same tensors.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["CUE_FAMILIES", "OBJECT_KINDS", "SHAPE_NAMES", "CueSample", "CueScenesDataset", "generate_cue_scenes"]

CUE_FAMILIES = ("stripes", "markers")
"""Background cue families of :func:`generate_cue_scenes`."""
OBJECT_KINDS = ("shape", "colour")
"""How the object shows its class: its shape (disc vs square) or its colour (reddish vs bluish, an easy cue)."""
SHAPE_NAMES = ("disc", "square")
"""Class names of the cue scenes: index 0 a disc, index 1 a square."""


@dataclass
class CueSample:
    """Output of :func:`generate_cue_scenes`.

    Attributes:
        images: ``[N, 3, H, W]`` float32 RGB in ``[0, 1]``.
        labels: ``[N]`` int64 class labels (0 disc, 1 square).
        masks: ``[N, 1, H, W]`` bool, exact object masks.
        backgrounds: ``[N]`` int64 background cue (0 or 1; it agrees with the label with probability ``p``).
        background_images: ``[N, 3, H, W]`` the background without the object, or ``None`` unless requested.
        cue_masks: ``[N, 1, H, W]`` bool, the pixels of the local cue (family ``"markers"``; all False otherwise),
            including the parts the object covers.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor
    backgrounds: Tensor
    cue_masks: Tensor
    background_images: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _u(g: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
    return torch.rand(shape, generator=g) * (hi - lo) + lo


def _smooth(g: torch.Generator, n: int, h: int, w: int, cells: int) -> Tensor:
    coarse = torch.rand((n, 1, cells, cells), generator=g) * 2 - 1
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[:, 0].clamp(-1, 1)


def _stripes(g: torch.Generator, bg: Tensor, yy: Tensor, xx: Tensor, unit: float) -> tuple[Tensor, Tensor]:
    n = bg.shape[0]
    h, w = yy.shape
    angle = torch.where(bg == 0, 0.0, math.pi / 2) + _u(g, (n,), -0.35, 0.35)
    period = _u(g, (n,), 5.0, 8.0) * unit
    phase = _u(g, (n,), 0.0, 2 * math.pi)
    proj = -xx[None] * torch.sin(angle)[:, None, None] + yy[None] * torch.cos(angle)[:, None, None]
    wave = 0.5 + 0.5 * torch.sin(2 * math.pi * proj / period[:, None, None] + phase[:, None, None])
    a = _u(g, (n, 3), 0.55, 0.85)
    b = a - _u(g, (n, 1), 0.25, 0.4) + _u(g, (n, 3), -0.05, 0.05)  # darker stripes of a similar hue
    img = a[:, :, None, None] * wave[:, None] + b[:, :, None, None] * (1 - wave[:, None])
    img = img + torch.randn((n, 1, h, w), generator=g) * 0.02
    return img, torch.zeros((n, 1, h, w), dtype=torch.bool)


def _markers(g: torch.Generator, bg: Tensor, yy: Tensor, xx: Tensor, unit: float) -> tuple[Tensor, Tensor]:
    n = bg.shape[0]
    h, w = yy.shape
    base = torch.tensor([0.62, 0.58, 0.52]) + _u(g, (n, 1), -0.06, 0.06) + _u(g, (n, 3), -0.03, 0.03)
    mottle = 1.0 + 0.08 * _smooth(g, n, h, w, 5) + torch.randn((n, h, w), generator=g) * 0.02
    img = base[:, :, None, None] * mottle[:, None]
    colour = torch.where((bg == 0)[:, None], torch.tensor([0.15, 0.72, 0.2]), torch.tensor([0.78, 0.15, 0.7]))
    colour = colour + _u(g, (n, 3), -0.05, 0.05)
    cue = torch.zeros((n, h, w), dtype=torch.bool)
    for _ in range(3):
        cy, cx = _u(g, (n,), 2.0, h - 2.0), _u(g, (n,), 2.0, w - 2.0)
        r = _u(g, (n,), 1.8, 2.6) * unit
        cue |= (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2 <= (r * r)[:, None, None]
    img = torch.where(cue[:, None], colour[:, :, None, None], img)
    return img, cue[:, None]


def generate_cue_scenes(
    n: int,
    family: str = "stripes",
    size: int = 32,
    p: float = 0.95,
    object_cue: float = 1.0,
    object_kind: str = "shape",
    seed: int = 0,
    with_backgrounds: bool = False,
) -> CueSample:
    """Generate ``n`` object-on-background scenes whose background cue agrees with the class with probability ``p``.

    Labels are exactly balanced, in random order. The object (about 10-18% of the image) never touches the border.

    Args:
        n: number of images (``>= 0``).
        family: the background cue, one of :data:`CUE_FAMILIES`.
        size: image side in pixels (``>= 16``); the scene is designed for 32.
        p: probability that the background cue agrees with the class, in ``[0, 1]``.
        object_cue: probability that the object shows its own class (shape or colour), in ``[0, 1]``.
        object_kind: one of :data:`OBJECT_KINDS`.
        seed: seed of the private generator.
        with_backgrounds: also return every image's background without the object.

    Raises:
        ValueError: an argument out of range, naming it and its value.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if family not in CUE_FAMILIES:
        raise ValueError(f"family must be one of {CUE_FAMILIES}, got {family!r}")
    if object_kind not in OBJECT_KINDS:
        raise ValueError(f"object_kind must be one of {OBJECT_KINDS}, got {object_kind!r}")
    size = operator.index(size)
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size!r}")
    for name, value in (("p", p), ("object_cue", object_cue)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    g = torch.Generator().manual_seed(int(seed))
    h = w = size
    unit = size / 32.0
    labels = torch.randperm(n, generator=g) % 2
    backgrounds = torch.where(torch.rand((n,), generator=g) < p, labels, 1 - labels)
    yy = (torch.arange(h, dtype=torch.float32) + 0.5)[:, None].expand(h, w)
    xx = (torch.arange(w, dtype=torch.float32) + 0.5)[None, :].expand(h, w)
    draw = _stripes if family == "stripes" else _markers
    bg_img, cue = draw(g, backgrounds, yy, xx, unit)
    bg_img = bg_img.clamp(0, 1)

    typical = torch.rand((n,), generator=g) < object_cue
    shows = torch.where(typical, labels, 1 - labels)  # the class the object looks like
    square = shows == 1 if object_kind == "shape" else torch.rand((n,), generator=g) < 0.5
    r = _u(g, (n,), 5.0, 6.8) * unit  # disc radius; the square has the same area
    half = r * math.sqrt(math.pi) / 2
    reach = torch.where(square, half * math.sqrt(2), r)
    cy = reach + 1 + torch.rand((n,), generator=g) * (h - 2 * reach - 2)
    cx = reach + 1 + torch.rand((n,), generator=g) * (w - 2 * reach - 2)
    theta = _u(g, (n,), 0.0, math.pi / 2)
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    u, v = dx * c + dy * s, -dx * s + dy * c
    in_square = (u.abs() <= half[:, None, None]) & (v.abs() <= half[:, None, None])
    in_disc = dx * dx + dy * dy <= (r * r)[:, None, None]
    mask = torch.where(square[:, None, None], in_square, in_disc)[:, None]
    if object_kind == "shape":
        colour = torch.tensor([0.45, 0.4, 0.36]) + _u(g, (n, 1), -0.12, 0.12) + _u(g, (n, 3), -0.04, 0.04)
    else:
        colour = torch.where((shows == 0)[:, None], torch.tensor([0.8, 0.25, 0.2]), torch.tensor([0.2, 0.3, 0.85]))
        colour = colour + _u(g, (n, 3), -0.08, 0.08)
    shade = 1.0 + 0.15 * (dy / reach[:, None, None]).clamp(-1, 1) + torch.randn((n, h, w), generator=g) * 0.03
    obj = (colour[:, :, None, None] * shade[:, None]).clamp(0, 1)
    images = torch.where(mask, obj, bg_img)
    return CueSample(
        images=images,
        labels=labels.long(),
        masks=mask,
        backgrounds=backgrounds.long(),
        cue_masks=cue,
        background_images=bg_img if with_backgrounds else None,
    )


class CueScenesDataset(Dataset):
    """Map-style dataset around :func:`generate_cue_scenes`: items ``(image, label)`` or, with ``return_masks``,
    ``(image, label, mask)``; images normalised to mean 0.5 / std 0.25 per channel (``mean``/``std`` attributes)."""

    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)
    class_names = SHAPE_NAMES

    def __init__(self, n: int = 1000, *, return_masks: bool = False, **options: object) -> None:
        sample = generate_cue_scenes(n, **options)  # type: ignore[arg-type]
        self.images = (sample.images - 0.5) / 0.25
        self.labels = sample.labels
        self.masks = sample.masks
        self.backgrounds = sample.backgrounds
        self.return_masks = return_masks

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, ...]:
        if self.return_masks:
            return self.images[i], self.labels[i], self.masks[i]
        return self.images[i], self.labels[i]
