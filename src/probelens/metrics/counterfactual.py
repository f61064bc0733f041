"""Counterfactual probes built from foreground masks: does the model still decide the same without the object, or
without the background?

Three edited copies of a probe batch (all in the model's input space, so they go through the model as is):

- **background only**: the object region is filled with a copy of the image's own background
  (:func:`fill_from_background`: the nearest shift of the silhouette that lands on background only), so it holds the
  background's texture, not a smooth patch; pixels no shift can reach fall back to harmonic inpainting
  (:func:`inpaint_harmonic`);
- **foreground only**: the background is replaced by one neutral colour, the average background colour over the whole
  probe set (it carries no class information when the probe set is class-balanced);
- **background swap**: each object is pasted onto the background-only image of a probe image of another class (the
  partner's own object region filled the same way, so no smooth "ghost" of it remains).

Assumptions (documented for users): the masks cover the object and little else (a mask that includes background
context leaks the background into "foreground only" and hides it from "background only"); the object is a minority of
the image, so a copy of its silhouette fits into the background; the seam around the copied patch remains. A soft
matte thresholded loosely is found by its band of mixed pixels (:func:`fit_mask_margins`) and its object pasted with an
estimated alpha (:func:`matte_alpha`, :func:`paste_objects`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(images: Tensor, masks: Tensor) -> Tensor:
    if images.dim() != 4:
        raise ValueError(f"images must be [N,C,H,W], got {tuple(images.shape)}")
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    if masks.shape != (images.shape[0], 1, *images.shape[-2:]):
        raise ValueError(
            f"masks must be [N,1,H,W] = {[images.shape[0], 1, *images.shape[-2:]]}, got {list(masks.shape)}"
        )
    return masks.to(images.device).bool()


def inpaint_harmonic(images: Tensor, masks: Tensor, iterations: int | None = None) -> Tensor:
    """Fill the masked pixels with a harmonic (smooth) interpolation of the unmasked ones.

    Starts from the mean unmasked colour per image and channel, then repeats ``x[M] <- mean of 4 neighbours`` (Jacobi
    iterations of the Laplace equation with the background as boundary). Borders replicate.

    Args:
        images: ``[N,C,H,W]``.
        masks: ``[N,1,H,W]`` bool, True where pixels are replaced.
        iterations: Jacobi steps; default ``2 * max(H, W)``, enough to cross the image on a coarse-to-fine scale.

    Returns:
        ``[N,C,H,W]`` with the masked region filled.
    """
    masks = _check(images, masks)
    x = images.float()
    keep = (~masks).float()
    n_keep = keep.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    mean = (x * keep).sum(dim=(2, 3), keepdim=True) / n_keep
    out = torch.where(masks, mean, x)
    h, w = x.shape[-2:]
    steps = iterations if iterations is not None else 2 * max(h, w)
    # coarse-to-fine: solve on a half-resolution grid first so the fill converges in few steps
    if min(h, w) >= 16 and iterations is None:
        small = F.interpolate(out, scale_factor=0.5, mode="area")
        small_mask = F.interpolate(masks.float(), scale_factor=0.5, mode="area") > 0.5
        small = inpaint_harmonic(small, small_mask, iterations=max(h, w))
        init = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
        out = torch.where(masks, init, x)
        steps = max(h, w) // 2
    kernel = torch.tensor([[0.0, 0.25, 0.0], [0.25, 0.0, 0.25], [0.0, 0.25, 0.0]], device=x.device)
    kernel = kernel.expand(x.shape[1], 1, 3, 3).contiguous()
    for _ in range(steps):
        avg = F.conv2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
        out = torch.where(masks, avg, x)
    return out.to(images.dtype)


def _donor_offset(todo: Tensor, mask: Tensor) -> tuple[int, int] | None:
    """The shift ``(dy, dx)`` that moves the most pixels of ``todo`` ``[H,W]`` onto unmasked pixels of ``mask``
    inside the image, the shortest among those; ``None`` if no shift reaches any.

    ``bad(dy, dx) = sum_p T(p) * B(p + (dy, dx))`` with ``B`` = 1 on masked pixels and outside the image is one
    cross-correlation of the padded ``B`` with ``todo``'s bounding box.
    """
    ys, xs = todo.nonzero(as_tuple=True)
    if ys.numel() == 0:
        return None
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    kernel = todo[y0:y1, x0:x1].float()
    kh, kw = kernel.shape[-2:]
    blocked = F.pad(mask.float(), (kw, kw, kh, kh), value=1.0)
    # the cross-correlation by FFT (a large kernel: conv2d would cost O(H W kh kw))
    size = blocked.shape
    spectrum = torch.fft.rfft2(blocked) * torch.fft.rfft2(kernel, s=size).conj()
    full = torch.fft.irfft2(spectrum, s=size)
    bad = full[: size[0] - kh + 1, : size[1] - kw + 1].round()  # bad[r, c]: the box's corner at image (r-kh, c-kw)
    if float(bad.min()) >= ys.numel():
        return None
    dy = torch.arange(bad.shape[0], device=todo.device)[:, None] - kh - y0
    dx = torch.arange(bad.shape[1], device=todo.device)[None, :] - kw - x0
    # fewest blocked pixels first, then the shortest shift (the nearest background looks most alike)
    rank = bad * float(bad.numel()) + (dy * dy + dx * dx).float() / float(bad.numel())
    r, c = divmod(int(rank.argmin()), bad.shape[1])
    return int(dy[r, 0]), int(dx[0, c])


def fill_from_background(images: Tensor, masks: Tensor, max_patches: int = 4) -> Tensor:
    """Fill the masked pixels with a copy of the image's own background: texture kept, no smooth patch.

    Per image, the masked region is replaced by the background under the same silhouette moved by the shortest shift
    ``(dy, dx)`` at which it lies wholly on unmasked pixels inside the image (``x[p] <- x[p + (dy, dx)]``), so grain,
    drifts or stripes of the surroundings continue into the hole (only a seam at its outline remains). Where no shift
    fits the whole silhouette (an object too large for its background), the shift that reaches the most of it is
    used, then another for the rest, up to ``max_patches``; what is still left is filled by :func:`inpaint_harmonic`.

    Args:
        images: ``[N,C,H,W]``.
        masks: ``[N,1,H,W]`` bool, True where pixels are replaced.
        max_patches: copied patches per image at most.

    Returns:
        ``[N,C,H,W]`` with the masked region filled.
    """
    masks = _check(images, masks)
    out = images.clone()
    h, w = images.shape[-2:]
    leftover = torch.zeros_like(masks)
    for i in range(images.shape[0]):
        mask = masks[i, 0].cpu()
        todo = mask.clone()
        for _ in range(max_patches):
            offset = _donor_offset(todo, mask)
            if offset is None:
                break
            ys, xs = todo.nonzero(as_tuple=True)
            sy, sx = ys + offset[0], xs + offset[1]
            inside = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
            ok = inside.clone()
            ok[inside] = ~mask[sy[inside], sx[inside]]
            ys, xs, sy, sx = ys[ok], xs[ok], sy[ok], sx[ok]
            out[i, :, ys, xs] = images[i, :, sy, sx]
            todo[ys, xs] = False
            if not todo.any():
                break
        leftover[i, 0] = todo
    if leftover.any():
        out = inpaint_harmonic(out, leftover)
    return out


def background_only(images: Tensor, masks: Tensor, method: str = "texture") -> Tensor:
    """The probe images with the object removed ``[N,C,H,W]``.

    Args:
        images: ``[N,C,H,W]``.
        masks: ``[N,1,H,W]`` bool.
        method: ``"texture"`` (default, :func:`fill_from_background`) or ``"harmonic"`` (:func:`inpaint_harmonic`, the
            smooth fill of probelens 0.1).
    """
    if method == "texture":
        return fill_from_background(images, masks)
    if method == "harmonic":
        return inpaint_harmonic(images, masks)
    raise ValueError(f"background_only: method must be 'texture' or 'harmonic', got {method!r}")


def neutral_background(images: Tensor, masks: Tensor) -> Tensor:
    """The average background colour over the whole batch ``[1,C,1,1]`` (a class-balanced probe makes it neutral)."""
    masks = _check(images, masks)
    keep = (~masks).float()
    return ((images.float() * keep).sum(dim=(0, 2, 3)) / keep.sum(dim=(0, 2, 3)).clamp_min(1)).view(1, -1, 1, 1)


def foreground_only(images: Tensor, masks: Tensor, fill: Tensor | float | None = None) -> Tensor:
    """The object on a neutral background ``[N,C,H,W]``.

    Args:
        images: ``[N,C,H,W]``.
        masks: ``[N,1,H,W]`` bool.
        fill: the background value(s) (a scalar or ``[1,C,1,1]``); default :func:`neutral_background`.
    """
    masks = _check(images, masks)
    if fill is None:
        fill = neutral_background(images, masks)
    fill_t = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    return torch.where(masks, images, fill_t.expand_as(images) if fill_t.dim() == 4 else fill_t)


def swap_partners(targets: Tensor, seed: int = 0) -> Tensor:
    """For each image, the index of a partner of another class ``[N]`` (-1 if every image has the same class).

    A seeded, balanced derangement across the whole probe: the images are shuffled within each class (private
    generator), grouped by class, largest class first, and image ``order[k]`` takes the background of
    ``order[(k + m) % N]``, ``m`` the largest class's size. While no class holds more than half the probe this is a
    permutation in which every partner is of another class, so every background is used exactly once; otherwise the
    images whose shifted partner shares their class take a seeded pick among the other classes' images.

    Example:
        >>> swap_partners(torch.tensor([0, 0, 1, 1])).tolist()
        [3, 2, 1, 0]
    """
    n = targets.shape[0]
    t = targets.cpu()
    partners = torch.full((n,), -1, dtype=torch.long)
    classes, counts = t.unique(return_counts=True)
    if len(classes) < 2:
        return partners.to(targets.device)
    generator = torch.Generator().manual_seed(int(seed))
    by_size = sorted(zip(counts.tolist(), classes.tolist()), key=lambda pair: (-pair[0], pair[1]))
    order: list[int] = []
    for _, c in by_size:
        members = (t == c).nonzero().flatten()
        order += members[torch.randperm(len(members), generator=generator)].tolist()
    shift = by_size[0][0]
    for k, i in enumerate(order):
        j = order[(k + shift) % n]
        if int(t[j]) == int(t[i]):  # only when one class holds more than half the probe
            others = (t != t[i]).nonzero().flatten()
            j = int(others[torch.randint(len(others), (1,), generator=generator)])
        partners[i] = j
    return partners.to(targets.device)


def background_swap(
    images: Tensor, masks: Tensor, targets: Tensor, backgrounds: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Each object pasted onto the (object-free) background of a probe image of another class.

    Args:
        images: ``[N,C,H,W]``.
        masks: ``[N,1,H,W]`` bool.
        targets: ``[N]`` labels, used to pick partners of another class (:func:`swap_partners`).
        backgrounds: precomputed :func:`background_only` images, to avoid inpainting twice.

    Returns:
        ``(swapped, valid)``: ``[N,C,H,W]`` images and a ``[N]`` bool telling which images had a partner.
    """
    masks = _check(images, masks)
    partners = swap_partners(targets)
    valid = partners >= 0
    bg = backgrounds if backgrounds is not None else background_only(images, masks)
    src = bg[partners.clamp_min(0)]
    return torch.where(masks, images, src), valid


