"""Procedural "snow leopard vs arabian leopard" images that invite shortcut learning.

Every image shows one stylised leopard (body, head with ears and muzzle, four legs and a tail) on a background. The two
classes differ **only** by coat texture:

* class 0, ``"snow"`` (snow leopard): ring-shaped rosettes, i.e. a dark ring around a lighter centre;
* class 1, ``"arabian"`` (arabian leopard): solid dark spots.

A fraction ``purity`` of each animal's spots is of its class-typical kind, the rest is of the other kind. Silhouette,
size, pose and fur colour are drawn from the same distribution for both classes.

The background is either snow (bright bluish white with soft drifts and a few grey rocks) or desert (yellow-orange
sand with dune bands). It agrees with the class (snow for class 0, desert for class 1) with probability ``p``, so for
``p`` close to 1 the background is an easy shortcut, while for ``p = 0.5`` it carries no information and only the
texture on the animal can be used.

Generation is fully vectorised over the batch in torch and uses a private :class:`torch.Generator`, so the global RNG
is never touched and the same seed always gives the same data.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "BACKGROUND_NAMES",
    "CLASS_NAMES",
    "MEAN",
    "STD",
    "SnowDesertDataset",
    "SnowDesertSample",
    "generate_snow_desert",
]

CLASS_NAMES: tuple[str, str] = ("snow", "arabian")
"""Class names: index 0 is the snow leopard (rosettes), index 1 the arabian leopard (solid spots)."""

BACKGROUND_NAMES: tuple[str, str] = ("snow", "desert")
"""Background names: index 0 is snow, index 1 is desert."""

MEAN: tuple[float, float, float] = (0.84, 0.77, 0.66)
"""Per-channel (RGB) mean used by :class:`SnowDesertDataset` for normalisation.

