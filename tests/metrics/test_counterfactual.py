import pytest
import torch

from probelens.metrics import (
    background_only,
    background_swap,
    counterfactual_probes,
    fill_from_background,
    foreground_only,
    inpaint_harmonic,
    neutral_background,
    swap_partners,
)


def scene(n=4, h=32, w=40):
    """Smooth gradient backgrounds with a high-frequency checkerboard object in a box."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    bg = torch.stack([xx, yy, 0.5 * (xx + yy)]).expand(n, 3, h, w).clone()
    bg += torch.arange(n).view(n, 1, 1, 1) * 0.1
    masks = torch.zeros(n, 1, h, w, dtype=torch.bool)
    masks[:, :, 8:20, 10:26] = True
    checker = ((torch.arange(h).view(-1, 1) + torch.arange(w)) % 2).float() * 4 - 2
    images = torch.where(masks, bg + checker, bg)
    return images, masks, bg


def test_inpainting_removes_the_object_and_keeps_the_background():
    images, masks, bg = scene()
    out = inpaint_harmonic(images, masks)
    keep = ~masks.expand_as(images)
    assert torch.equal(out[keep], images[keep])
    # the checkerboard (std ~2) is gone: the fill is close to the smooth (linear, hence harmonic) background
    inside = masks.expand_as(images)
    assert (out[inside] - bg[inside]).abs().max() < 0.05
    assert torch.equal(background_only(images, masks, method="harmonic"), out)
    with pytest.raises(ValueError, match=r"method must be 'texture' or 'harmonic', got 'smooth'"):
        background_only(images, masks, method="smooth")


def stripes(n=3, h=40, w=48, period=6):
    """Vertical stripes (a texture a smooth fill cannot continue) with a wide box object."""
    x = torch.arange(w).float()
    bg = (0.5 + 0.4 * torch.sin(2 * torch.pi * x / period)).expand(n, 3, h, w).clone()
    bg += torch.arange(n).view(n, 1, 1, 1) * 0.05
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = torch.stack([(yy >= 14) & (yy < 22) & (xx >= 12 + 3 * k) & (xx < 32 + 3 * k) for k in range(n)])[:, None]
    images = torch.where(masks, torch.full_like(bg, 2.0), bg)
    return images, masks, bg


def test_texture_fill_continues_the_background_texture():
    images, masks, bg = stripes()
    out = fill_from_background(images, masks)
    keep, inside = ~masks.expand_as(images), masks.expand_as(images)
    assert torch.equal(out[keep], images[keep])
    assert (out[inside] <= 1.0).all()  # no object pixel copied into the hole
    # vertical stripes are invariant under vertical shifts: the nearest donor of a wide object is straight above or
    # below, and the
    # fill reproduces the true background exactly; the harmonic fill flattens the stripes
    assert (out[inside] - bg[inside]).abs().max() < 1e-6
    smooth = inpaint_harmonic(images, masks)
    assert (smooth[inside] - bg[inside]).abs().mean() > 0.1
    assert torch.equal(background_only(images, masks), out)  # the default


def test_texture_fill_of_an_object_too_large_for_one_copy():
    """An object covering most of the image: no shift fits the silhouette, so several patches and the harmonic
    fallback fill it; every pixel is filled with background values, none is left as object."""
    images, masks, bg = stripes(n=2, h=16, w=16)
    masks = torch.zeros_like(masks)
    masks[:, :, 2:15, 1:14] = True
    images = torch.where(masks, torch.full_like(bg, 2.0), bg)
    out = fill_from_background(images, masks)
    assert out.shape == images.shape and torch.isfinite(out).all()
    assert (out <= bg.max() + 1e-6).all() and (out >= bg.min() - 1e-6).all()
    full = torch.ones_like(masks)  # nothing to copy from: the harmonic fallback keeps it finite
    assert torch.isfinite(fill_from_background(images, full)).all()


def test_foreground_only_uses_one_neutral_colour():
    images, masks, _ = scene()
    out = foreground_only(images, masks)
    inside = masks.expand_as(images)
    assert torch.equal(out[inside], images[inside])
    neutral = neutral_background(images, masks)
    outside = out.permute(1, 0, 2, 3)[:, ~masks[:, 0]]
    torch.testing.assert_close(outside, neutral.view(3, 1).expand_as(outside))
    assert torch.equal(foreground_only(images, masks, fill=0.0)[~inside], torch.zeros(int((~inside).sum())))


def test_swap_partners_are_of_another_class_and_deterministic():
    targets = torch.tensor([0, 0, 1, 1, 0, 2])
    partners = swap_partners(targets)
    assert all(targets[p] != targets[i] for i, p in enumerate(partners.tolist()))
    assert torch.equal(partners, swap_partners(targets))
    assert swap_partners(torch.tensor([1, 1])).tolist() == [-1, -1]


@pytest.mark.parametrize("counts", [(16, 16), (10, 12, 5), (4, 4, 4, 4)])
def test_swap_partners_use_every_background_once_when_the_classes_allow(counts):
    """A class-sorted probe (as from_dataset(per_class=True) returns it): the partners are a permutation (every
    background used exactly once), every partner of another class, and each class's objects land on backgrounds
    of several images, not on one."""
    targets = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    partners = swap_partners(targets)
    assert sorted(partners.tolist()) == list(range(len(targets)))
    assert (targets[partners] != targets).all()
    for k, c in enumerate(counts):
        assert len(set(partners[targets == k].tolist())) == c
    assert not torch.equal(partners, swap_partners(targets, seed=1))  # seeded


def test_swap_partners_when_one_class_holds_more_than_half():
    targets = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    partners = swap_partners(targets)
    assert (targets[partners] != targets).all()
    assert set(partners[targets == 1].tolist()) <= set(range(5))


def test_background_swap_pastes_the_object_on_the_partner_background():
    images, masks, _ = scene()
    targets = torch.tensor([0, 1, 0, 1])
    swapped, valid = background_swap(images, masks, targets)
    assert valid.all()
    partners = swap_partners(targets)
    inside = masks[0, 0]
    filled = fill_from_background(images, masks)
    for i, j in enumerate(partners.tolist()):
        assert torch.equal(swapped[i][:, inside], images[i][:, inside])
        assert torch.equal(swapped[i][:, ~inside], images[j][:, ~inside])
        assert torch.equal(swapped[i], torch.where(masks[i], images[i], filled[j]))
    cf = counterfactual_probes(images, masks, targets)
    assert torch.equal(cf.swapped, swapped) and torch.equal(cf.partners, partners)


def test_swapped_backgrounds_carry_no_ghost_of_the_partners_object():
    """Objects at different places: where the partner's object was and the pasted one is not, the swapped image
    shows the partner's background texture, not a smooth patch (the old harmonic fill left one)."""
    images, masks, bg = stripes(n=2)
    masks = torch.zeros_like(masks)
    masks[0, :, 4:12, 4:14] = True
    masks[1, :, 18:28, 30:44] = True
    images = torch.where(masks, torch.full_like(bg, 2.0), bg)
    swapped, _ = background_swap(images, masks, torch.tensor([0, 1]))
    ghost = masks[1, 0] & ~masks[0, 0]  # image 0 got image 1's background
    assert (swapped[0][:, ghost] - bg[1][:, ghost]).abs().max() < 1e-6