def grow_masks(masks: Tensor, pixels: int) -> Tensor:
    """Masks dilated by ``pixels`` (a ``(2 pixels + 1)``-square structuring element) ``[N,1,H,W]`` bool.

    Example:
        >>> m = torch.zeros(1, 1, 5, 5, dtype=torch.bool); m[0, 0, 2, 2] = True
        >>> int(grow_masks(m, 1).sum()), int(grow_masks(m, 2).sum())
        (9, 25)
    """
    if pixels < 0:
        raise ValueError(f"pixels must be >= 0, got {pixels}")
    m = masks.bool()
    if pixels == 0:
        return m
    return F.max_pool2d(m.float(), 2 * pixels + 1, stride=1, padding=pixels) > 0.5


def shrink_masks(masks: Tensor, pixels: int) -> Tensor:
    """Masks eroded by ``pixels`` (the complement dilated, so a pixel stays only if its ``(2 pixels + 1)``-square
    neighbourhood inside the image is all mask) ``[N,1,H,W]`` bool. An image whose mask would vanish keeps its
    pixels farthest from the background instead (the largest erosion that leaves any pixel), so the object is never
    lost entirely.

    Example:
        >>> m = torch.zeros(1, 1, 5, 5, dtype=torch.bool); m[0, 0, 1:4, 1:4] = True
        >>> int(shrink_masks(m, 1).sum()), int(shrink_masks(m, 2).sum())
        (1, 1)
    """
    if pixels < 0:
        raise ValueError(f"pixels must be >= 0, got {pixels}")
    m = masks.bool()
    out = m
    for _ in range(pixels):  # one pixel at a time: an image stops at its last non-empty erosion
        step = ~grow_masks(~out, 1)
        keep = step.flatten(1).any(1).view(-1, *([1] * (m.dim() - 1)))
        out = torch.where(keep, step, out)
    return out