A fixed constant measured on the default dataset (``n=4000, p=0.95, seed=0``; rounded to two decimals), deliberately
not recomputed per dataset so that every split and every configuration is normalised identically.
"""

STD: tuple[float, float, float] = (0.14, 0.17, 0.28)
"""Per-channel (RGB) standard deviation used by :class:`SnowDesertDataset` (see :data:`MEAN`)."""

# Internal chunk size: a fixed constant so that results never depend on it being changed at runtime.
_CHUNK = 512
# Geometry is designed for 64x64 images; lengths are scaled by ``_scale_unit``.
_BASE = 64.0


def _scale_unit(h: int, w: int) -> float:
    """Pixels per design unit: keeps the object's relative area for any aspect ratio, but keeps it inside the image.

    The (roughly horizontal) animal spans up to ~0.9 of the design width and ~0.6 of the design height, hence the
    limits; it is placed so that it never touches the image border.
    """
    return min(math.sqrt(h * w), float(w), 1.6 * h) / _BASE


@dataclass
class SnowDesertSample:
    """Output of :func:`generate_snow_desert`.

    Attributes:
        images: ``[N, 3, H, W]`` float32 RGB images in ``[0, 1]``.
        labels: ``[N]`` int64 class labels (0 ``"snow"`` leopard, 1 ``"arabian"`` leopard), see :data:`CLASS_NAMES`.
        masks: ``[N, 1, H, W]`` bool, exact foreground masks of the animal.
        backgrounds: ``[N]`` int64 background identity (0 snow, 1 desert), see :data:`BACKGROUND_NAMES`.
        background_images: ``[N, 3, H, W]`` float32 background alone (the same image without the animal; equal to
            ``images`` wherever ``masks`` is False), or ``None`` unless requested with ``with_backgrounds=True``.
    """

    images: Tensor
    labels: Tensor
    masks: Tensor
    backgrounds: Tensor
    background_images: Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _parse_size(size: int | Sequence[int]) -> tuple[int, int]:
    """Return ``(H, W)`` from an int or a pair, validating it."""
    bad = ValueError(f"size must be an int or a (height, width) pair of ints, got {size!r}")
    if isinstance(size, (bool, str, bytes)):
        raise bad
    try:
        h = w = operator.index(size)  # type: ignore[arg-type]
    except TypeError:
        try:
            h, w = (operator.index(s) for s in size)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise bad from None
    if h < 16 or w < 16:
        raise ValueError(f"size must be at least 16 pixels in each dimension, got {size!r}")
    return h, w


def _validate(n: int, p: float, purity: float, spot_contrast: float) -> None:
    try:
        n_int = operator.index(n)
    except TypeError:
        n_int = -1
    if isinstance(n, bool) or n_int < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    if not 0.0 <= purity <= 1.0:
        raise ValueError(f"purity must be in [0, 1], got {purity!r}")
    if not (spot_contrast >= 0.0 and math.isfinite(spot_contrast)):
        raise ValueError(f"spot_contrast must be a finite number >= 0, got {spot_contrast!r}")


def _u(g: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> Tensor:
    """Uniform samples in ``[lo, hi)`` from the private generator."""
    return torch.rand(shape, generator=g) * (hi - lo) + lo


def _cubic_upsampler(cells: int, length: int) -> Tensor:
    """``[length, cells]`` matrix that bicubically upsamples ``cells`` values to ``length`` along one axis."""
    basis = torch.eye(cells, dtype=torch.float32).view(cells, 1, cells, 1)
    return F.interpolate(basis, size=(length, 1), mode="bicubic", align_corners=False)[:, 0, :, 0].T.contiguous()


def _smooth_noise(g: torch.Generator, n: int, h: int, w: int, cells: int) -> Tensor:
    """Low-frequency noise in ``[-1, 1]`` of shape ``[n, h, w]`` (separable bicubic upsampling of a coarse grid)."""
    coarse = torch.rand((n, cells, cells), generator=g) * 2.0 - 1.0
    return (_cubic_upsampler(cells, h) @ coarse @ _cubic_upsampler(cells, w).T).clamp(-1.0, 1.0)


def _snow_background(g: torch.Generator, n: int, yy: Tensor, xx: Tensor, unit: float) -> Tensor:
    """Bright bluish-white snow with soft drifts, grain and a few half-buried grey rocks. Returns ``[n, 3, H, W]``."""
    h, w = yy.shape
    base = torch.tensor([0.90, 0.93, 0.98]) + _u(g, (n, 1), -0.03, 0.02)  # shared brightness jitter
    base = base + _u(g, (n, 3), -0.01, 0.01)
    drift = _smooth_noise(g, n, h, w, 4)  # soft drifts: darker, bluer shadows
    grain = torch.randn((n, h, w), generator=g) * 0.012
    shade = 1.0 + 0.045 * drift + grain
    img = base[:, :, None, None] * shade[:, None]
    img[:, 2] += 0.02 * (drift < -0.3).float() * (-drift - 0.3)  # bluish shadows
    # A few rocks: grey ellipses with a snow cap on top; later rocks cover earlier ones.
    rock = torch.zeros((n, h, w), dtype=torch.bool)
    rock_shade = torch.zeros((n, h, w))
    for _ in range(4):
        present = torch.rand((n,), generator=g) < 0.4
        cx = _u(g, (n,), 0.0, float(w))
        cy = _u(g, (n,), 0.0, float(h))
        rx = _u(g, (n,), 3.0, 7.0) * unit
        ry = rx * _u(g, (n,), 0.55, 0.85)
        tone = _u(g, (n,), 0.75, 1.2)
        dx = (xx[None] - cx[:, None, None]) / rx[:, None, None]
        dy = (yy[None] - cy[:, None, None]) / ry[:, None, None]
        inside = (dx * dx + dy * dy <= 1.0) & present[:, None, None]
        cap = dy < -0.7 + 0.2 * torch.sin(4.0 * dx)  # thin snow cap on top of the rock
        rock = torch.where(inside, ~cap, rock)
        rock_shade = torch.where(inside, tone[:, None, None] * (1.0 - 0.25 * dy), rock_shade)
    rock_img = torch.tensor([0.46, 0.46, 0.50])[None, :, None, None] * rock_shade[:, None]
    return torch.where(rock[:, None], rock_img, img)


def _desert_background(g: torch.Generator, n: int, yy: Tensor, xx: Tensor, unit: float) -> Tensor:
    """Yellow-orange sand with dune-like low-frequency bands and grain. Returns ``[n, 3, H, W]``."""
    h, w = yy.shape
    base = torch.tensor([0.88, 0.70, 0.44]) + _u(g, (n, 1), -0.03, 0.03)
    base = base + _u(g, (n, 3), -0.015, 0.015)
    phi = _u(g, (n,), -0.6, 0.6) + math.pi / 2  # dune crests run roughly horizontally
    lam = _u(g, (n,), 14.0, 26.0) * unit
    phase = _u(g, (n,), 0.0, 2 * math.pi)
    proj = xx[None] * torch.cos(phi)[:, None, None] + yy[None] * torch.sin(phi)[:, None, None]
    warp = 2.0 * _smooth_noise(g, n, h, w, 3) * unit
    arg = 2 * math.pi * (proj + warp) / lam[:, None, None] + phase[:, None, None]
    # Asymmetric waves: a slow bright slope and a short dark lee side, plus a weaker harmonic.
    dune = torch.sin(arg) + 0.35 * torch.sin(2 * arg + 1.0)
    grain = torch.randn((n, h, w), generator=g) * 0.018
    shade = 1.0 + 0.06 * dune + 0.03 * _smooth_noise(g, n, h, w, 5) + grain
    img = base[:, :, None, None] * shade[:, None]
    img[:, 0] += 0.02 * dune.clamp(max=0.0)  # lee sides slightly more orange-brown
    return img


def _leopard_shape(g: torch.Generator, n: int, yy: Tensor, xx: Tensor, unit: float) -> tuple[Tensor, Tensor]:
    """Random leopard silhouettes: body, chest bulge, head, muzzle, ears, four legs and a curved tail.

    Random size, position, small tilt and left/right facing; the animal never touches the image border.

    Returns:
        ``(mask, v_norm)``: the ``[n, H, W]`` bool silhouette and the body-frame vertical coordinate (downwards)
        normalised by the body half-height, used for belly shading.
    """
    h, w = yy.shape
    s = _u(g, (n,), 1.0, 1.25) * unit  # pixel scale of the animal
    a = 12.5 * s * _u(g, (n,), 0.92, 1.08)  # body half-length
    b = 6.2 * s * _u(g, (n,), 0.92, 1.08)  # body half-height
    rh = 4.8 * s  # head radius
    leg_len = 6.5 * s * _u(g, (n,), 0.85, 1.1)
    leg_hw = 1.55 * s
    tail_len = 13.0 * s * _u(g, (n,), 0.85, 1.1)
    tail_hw = 1.8 * s
    curl = _u(g, (n,), -1.0, 0.6)  # negative: tail curls upwards
    theta = _u(g, (n,), -0.25, 0.25)
    facing = torch.where(torch.rand((n,), generator=g) < 0.5, -1.0, 1.0)
    head_u = 0.95 * a
    head_v = -0.55 * b
    tail_u0 = 0.8 * a

    # Bounding box in the body frame (u towards the head, v downwards), then rotated to image extents.
    tail_end_v = -0.1 * b + 0.6 * curl * tail_len
    u_min = -(tail_u0 + tail_len + tail_hw)
    u_max = head_u + 1.6 * rh
    v_min = torch.minimum(head_v - 1.35 * rh, tail_end_v - 1.6 * tail_hw)
    v_max = torch.maximum(b + leg_len, tail_end_v + 1.6 * tail_hw)
    cos, sin = torch.cos(theta), torch.sin(theta)
    corners_u = torch.stack([u_min, u_min, u_max, u_max], 1) * facing[:, None]
    corners_v = torch.stack([v_min, v_max, v_min, v_max], 1)
    ex = corners_u * cos[:, None] - corners_v * sin[:, None]
    ey = corners_u * sin[:, None] + corners_v * cos[:, None]
    lo_x, hi_x = -ex.amin(1) + 1.0, w - 1.0 - ex.amax(1)
    lo_y, hi_y = -ey.amin(1) + 1.0, h - 1.0 - ey.amax(1)
    tx, ty = torch.rand((n,), generator=g), torch.rand((n,), generator=g)
    cx = torch.where(hi_x > lo_x, lo_x + tx * (hi_x - lo_x), (lo_x + hi_x) / 2)
    cy = torch.where(hi_y > lo_y, lo_y + ty * (hi_y - lo_y), (lo_y + hi_y) / 2)

    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    c3, s3 = cos[:, None, None], sin[:, None, None]
    u = (dx * c3 + dy * s3) * facing[:, None, None]
    v = -dx * s3 + dy * c3

    def e(t: Tensor) -> Tensor:
        return t[:, None, None]

    body = (u / e(a)) ** 2 + (v / e(b)) ** 2 <= 1.0
    # Chest / haunch bulge so the body is not a perfect ellipse.
    body |= ((u - 0.45 * e(a)) / (0.5 * e(a))) ** 2 + ((v - 0.15 * e(b)) / (1.05 * e(b))) ** 2 <= 1.0
    head = (u - e(head_u)) ** 2 + (v - e(head_v)) ** 2 <= e(rh) ** 2
    muzzle = ((u - e(head_u + 0.85 * rh)) / e(0.6 * rh)) ** 2 + ((v - e(head_v + 0.35 * rh)) / e(0.45 * rh)) ** 2 <= 1
    ear_r2 = e(0.38 * rh) ** 2
    ears = (u - e(head_u - 0.45 * rh)) ** 2 + (v - e(head_v - 0.9 * rh)) ** 2 <= ear_r2
    ears |= (u - e(head_u + 0.3 * rh)) ** 2 + (v - e(head_v - 0.95 * rh)) ** 2 <= ear_r2
    legs = torch.zeros_like(body)
    in_leg_range = (v >= 0) & (v <= e(b + leg_len))
    for frac in (0.62, 0.36, -0.42, -0.68):
        legs |= in_leg_range & ((u - frac * e(a)).abs() <= e(leg_hw))
    # Tail: a thick band around a parabola behind the body, perpendicular thickness kept constant.
    t = -u - e(tail_u0)
    tn = t / e(tail_len)
    centre = -0.1 * e(b) + 0.6 * e(curl * tail_len) * tn**2
    slope = 1.2 * e(curl) * tn
    tail = (t >= 0) & (tn <= 1.0) & ((v - centre).abs() <= e(tail_hw) * torch.sqrt(1.0 + slope**2))
    tip_u = -(tail_u0 + tail_len)
    tail |= (u - e(tip_u)) ** 2 + (v - e(tail_end_v)) ** 2 <= e(tail_hw) ** 2
    mask = body | head | muzzle | ears | legs | tail
    return mask, v / e(b)


def _spot_alpha(g: torch.Generator, labels: Tensor, yy: Tensor, xx: Tensor, unit: float, purity: float) -> Tensor:
    """Spot opacity field ``[n, H, W]`` in ``[0, 1]`` from a jittered lattice (nearest-spot / Worley layout).

    Each lattice cell holds at most one spot, jittered by at most ``0.22`` cell from the cell centre, and a pixel is
    coloured by its nearest spot only, so neighbouring spots never merge. Because spot radii are below ``0.5`` cell,
    only the 2x2 block of cells nearest to a pixel can hold a spot covering it, so only those four are searched. A
    spot is a ring (rosette) or a solid disc; the class-typical kind is chosen with probability ``purity``.
    """
    n = labels.shape[0]
    h, w = yy.shape
    cell = 7.0 * unit
    gh, gw = math.ceil(h / cell) + 2, math.ceil(w / cell) + 2
    jit = _u(g, (n, gh, gw, 2), -0.22, 0.22) * cell
    ii = torch.arange(gh, dtype=torch.float32)[:, None]
    jj = torch.arange(gw, dtype=torch.float32)[None, :]
    sy = ((ii - 0.5) * cell + jit[..., 0]).reshape(n, -1)
    sx = ((jj - 0.5) * cell + jit[..., 1]).reshape(n, -1)
    radius = _u(g, (n, gh * gw), 2.3, 3.3) * unit
    present = torch.rand((n, gh * gw), generator=g) < 0.9
    typical = torch.rand((n, gh * gw), generator=g) < purity
    # Class 0 (snow leopard) is typically ring-spotted, class 1 (arabian) typically solid.
    is_ring = torch.where(typical, labels[:, None] == 0, labels[:, None] == 1)
    sy = torch.where(present, sy, torch.full_like(sy, 1e4))  # absent spots are moved far away

    fy, fx = yy / cell, xx / cell
    ci0 = (fy - 0.5).floor().long() + 1  # upper-left cell of the 2x2 block nearest to each pixel
    cj0 = (fx - 0.5).floor().long() + 1
    ys, xs = yy.reshape(1, -1), xx.reshape(1, -1)
    best_d2 = best_k = None
    for di in (0, 1):
        for dj in (0, 1):
            k = ((ci0 + di) * gw + (cj0 + dj)).reshape(-1)  # [H*W], constant over the batch
            d2 = (sy.index_select(1, k) - ys) ** 2 + (sx.index_select(1, k) - xs) ** 2
            kk = k.expand(n, -1)
            if best_d2 is None:
                best_d2, best_k = d2, kk
            else:
                assert best_k is not None
                closer = d2 < best_d2
                best_d2 = torch.where(closer, d2, best_d2)
                best_k = torch.where(closer, kk, best_k)
    assert best_d2 is not None and best_k is not None
    r = torch.gather(radius, 1, best_k).reshape(n, h, w)
    ring = torch.gather(is_ring, 1, best_k).reshape(n, h, w)
    d = best_d2.sqrt().reshape(n, h, w)
    outer = (r - d + 0.5).clamp(0.0, 1.0)  # anti-aliased disc
    ring_w = 1.25 * unit
    inner = (d - (r - ring_w) + 0.5).clamp(0.0, 1.0)  # 0 inside the lighter centre, 1 on the ring
    centre_alpha = 0.12
    ring_alpha = outer * (inner + (1.0 - inner) * centre_alpha)
    return torch.where(ring, ring_alpha, outer)


def _generate_chunk(
    g: torch.Generator,
    labels: Tensor,
    backgrounds: Tensor,
    yy: Tensor,
    xx: Tensor,
    unit: float,
    purity: float,
    spot_contrast: float,
) -> tuple[Tensor, Tensor, Tensor]:
    n = labels.shape[0]
    h, w = yy.shape
    bg = torch.empty((n, 3, h, w), dtype=torch.float32)
    is_desert = backgrounds == 1
    bg[~is_desert] = _snow_background(g, int((~is_desert).sum()), yy, xx, unit)
    bg[is_desert] = _desert_background(g, int(is_desert.sum()), yy, xx, unit)
    bg = bg.clamp(0.0, 1.0)

    mask, v_norm = _leopard_shape(g, n, yy, xx, unit)
    # Fur: greyish yellow tan, identical distribution for both classes, lighter towards the belly.
    fur = torch.tensor([0.80, 0.70, 0.52]) + _u(g, (n, 1), -0.04, 0.04) + _u(g, (n, 3), -0.02, 0.02)
    shade = 1.0 + 0.09 * v_norm.clamp(-1.5, 1.5) + torch.randn((n, h, w), generator=g) * 0.02
    fur_img = fur[:, :, None, None] * shade[:, None]
    dark = torch.tensor([0.20, 0.16, 0.12]) + _u(g, (n, 1), -0.03, 0.03)
    alpha = (_spot_alpha(g, labels, yy, xx, unit, purity) * (0.9 * spot_contrast)).clamp(0.0, 1.0)[:, None]
    animal = fur_img * (1.0 - alpha) + dark[:, :, None, None] * alpha
    images = torch.where(mask[:, None], animal.clamp(0.0, 1.0), bg)
    return images, mask[:, None], bg


def generate_snow_desert(
    n: int,
    size: int | tuple[int, int] = 64,
    p: float = 0.95,
    purity: float = 0.8,
    spot_contrast: float = 1.0,
    seed: int = 0,
    with_backgrounds: bool = False,
) -> SnowDesertSample:
    """Generate ``n`` snow-leopard / arabian-leopard images with a spurious background cue.

    Labels are exactly balanced (``n // 2`` or ``n - n // 2`` per class, in random order). The background agrees with
    the label (snow for class 0, desert for class 1) independently per image with probability ``p``. Only a private
    :class:`torch.Generator` seeded with ``seed`` is used, so the global RNG state is left unchanged and identical
    arguments give identical tensors.

    Args:
        n: Number of images (``>= 0``).
        size: Image size, an int for square images or ``(height, width)``; each side at least 16. The scene is
            designed for 64x64 and scaled with ``sqrt(height * width) / 64`` (less for very
            elongated images, so that the animal always fits).
        p: Probability that the background agrees with the class, in ``[0, 1]``. ``0.5`` makes it uninformative.
        purity: Fraction of an animal's spots of its class-typical kind (rings for snow leopards, solid spots for
            arabian leopards), in ``[0, 1]``. ``0.5`` makes the texture uninformative.
        spot_contrast: Visibility of the spots, ``>= 0`` (``0`` removes them; lower is a harder texture cue). The
            spot opacity is ``0.9 * spot_contrast`` clipped to ``[0, 1]``.
        seed: Seed of the private generator.
        with_backgrounds: Also return the pure background of every image (the same image without the animal).

    Returns:
        A :class:`SnowDesertSample` with images, labels, masks, backgrounds and optionally background images.

    Raises:
        ValueError: If an argument is out of range.
    """
    _validate(n, p, purity, spot_contrast)
    n = operator.index(n)
    h, w = _parse_size(size)
    unit = _scale_unit(h, w)
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))

    labels = torch.randperm(n, generator=g) % 2
    agree = torch.rand((n,), generator=g) < p
    backgrounds = torch.where(agree, labels, 1 - labels)

    yy = (torch.arange(h, dtype=torch.float32) + 0.5)[:, None].expand(h, w).contiguous()
    xx = (torch.arange(w, dtype=torch.float32) + 0.5)[None, :].expand(h, w).contiguous()
    images = torch.empty((n, 3, h, w), dtype=torch.float32)
    masks = torch.empty((n, 1, h, w), dtype=torch.bool)
    bgs = torch.empty((n, 3, h, w), dtype=torch.float32) if with_backgrounds else None
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        img, m, bg = _generate_chunk(g, labels[sl], backgrounds[sl], yy, xx, unit, purity, spot_contrast)
        images[sl], masks[sl] = img, m
        if bgs is not None:
            bgs[sl] = bg
    return SnowDesertSample(
        images=images, labels=labels.long(), masks=masks, backgrounds=backgrounds.long(), background_images=bgs
    )


class SnowDesertDataset(Dataset):
    """In-memory map-style dataset around :func:`generate_snow_desert`.

    Items are ``(image, label)`` or, with ``return_masks=True``, ``(image, label, mask)``, where ``image`` is a
    ``[3, H, W]`` float32 tensor (normalised with :data:`MEAN` / :data:`STD` if ``normalize``), ``label`` a 0-d int64
    tensor and ``mask`` a ``[1, H, W]`` bool tensor.

    Attributes:
        images: ``[N, 3, H, W]`` float32 images, normalised if ``normalize`` else in ``[0, 1]``.
        labels: ``[N]`` int64 labels.
        masks: ``[N, 1, H, W]`` bool foreground masks.
        backgrounds: ``[N]`` int64 background identity (0 snow, 1 desert): the group labels of a shortcut probe,
            ``ProbeSet.from_dataset(dataset, groups=dataset.backgrounds)``.
        group_names: :data:`BACKGROUND_NAMES`, the names of those groups.
        mean: Per-channel mean used for normalisation (:data:`MEAN`; ``(0, 0, 0)`` if ``normalize`` is False).
        std: Per-channel std used for normalisation (:data:`STD`; ``(1, 1, 1)`` if ``normalize`` is False).
        class_names: :data:`CLASS_NAMES`.
        normalize: Whether ``images`` are normalised.
        return_masks: Whether items include the mask.
    """

    def __init__(
        self,
        n: int = 4000,
        size: int | tuple[int, int] = 64,
        p: float = 0.95,
        purity: float = 0.8,
        spot_contrast: float = 1.0,
        seed: int = 0,
        normalize: bool = True,
        return_masks: bool = False,
    ) -> None:
        """Generate the data once, see :func:`generate_snow_desert` for the arguments.

        Args:
            n: Number of images.
            size: Image size, an int or ``(height, width)``.
            p: Probability that the background agrees with the class.
            purity: Fraction of class-typical spots.
            spot_contrast: Spot visibility (lower is harder).
            seed: Seed of the private generator.
            normalize: Normalise images with the fixed :data:`MEAN` / :data:`STD` constants.
            return_masks: Return ``(image, label, mask)`` instead of ``(image, label)``.
        """
        sample = generate_snow_desert(n, size=size, p=p, purity=purity, spot_contrast=spot_contrast, seed=seed)
        self.normalize = normalize
        self.return_masks = return_masks
        self.class_names = CLASS_NAMES
        if normalize:
            self.mean, self.std = MEAN, STD
            mean = torch.tensor(MEAN).view(1, 3, 1, 1)
            std = torch.tensor(STD).view(1, 3, 1, 1)
            self.images = (sample.images - mean) / std
        else:
            self.mean, self.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
            self.images = sample.images
        self.labels = sample.labels
        self.masks = sample.masks
        self.backgrounds = sample.backgrounds
        self.group_names = BACKGROUND_NAMES  # what ProbeSet.from_dataset(..., groups=self.backgrounds) names them

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        if self.return_masks:
            return self.images[i], self.labels[i], self.masks[i]
        return self.images[i], self.labels[i]
