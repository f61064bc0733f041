"""The pure shortcut evaluation: mask morphology against scipy, the counterfactual batch's margins against the
generator's ground truth (the coloured digits' soft alpha), and ``shortcut_report`` against hand-derived numbers."""

import itertools
import math

import pytest
import torch
from scipy import ndimage

from probelens.data import SnowDesertDataset
from probelens.data.colored_digits import _BACKGROUNDS, _INK, ColoredDigitsDataset
from probelens.data.cue_scenes import generate_cue_scenes
from probelens.metrics import (
    counterfactual_batch,
    counterfactual_probes,
    fit_mask_margins,
    grow_masks,
    mask_margin_caps,
    shortcut_report,
    shrink_masks,
)
from probelens.metrics.counterfactual import paste_objects


@pytest.mark.parametrize("pixels", [1, 2, 3])
def test_grow_and_shrink_equal_scipy_binary_morphology(pixels):
    g = torch.Generator().manual_seed(pixels)
    masks = torch.zeros(6, 1, 24, 28, dtype=torch.bool)
    for i in range(6):  # random rectangles and blobs, large enough that an erosion leaves something
        y, x = (int(v) for v in torch.randint(0, 10, (2,), generator=g))
        masks[i, 0, y : y + 12, x : x + 14] = True
        masks[i, 0] |= torch.rand(24, 28, generator=g) > 0.85
    square = torch.ones(2 * pixels + 1, 2 * pixels + 1, dtype=torch.bool).numpy()
    for i in range(6):
        m = masks[i, 0].numpy()
        dilated = ndimage.binary_dilation(m, structure=square)
        eroded = ndimage.binary_erosion(m, structure=square, border_value=1)  # outside the image is no background
        assert (grow_masks(masks, pixels)[i, 0].numpy() == dilated).all()
        assert (shrink_masks(masks, pixels)[i, 0].numpy() == eroded).all()
    assert torch.equal(grow_masks(masks, 0), masks) and torch.equal(shrink_masks(masks, 0), masks)


def test_shrinking_never_loses_the_object_and_negative_margins_are_refused():
    masks = torch.zeros(2, 1, 9, 9, dtype=torch.bool)
    masks[0, 0, 3:6, 3:6] = True  # a 3x3 square: one erosion leaves its centre, a second would leave nothing
    masks[1, 0, 1:8, 1:8] = True
    out = shrink_masks(masks, 2)
    assert out[0, 0].nonzero().tolist() == [[4, 4]]
    assert int(out[1, 0].sum()) == 9  # 7x7 -> 3x3
    with pytest.raises(ValueError, match="pixels must be >= 0, got -1"):
        grow_masks(masks, -1)
    with pytest.raises(ValueError, match=r"margin must be None \(fitted\) or >= 0 pixels, got -1"):
        counterfactual_batch(torch.zeros(2, 3, 9, 9), masks, torch.tensor([0, 1]), margin=-1)


def test_margin_zero_is_the_masks_as_given_and_the_margins_edit_only_the_boundary():
    data = ColoredDigitsDataset("val", p=0.8, seed=1)
    idx = torch.arange(8)
    images, targets, masks = data.images[idx], data.labels[idx], data.masks(0.5)[idx]
    old = counterfactual_probes(images, masks, targets)
    cf = counterfactual_batch(images, masks, targets, margin=0, check=False)
    for name in ("background_only", "foreground_only", "swapped"):
        assert torch.equal(getattr(cf.probes, name), getattr(old, name))
    assert cf.images.shape[0] == 3 * 8 and torch.equal(cf.targets, targets.repeat(3)) and cf.fit is None
    cf = counterfactual_batch(images, masks, targets)  # fitted, with the leakage check
    assert cf.images.shape[0] == 4 * 8 and cf.fit is not None
    removed, kept = cf.probes.removal_masks, cf.probes.object_masks
    assert torch.equal(removed, cf.fit.removal_masks) and bool((removed >= masks).all())  # grown, never shrunk
    outside = ~removed.expand_as(images)
    assert torch.equal(cf.probes.background_only[outside], images[outside])  # the background is untouched
    inside = kept.expand_as(images)
    assert torch.equal(cf.probes.swapped[inside], images[inside])  # the kept object is pasted as it is
    partner_bg = cf.probes.background_only[cf.probes.partners]
    assert torch.equal(cf.probes.swapped[~inside], partner_bg[~inside])