@dataclass
class MaskFit:
    """Per image, how the masks were fitted to the object (:func:`fit_mask_margins`).

    Attributes:
        removal_masks: the masks grown until what lies just outside them looks like the background ``[N,1,H,W]``.
        object_masks: the masks shrunk until what lies just inside them looks unlike the background ``[N,1,H,W]``.
        grown: pixels each mask grew by ``[N]``; shrunk: pixels each shrank by ``[N]``.
        outside_object: per image, the share of the one-pixel ring just outside the given mask that looks unlike the
            image's background ``[N]`` (about 0.05 for a mask on the object's outline; high for a tight mask).
        inside_background: per image, the share of the ring just inside the given mask that looks like the
            background ``[N]`` (about 0 on the outline; high for a loose mask or a box).
        grow_capped, shrink_capped: images whose ring still looked wrong at the largest margin ``[N]`` bool.
        mixed_edge: per image, the share of the one-pixel ring just inside the object mask whose estimated alpha
            (:func:`matte_alpha`) is below 0.5: mixed pixels, object and background blended ``[N]``; NaN where the
            image's object and background colours are not separable (the estimate is refused there). About 0 on the
            outline of a plain object, 0.8-1.0 for a soft matte thresholded at 0.1-0.3; a textured object whose
            colours run towards the background's (a spotted coat) scores high inside too, which
            :attr:`loose_matte` tells apart.
        loose_matte: images whose object mask is a soft matte thresholded loosely ``[N]`` bool: separable colours,
            a band of mixed pixels along the inner edge (``mixed_edge >= 0.5``) and an object-like core (at most a
            quarter mixed ``max_shrink`` pixels deeper).
        matte_background: per image, the estimated share of the kept object's weight that is the image's own
            background, ``mean(1 - alpha)`` over the object mask ``[N]`` (NaN where not separable).
        object_alpha: the estimated alpha ``[N,1,H,W]`` of the loose-matte images inside their object masks (1
            elsewhere and on every other image) when a quarter of the masks or more are loose mattes, else ``None``:
            the objects are then pasted with it (:func:`counterfactual_probes`).
    """

    removal_masks: Tensor
    object_masks: Tensor
    grown: Tensor
    shrunk: Tensor
    outside_object: Tensor
    inside_background: Tensor
    grow_capped: Tensor
    shrink_capped: Tensor
    mixed_edge: Tensor
    loose_matte: Tensor
    matte_background: Tensor
    object_alpha: Tensor | None = None


