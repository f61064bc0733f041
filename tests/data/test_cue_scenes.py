import pytest
import torch

from probelens.data import CUE_FAMILIES, SHAPE_NAMES, CueScenesDataset, generate_cue_scenes


@pytest.mark.parametrize("family", CUE_FAMILIES)
def test_scenes_are_deterministic_balanced_and_leave_the_global_rng_alone(family):
    state = torch.get_rng_state()
    a = generate_cue_scenes(64, family=family, seed=3, with_backgrounds=True)
    assert torch.equal(torch.get_rng_state(), state)
    b = generate_cue_scenes(64, family=family, seed=3, with_backgrounds=True)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, generate_cue_scenes(64, family=family, seed=4).images)
    assert a.images.shape == (64, 3, 32, 32) and a.images.min() >= 0 and a.images.max() <= 1
    assert a.labels.bincount().tolist() == [32, 32]
    # the background image is the scene without the object
    outside = ~a.masks.expand_as(a.images)
    assert torch.equal(a.images[outside], a.background_images[outside])
    area = a.masks.float().mean(dim=(1, 2, 3))
    assert float(area.min()) > 0.05 and float(area.max()) < 0.25
    assert not a.masks[..., 0, :].any() and not a.masks[..., -1].any()  # the object never touches the border


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_the_background_cue_agrees_with_the_class_with_probability_p(p):
    s = generate_cue_scenes(400, family="markers", p=p, seed=0)
    agree = float((s.backgrounds == s.labels).float().mean())
    assert abs(agree - p) < 0.07


def test_the_cues_are_what_the_docstring_says():
    stripes = generate_cue_scenes(200, family="stripes", p=0.5, seed=0)
    # horizontal stripes vary along y, vertical ones along x (measured on the background only)
    bg = stripes.images.mean(1)
    keep = ~stripes.masks[:, 0]
    dy = ((bg[:, 1:] - bg[:, :-1]).abs() * (keep[:, 1:] & keep[:, :-1])).flatten(1).sum(1)
    dx = ((bg[..., 1:] - bg[..., :-1]).abs() * (keep[..., 1:] & keep[..., :-1])).flatten(1).sum(1)
    assert ((dy > dx) == (stripes.backgrounds == 0)).float().mean() > 0.95
    markers = generate_cue_scenes(200, family="markers", p=0.5, seed=0, with_backgrounds=True)
    green = markers.background_images[:, 1] > markers.background_images[:, 0] + 0.3
    has_green = (green & markers.cue_masks[:, 0]).flatten(1).any(1)
    assert torch.equal(has_green, markers.backgrounds == 0)
    assert not stripes.cue_masks.any() and markers.cue_masks.float().mean() < 0.1


def test_object_kinds_and_an_uninformative_object():
    colour = generate_cue_scenes(400, family="stripes", object_kind="colour", object_cue=1.0, seed=0)
    obj = colour.images.permute(1, 0, 2, 3)[:, colour.masks[:, 0]]  # [3, pixels]
    owner = colour.labels.view(-1, 1, 1).expand(-1, 32, 32)[colour.masks[:, 0]]
    red_minus_blue = obj[0] - obj[2]
    assert (red_minus_blue[owner == 0] > 0).float().mean() > 0.95  # discs reddish, squares bluish
    assert (red_minus_blue[owner == 1] < 0).float().mean() > 0.95

    def looks_square(sample):
        """A rotation-invariant shape test: farthest pixel from the centroid over sqrt(area) is 1/sqrt(pi) = 0.56
        for a disc and sqrt(2)/2 = 0.71 for a square."""
        yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        m = sample.masks[:, 0].float()
        area = m.flatten(1).sum(1)
        cy, cx = (m * yy).flatten(1).sum(1) / area, (m * xx).flatten(1).sum(1) / area
        d = ((yy - cy.view(-1, 1, 1)) ** 2 + (xx - cx.view(-1, 1, 1)) ** 2).sqrt() * m
        return d.flatten(1).amax(1) / area.sqrt() > 0.635

    typical = generate_cue_scenes(400, family="stripes", object_cue=1.0, seed=0)
    assert float((looks_square(typical) == (typical.labels == 1)).float().mean()) > 0.95
    random = generate_cue_scenes(400, family="stripes", object_cue=0.5, seed=0)
    assert 0.4 < float((looks_square(random) == (random.labels == 1)).float().mean()) < 0.6  # the shape says nothing
    assert SHAPE_NAMES == ("disc", "square")


def test_dataset_items_and_bad_arguments():
    data = CueScenesDataset(8, family="markers", return_masks=True, seed=0)
    x, y, m = data[0]
    assert x.shape == (3, 32, 32) and y.dtype == torch.long and m.dtype == torch.bool
    assert data.class_names == SHAPE_NAMES and len(data) == 8
    with pytest.raises(ValueError, match=r"family must be one of \('stripes', 'markers'\), got 'snow'"):
        generate_cue_scenes(4, family="snow")
    with pytest.raises(ValueError, match=r"object_cue must be in \[0, 1\], got 1.5"):
        generate_cue_scenes(4, object_cue=1.5)
    with pytest.raises(ValueError, match="object_kind must be one of"):
        generate_cue_scenes(4, object_kind="texture")
    with pytest.raises(ValueError, match="size must be at least 16 pixels, got 8"):
        generate_cue_scenes(4, size=8)
    with pytest.raises(ValueError, match="n must be a non-negative int, got -1"):
        generate_cue_scenes(-1)