def test_the_mask_fit_follows_the_generators_ground_truth():
    """Coloured digits: the strokes' alpha is the truth. Masks thresholded at 0.1-0.7 are grown until at most 5% of
    the ink is left outside the removed region (0.24-0.48 left as given at 0.5-0.7); at 0.9 the object extends beyond
    the largest growth on a quarter of the images or more (the monitor warns). Snow/desert: exact masks are left as
    they are; a box (the mask grown by 4 px) is shrunk towards the object for pasting."""
    data = ColoredDigitsDataset("val", p=0.5, seed=1)
    images, alpha = data.images[:32], data.alpha[:32]
    caps = mask_margin_caps(images.shape[-2:])
    assert caps == (4, 2)
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        fit = fit_mask_margins(images, alpha > t, *caps)
        ink_left = float((alpha * ~fit.removal_masks).sum() / alpha.sum())
        given = float((alpha * ~(alpha > t)).sum() / alpha.sum())
        if t <= 0.7:
            assert ink_left <= 0.05 < given or t == 0.1, (t, ink_left, given)
            assert 4 * int(fit.grow_capped.sum()) < 32
        else:
            assert 4 * int(fit.grow_capped.sum()) >= 32 and ink_left < given
        assert float(fit.outside_object.nanmean()) > (0.2 if t == 0.1 else 0.9)  # object just outside the mask
    scenes = SnowDesertDataset(n=32, size=64, p=0.5, seed=1)
    exact = fit_mask_margins(scenes.images, scenes.masks, *mask_margin_caps((64, 64)))
    assert int(exact.grown.sum()) == 0 and int(exact.shrunk.sum()) == 0
    assert float(exact.outside_object.nanmean()) < 0.1 and float(exact.inside_background.nanmean()) < 0.25
    box = grow_masks(scenes.masks, 4)
    fitted = fit_mask_margins(scenes.images, box, *mask_margin_caps((64, 64)))
    assert float(fitted.inside_background.nanmean()) > 0.8 and float(fitted.shrunk.float().mean()) >= 3

    def iou(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a & b).sum() / (a | b).sum())

    assert iou(fitted.object_masks, scenes.masks) > iou(box, scenes.masks) + 0.15


def test_the_removal_margin_removes_the_ink_a_tight_mask_leaves_behind():
    """Ground truth from the generator: the strokes' alpha. A tight mask (alpha > 0.7) leaves the soft edge of the
    digit (about half its ink) outside the removed region, a ghost of the digit in "background only"; growing the
    removal mask takes it away pixel by pixel, and the background-only image really loses that ink."""
    data = ColoredDigitsDataset("val", p=0.5, seed=1, normalize=False)
    alpha, images, targets = data.alpha[:64], data.images[:64], data.labels[:64]
    tight = alpha > 0.7
    ink = [float((alpha * ~grow_masks(tight, k)).sum() / alpha.sum()) for k in range(5)]
    assert ink[0] > 0.4 and all(a > b for a, b in itertools.pairwise(ink)) and ink[3] < 0.1
    ink_colour = torch.tensor([0.95, 0.95, 0.85]).view(1, 3, 1, 1)

    def brightest(x: torch.Tensor) -> float:  # how close the brightest pixel comes to the ink (0: ink)
        return float((x - ink_colour).norm(dim=1).flatten(1).min(1).values.median())

    assert brightest(counterfactual_batch(images, tight, targets, margin=0, check=False).probes.background_only) < 0.3
    assert brightest(counterfactual_batch(images, tight, targets, margin=4, check=False).probes.background_only) > 0.7


def _own_background_share(cf, data, alpha: torch.Tensor, swapped: torch.Tensor | None = None) -> float:
    """Read from the swapped images' colours: of the background weight ``1 - alpha`` inside the pasted objects, the
    share that is still the image's own background (1: pasted as given; 0: all the partner's). Per blended pixel
    (``1 - alpha >= 0.2``) of an object pasted onto the other colour, ``(y - alpha ink) / (1 - alpha)`` is projected
    on the line from the partner's background colour to its own."""
    ink = _INK.view(3, 1)
    num = den = 0.0
    for i, j in enumerate(cf.probes.partners.tolist()):
        own, new = _BACKGROUNDS[data.colors[i]], _BACKGROUNDS[data.colors[j]]
        if bool(data.colors[i] == data.colors[j]):
            continue
        a = alpha[i, 0]
        pick = cf.probes.object_masks[i, 0] & (1 - a >= 0.2)
        y = (cf.probes.swapped if swapped is None else swapped)[i][:, pick]
        w = 1 - a[pick]
        part = (y - a[pick] * ink) / w
        share = ((part - new[:, None]) * (own - new)[:, None]).sum(0) / (own - new).dot(own - new)
        num += float((share * w).sum())
        den += float(w.sum())
    return num / den