def _unlike_background(image: Tensor, far: Tensor) -> Tensor:
    """``[H,W]`` bool: pixels farther (L2 over channels) from the mean of the ``far`` pixels than 95% of those are."""
    mu = image[:, far].mean(1)
    z = (image - mu[:, None, None]).norm(dim=0)
    return z > torch.quantile(z[far].float(), 0.95)


MATTE_SEPARATION = 4.0
"""Object and background colours are separable when the object's colour lies this many times farther from the
background's mean than 95% of the background's own pixels do (coloured digits: 6-9; the stripes family: 0.6-2.6)."""


def matte_alpha(image: Tensor, mask: Tensor, far: Tensor) -> tuple[Tensor, float]:
    """Estimated alpha (the object's share of each pixel's colour) of one image ``[H,W]``, and how separable its
    object and background colours are.

    Two-colour matting on the line from the background's colour ``b`` (mean of the ``far`` pixels) to the object's
    ``f`` (mean of the 10% of the mask's pixels farthest from ``b``): ``alpha = clip((x - b).(f - b) / |f - b|^2,
    0, 1)``. The separation is ``|f - b|`` over the 95th percentile of the far pixels' distances to ``b``; below
    :data:`MATTE_SEPARATION` the estimate means nothing (an object coloured like its background).

    Args:
        image: ``[C,H,W]``.
        mask: ``[H,W]`` bool, the object (non-empty).
        far: ``[H,W]`` bool, background pixels away from the object.
    """
    x = image.float()
    b = x[:, far].mean(1)
    spread = torch.quantile((x[:, far] - b[:, None]).norm(dim=0), 0.95)
    inside = x[:, mask]
    d = (inside - b[:, None]).norm(dim=0)
    f = inside[:, d >= torch.quantile(d, 0.9)].mean(1)
    v = f - b
    length = float(v.norm())
    if length == 0.0:
        return torch.ones_like(x[0]), 0.0
    alpha = (((x - b[:, None, None]) * v[:, None, None]).sum(0) / (length * length)).clamp(0, 1)
    return alpha, length / max(float(spread), 1e-12)


