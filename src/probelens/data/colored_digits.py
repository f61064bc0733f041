"""Coloured digits: real handwriting with a colour shortcut (a family built from pictures that ship with a package).

The digits are scikit-learn's bundled handwritten digits (``sklearn.datasets.load_digits``: 1797 scans of 8x8 pixels,
grey levels 0-16, from 43 writers; nothing is downloaded). The task: is the digit small (0-4, class ``"low"``) or
large (5-9, class ``"high"``)? Each image is the digit's strokes, upsampled to ``size`` (bilinear, soft edges), in a
light ink over a coloured background: red or green, which agrees with the class with probability ``p`` (red for
``low``). At ``p=0.5`` the colour says nothing and only the handwriting can be learned; at ``p`` near 1 the colour
alone decides almost every training image, and a model that learns it fails on the digits whose colour disagrees
with the class (the *conflicting* images): their accuracy is the ground truth of shortcut learning.

What each kind of evidence gets from it:

- masks: the strokes' soft alpha (``alpha``, 0-1): threshold it loosely or tightly (``masks(threshold)``), as users'
  masks come;
- group labels: ``colors`` (0 red, 1 green), the spurious attribute of every image;
- concept pictures: :func:`color_patches` (plain backgrounds of one colour, with a faint texture);
- nothing: the data alone.

The split into training and held-out digits is by index parity (even indices train, odd ones validate), so no scan
lands on both sides (the 43 writers are not recorded in the bundled set, so a writer may appear on both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

CLASS_NAMES: tuple[str, str] = ("low", "high")
"""Class 0: digits 0-4; class 1: digits 5-9."""
COLOR_NAMES: tuple[str, str] = ("red", "green")
"""The background colours (the spurious attribute), red agreeing with ``low``."""
MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
STD: tuple[float, float, float] = (0.25, 0.25, 0.25)
"""Fixed normalisation constants (the images are in ``[0, 1]`` before it)."""

_BACKGROUNDS = torch.tensor([[0.75, 0.22, 0.2], [0.2, 0.62, 0.25]])  # red, green
_INK = torch.tensor([0.95, 0.95, 0.85])


def _load_digits() -> tuple[Tensor, Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is in the dev extra
        raise ImportError(
            "ColoredDigitsDataset uses scikit-learn's bundled digits: pip install scikit-learn (or probelens[dev])"
        ) from err
    digits = load_digits()
    return torch.as_tensor(digits.images, dtype=torch.float32) / 16.0, torch.as_tensor(digits.target)


def color_patches(n: int, color: str, size: int = 32, seed: int = 0, normalize: bool = True) -> Tensor:
    """``n`` concept pictures ``[n, 3, size, size]`` of one background colour (``"red"`` or ``"green"``) with a faint
    random texture and no digit, normalised like the dataset (:data:`MEAN` / :data:`STD`) unless ``normalize`` is
    False."""
    if color not in COLOR_NAMES:
        raise ValueError(f"color={color!r} is not one of {COLOR_NAMES}")
    g = torch.Generator().manual_seed(seed)
    base = _BACKGROUNDS[COLOR_NAMES.index(color)].view(1, 3, 1, 1)
    images = (base + 0.06 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return _normalize(images) if normalize else images


def _normalize(images: Tensor) -> Tensor:
    return (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


class ColoredDigitsDataset(Dataset):
    """Map-style dataset of coloured digits (see the module docstring).

    Items are ``(image, label)``, or ``(image, label, mask)`` with ``mask_threshold`` set (the strokes' alpha above it).

    Args:
        split: ``"train"`` (even indices of the 1797 scans) or ``"val"`` (odd ones).
        p: probability that the background colour agrees with the class.
        size: image side in pixels.
        seed: seed of the colour draws.
        normalize: normalise with :data:`MEAN` / :data:`STD`.
        mask_threshold: return masks ``alpha > mask_threshold`` (``None``: no masks).

    Attributes:
        images ``[N, 3, size, size]``, labels ``[N]``, digits ``[N]`` (0-9), colors ``[N]`` (0 red, 1 green),
        alpha ``[N, 1, size, size]`` (the strokes' coverage, 0-1), conflicting ``[N]`` bool (colour disagrees with the
        class), class_names, group_names, mean, std.
    """

    def __init__(
        self,
        split: str = "train",
        p: float = 0.95,
        size: int = 32,
        seed: int = 0,
        normalize: bool = True,
        mask_threshold: float | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split={split!r} is not allowed; split must be 'train' or 'val'")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p={p!r} is not allowed; p must be in [0, 1]")
        if mask_threshold is not None and not 0.0 <= mask_threshold < 1.0:
            raise ValueError(f"mask_threshold={mask_threshold!r} is not allowed; it must be None or in [0, 1)")
        grey, digits = _load_digits()
        keep = torch.arange(len(digits)) % 2 == (0 if split == "train" else 1)
        grey, digits = grey[keep], digits[keep]
        n = len(digits)
        g = torch.Generator().manual_seed(seed * 2 + (0 if split == "train" else 1))
        labels = (digits >= 5).long()
        agree = torch.rand(n, generator=g) < p
        colors = torch.where(agree, labels, 1 - labels)
        alpha = F.interpolate(grey[:, None], size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
        background = _BACKGROUNDS[colors].view(n, 3, 1, 1)
        texture = 0.04 * torch.randn(n, 3, size, size, generator=g)
        images = ((1 - alpha) * (background + texture) + alpha * _INK.view(1, 3, 1, 1)).clamp(0, 1)
        self.normalize = normalize
        self.images = _normalize(images) if normalize else images
        self.mean, self.std = (MEAN, STD) if normalize else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.labels, self.digits, self.colors, self.alpha = labels, digits, colors, alpha
        self.conflicting = colors != labels
        self.class_names, self.group_names = CLASS_NAMES, COLOR_NAMES
        self.mask_threshold = mask_threshold

    def masks(self, threshold: float) -> Tensor:
        """Foreground masks ``alpha > threshold`` ``[N, 1, size, size]`` (loose below 0.5, tight above)."""
        return self.alpha > threshold

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        if self.mask_threshold is None:
            return self.images[index], self.labels[index]
        return self.images[index], self.labels[index], self.alpha[index] > self.mask_threshold