def test_loose_soft_mattes_are_found_and_pasted_without_their_own_background():
    """Coloured digits (the strokes' alpha is the truth): a soft matte thresholded at 0.1 or 0.3 carries 35-46% of
    its own background by weight inside the mask; the fit finds every such mask, estimates the alpha within 0.1 of
    the truth on average, and the swapped images' blended pixels, read back from their colours, hold at most 15% of
    their own background (about 100% pasted as given). Thresholds 0.5-0.9 and the families' exact masks (snow/desert
    at 32 and 64 px, stripes, markers) are not touched: their swaps are the masks pasted as they are, bit for bit."""
    data = ColoredDigitsDataset("val", p=0.5, seed=1, normalize=False)
    idx = torch.arange(32)
    images, alpha, targets = data.images[idx], data.alpha[idx], data.labels[idx]
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        masks = alpha > t
        cf = counterfactual_batch(images, masks, targets, check=False)
        fit = cf.fit
        kept = cf.probes.object_masks.float()
        weight = float(((1 - alpha) * kept).sum() / kept.sum())  # own background inside the pasted object
        if t <= 0.3:
            given = counterfactual_batch(images, masks, targets, margin=0, check=False)
            assert weight > 0.3 and int(fit.loose_matte.sum()) >= 30 and fit.object_alpha is not None, t
            assert float(fit.mixed_edge.nanmean()) > 0.7
            assert abs(float(fit.matte_background.nanmean()) - weight) < 0.1  # the estimate said in the warning
            error = float(((fit.object_alpha - alpha).abs() * kept).sum() / kept.sum())
            assert error < 0.1, (t, error)
            assert _own_background_share(given, data, alpha) > 0.9
            assert _own_background_share(cf, data, alpha) < 0.15, t
            if t == 0.1:  # the leakage check's swaps (the object removed with a wider region) are pasted alike
                checked = counterfactual_batch(images, masks, targets)
                assert _own_background_share(checked, data, alpha, checked.check_grown) < 0.15
            outside = ~cf.probes.object_masks.expand_as(images)  # only the pasted object changed
            partner_bg = cf.probes.background_only[cf.probes.partners]
            assert torch.equal(cf.probes.swapped[outside], partner_bg[outside])
        else:
            assert int(fit.loose_matte.sum()) <= 1 and fit.object_alpha is None, t
            partner_bg = cf.probes.background_only[cf.probes.partners]
            assert torch.equal(cf.probes.swapped, torch.where(cf.probes.object_masks, images, partner_bg))
    scenes = [(s.images, s.masks) for s in (SnowDesertDataset(n=32, size=z, p=0.5, seed=1) for z in (32, 64))]
    scenes += [
        (c.images, c.masks)
        for c in (generate_cue_scenes(32, family=f, object_kind=k, seed=1) for f, k in
                  itertools.product(("stripes", "markers"), ("shape", "colour")))
    ]  # fmt: skip
    for images, masks in scenes:
        fit = fit_mask_margins(images, masks, *mask_margin_caps(images.shape[-2:]))
        assert fit.object_alpha is None and 4 * int(fit.loose_matte.sum()) < 32
        assert 8 * int(fit.loose_matte.sum()) < 32  # at most 3 of 32 spotted coats look like a matte (measured 0-2)
    cf = counterfactual_batch(*scenes[0], torch.arange(32) % 2)
    assert torch.equal(cf.probes.swapped, paste_objects(scenes[0][0], cf.probes.object_masks,
                       cf.probes.background_only[cf.probes.partners], cf.probes.background_only))  # fmt: skip


def _logits(preds: list[int]) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(preds), 2).float() * 4 - 2