def fit_mask_margins(images: Tensor, masks: Tensor, max_grow: int, max_shrink: int) -> MaskFit:
    """Fit masks as users have them (loose, tight, boxes) to the object, per image, from the image itself.

    A pixel *looks like the background* when its colour is within the 95th percentile of the distances of the
    image's far background (the pixels more than ``max_grow + 1`` pixels away from the mask) to their mean colour.
    The removal mask grows one pixel at a time while more than a quarter of the ring just outside it looks unlike
    the background (the object's soft edge or a part the mask missed), up to ``max_grow`` pixels; the object mask
    shrinks one pixel at a time while more than three quarters of the ring just inside it look like the background (the
    margin of a loose mask or a box), up to ``max_shrink`` pixels and never to nothing. A mask on the object's outline
    changes by 0 pixels.

    A soft matte thresholded loosely (``alpha > 0.1``) is not a box: its inner ring is ink blended with background,
    not plain background, so it is not shrunk. It is found by its *mixed pixels* (:func:`matte_alpha` below 0.5): a
    band of them along the inner edge of the object mask and an object-like core (:attr:`MaskFit.loose_matte`). When a
    quarter of the masks or more are such mattes, :attr:`MaskFit.object_alpha` holds their estimated alpha, with which
    the objects are pasted (their own background replaced by the new one); otherwise, and for images whose colours are
    not separable (:data:`MATTE_SEPARATION`), nothing is estimated and the objects are pasted as they are.

    Args:
        images: ``[N,C,H,W]``.
        masks: ``[N,1,H,W]`` bool.
        max_grow: largest growth in pixels.
        max_shrink: largest shrinkage in pixels.
    """
    masks = _check(images, masks)
    removal, kept = masks.clone(), masks.clone()
    n = images.shape[0]
    grown, shrunk = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    outside, inside = torch.full((n,), math.nan), torch.full((n,), math.nan)
    grow_capped, shrink_capped = torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    mixed_edge, matte_background = torch.full((n,), math.nan), torch.full((n,), math.nan)
    loose_matte = torch.zeros(n, dtype=torch.bool)
    alphas = torch.ones(n, 1, *images.shape[-2:], device=images.device)
    for i in range(n):
        m = masks[i : i + 1]
        x = images[i].float()
        far = ~grow_masks(m, max_grow + 1)[0, 0]
        if int(far.sum()) < 16:
            far = ~m[0, 0]
        if int(far.sum()) < 16:
            continue  # no background to compare with: the mask is kept as given
        unlike = _unlike_background(x, far)
        k = 0
        while True:
            ring = grow_masks(m, k + 1)[0, 0] & ~grow_masks(m, k)[0, 0]
            share = float(unlike[ring].float().mean()) if bool(ring.any()) else 0.0
            if k == 0:
                outside[i] = share
            if share <= 0.25:
                break
            if k == max_grow:
                grow_capped[i] = True
                break
            k += 1
        s = 0
        while True:
            inner = shrink_masks(m, s + 1)[0, 0]
            core = shrink_masks(m, s)[0, 0]
            ring = core & ~inner
            share = float((~unlike[ring]).float().mean()) if bool(ring.any()) else 0.0
            if s == 0:
                inside[i] = share
            if share <= 0.75 or torch.equal(inner, core):  # not background-like, or nothing left to shrink
                break
            if s == max_shrink:
                shrink_capped[i] = True
                break
            s += 1
        removal[i] = grow_masks(m, k)[0]
        kept[i] = shrink_masks(m, s)[0]
        grown[i], shrunk[i] = k, s
        obj = kept[i : i + 1]
        ring = obj[0, 0] & ~shrink_masks(obj, 1)[0, 0]
        core = shrink_masks(obj, max_shrink)[0, 0]
        if not (bool(ring.any()) and bool(core.any())) or torch.equal(core, obj[0, 0]):
            continue  # too thin to tell an edge from a core
        alpha, separation = matte_alpha(x, obj[0, 0], far)
        if separation < MATTE_SEPARATION:
            continue  # object and background colours not separable: no alpha to estimate
        mixed = alpha < 0.5
        mixed_edge[i] = float(mixed[ring].float().mean())
        matte_background[i] = float((1 - alpha)[obj[0, 0]].mean())
        if mixed_edge[i] >= 0.5 and float(mixed[core].float().mean()) <= 0.25:
            loose_matte[i] = True
            alphas[i, 0] = torch.where(obj[0, 0], alpha, torch.ones_like(alpha))
    object_alpha = alphas if 4 * int(loose_matte.sum()) >= n > 0 else None
    return MaskFit(
        removal, kept, grown, shrunk, outside, inside, grow_capped, shrink_capped,
        mixed_edge, loose_matte, matte_background, object_alpha,
    )  # fmt: skip


