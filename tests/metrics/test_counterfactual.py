import pytest
import torch

from probelens.metrics import (
    background_only,
    background_swap,
    counterfactual_probes,
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
    assert background_only(images, masks).shape == images.shape


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
    for i, j in enumerate(partners.tolist()):
        assert torch.equal(swapped[i][:, inside], images[i][:, inside])
        assert torch.equal(swapped[i][:, ~inside], images[j][:, ~inside])
    cf = counterfactual_probes(images, masks, targets)
    assert torch.equal(cf.swapped, swapped)