def test_shortcut_report_against_hand_derived_numbers():
    # 8 probe images, classes 0 0 0 0 1 1 1 1, groups 0 0 1 1 1 1 0 0; the model is right on 0,1,2 and 4,5,6,7
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    groups = torch.tensor([0, 0, 1, 1, 1, 1, 0, 0])
    preds = [0, 0, 0, 1, 1, 1, 1, 1]
    masks = torch.zeros(8, 1, 8, 8, dtype=torch.bool)
    masks[:, :, 2:6, 2:6] = True
    images = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cf = counterfactual_batch(images, masks, targets, margin=1)
    bg = [0, 1, 0, 1, 0, 1, 0, 1]  # background only: 4 of 8 right
    fg = [0, 0, 0, 0, 1, 1, 1, 0]  # object only: 7 of 8 right
    swap = [1, 1, 1, 1, 1, 1, 1, 1]  # every class-0 object flips (3 of 4 were 0: 3 flips), no class-1 object does
    grown = [1, 1, 0, 1, 1, 1, 0, 1]  # 2 class-0 flips, 1 class-1 flip
    cf_logits = _logits(bg + fg + swap + grown)
    r = shortcut_report(
        _logits(preds),
        targets,
        class_tags=["a", "b"],
        group_tags=["x", "y"],
        masks=masks,
        groups=groups,
        counterfactuals=cf,
        counterfactual_logits=cf_logits,
    )
    s = r.scalars
    assert s["shortcut/probe_accuracy"] == 7 / 8
    assert s["shortcut/background_only_accuracy"] == 4 / 8 and s["shortcut/foreground_only_accuracy"] == 7 / 8
    assert s["shortcut/foreground_only_drop"] == 0.0
    # class 0: preds 0,0,0,1 -> swapped 1,1,1,1: 3 of 4 flip; class 1: none
    assert s["shortcut/background_swap_flip_rate/a"] == 0.75 and s["shortcut/background_swap_flip_rate/b"] == 0.0
    assert s["shortcut/background_swap_flip_rate"] == 3 / 8
    assert r.scores["masks"] == 0.75 and r.worst_class == 0
    # groups: class 0 group 0 (images 0, 1) right 2/2, group 1 (images 2, 3) 1/2; class 1 both cells 2/2
    assert s["shortcut/group_accuracy/a/x"] == 1.0 and s["shortcut/group_accuracy/a/y"] == 0.5
    assert s["shortcut/group_gap/a"] == 0.5 and s["shortcut/group_gap/b"] == 0.0
    assert r.scores["groups"] == 0.5 and s["shortcut/worst_group_accuracy"] == 0.5
    assert r.gate == s["shortcut/agreeing_group_accuracy"] == 1.0 and r.gate_is_groups
    assert s["shortcut/score"] == 0.75 and s["shortcut/score/masks"] == 0.75 and s["shortcut/score/groups"] == 0.5
    # leakage check: class 0 flips 2 of 4, class 1 flips 1 of 4 -> score 0.5, 0.25 below the verdict's 0.75
    assert s["shortcut/mask_sensitivity"] == r.mask_sensitivity == 0.25
    assert r.chance == 0.5 and r.nonfinite is None
    assert [p.tolist() for p in r.counterfactual_predictions] == [bg, fg, swap]


def test_non_finite_outputs_give_nan_numbers_and_say_where():
    targets = torch.tensor([0, 0, 1, 1])
    masks = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    masks[:, :, 2:6, 2:6] = True
    cf = counterfactual_batch(torch.zeros(4, 3, 8, 8), masks, targets)
    logits = _logits([0, 0, 1, 1])
    bad = logits.clone()
    bad[1, 0] = math.nan
    r = shortcut_report(bad, targets, class_tags=["a", "b"], masks=masks, counterfactuals=cf,
                        counterfactual_logits=_logits([0] * 16))  # fmt: skip
    assert r.nonfinite == "the model's outputs on 1 of 4 probe images"
    assert all(math.isnan(v) for v in r.scalars.values()) and "shortcut/score" in r.scalars
    assert math.isnan(r.scores["masks"]) and r.cam is None
    cf_bad = _logits([0] * 16)
    cf_bad[7] = math.inf
    r = shortcut_report(logits, targets, class_tags=["a", "b"], masks=masks, counterfactuals=cf,
                        counterfactual_logits=cf_bad)  # fmt: skip
    assert r.nonfinite is not None and "counterfactual images" in r.nonfinite
    assert all(math.isnan(v) for v in r.scalars.values())
    with pytest.raises(ValueError, match="masks need counterfactuals"):
        shortcut_report(logits, targets, class_tags=["a", "b"], masks=masks)