@dataclass
class CounterfactualProbes:
    """The three edited copies of a probe batch, which swaps are valid and whose background each image got.

    ``removal_masks`` are the regions filled in :attr:`background_only` (and in the partner's background of a swap),
    ``object_masks`` the regions kept in :attr:`foreground_only` and pasted in :attr:`swapped` (see
    :func:`counterfactual_probes`'s margins).
    """

    background_only: Tensor
    foreground_only: Tensor
    swapped: Tensor
    swap_valid: Tensor
    partners: Tensor
    removal_masks: Tensor | None = None
    object_masks: Tensor | None = None


def counterfactual_probes(
    images: Tensor,
    masks: Tensor,
    targets: Tensor,
    seed: int = 0,
    removal_margin: int = 0,
    object_margin: int = 0,
    removal_masks: Tensor | None = None,
    object_masks: Tensor | None = None,
    object_alpha: Tensor | None = None,
) -> CounterfactualProbes:
    """Build all counterfactual copies of a probe batch (the object region is filled once per image).

    Masks as users have them are loose (a box, a threshold low on a soft edge: background inside the mask) or tight (a
    threshold high on a soft edge: object outside it). The margins make the edits robust to both: the object is
    *removed* with the mask grown by ``removal_margin`` pixels (:func:`grow_masks`), so no ghost of a tight mask's
    outline stays in the background, and only the mask shrunk by ``object_margin`` pixels (:func:`shrink_masks`) is
    *kept* as the object, so a loose mask carries less of its own background into "object only" and onto a swapped
    background. Between the two, a swapped image shows the partner's background.

    Args:
        images: ``[N,C,H,W]``.
        masks: ``[N,1,H,W]`` bool.
        targets: ``[N]`` labels.
        seed: seed of the swap partners (:func:`swap_partners`).
        removal_margin: pixels the mask grows by before the object is removed (0: the mask as given).
        object_margin: pixels the mask shrinks by for the object that is kept or pasted (0: the mask as given).
        removal_masks, object_masks: the two regions given directly (e.g. :func:`fit_mask_margins`'s), in place of
            the margins.
        object_alpha: the kept object's alpha ``[N,1,H,W]`` (e.g. :attr:`MaskFit.object_alpha`, 1 on pixels of pure
            object). The pasted object is then re-composited, :func:`paste_objects`: its mixed pixels lose their
            own background's share to the new background. ``None``: pasted as they are.
    """
    masks = _check(images, masks)
    removal = _check(images, removal_masks) if removal_masks is not None else grow_masks(masks, removal_margin)
    kept = _check(images, object_masks) if object_masks is not None else shrink_masks(masks, object_margin)
    bg = background_only(images, removal)
    partners = swap_partners(targets, seed=seed)
    valid = partners >= 0
    swapped = paste_objects(images, kept, bg[partners.clamp_min(0)], bg, object_alpha)
    neutral = neutral_background(images, removal)
    if object_alpha is None:
        fg = foreground_only(images, kept, fill=neutral)
    else:
        fg = paste_objects(images, kept, neutral.to(images.dtype).expand_as(images), bg, object_alpha)
    return CounterfactualProbes(bg, fg, swapped, valid, partners, removal, kept)


def paste_objects(
    images: Tensor, masks: Tensor, backgrounds: Tensor, own_backgrounds: Tensor, alpha: Tensor | None = None
) -> Tensor:
    """The objects (``masks``) of ``images`` pasted onto ``backgrounds`` ``[N,C,H,W]``.

    Without ``alpha`` the object's pixels are copied as they are. With it (the object's share of each pixel, as
    estimated by :func:`matte_alpha`), a pixel ``x = alpha f + (1 - alpha) b_own`` of a soft edge becomes ``x + (1 -
    alpha) (b_new - b_own)``: its own background's share goes to the new background, ``b_own`` read from
    ``own_backgrounds`` (the image with its object removed, :func:`background_only`).

    Args:
        images: ``[N,C,H,W]``.
        masks: ``[N,1,H,W]`` bool, the pixels pasted.
        backgrounds: ``[N,C,H,W]``, what the objects are pasted onto.
        own_backgrounds: ``[N,C,H,W]``, each image's own background under its object.
        alpha: ``[N,1,H,W]`` in ``[0, 1]``, or ``None``.
    """
    masks = _check(images, masks)
    if alpha is None:
        return torch.where(masks, images, backgrounds)
    a = alpha.to(device=images.device, dtype=images.dtype)
    return torch.where(masks, images + (1 - a) * (backgrounds - own_backgrounds), backgrounds)
