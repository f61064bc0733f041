"""Tests for the procedural snow-leopard / arabian-leopard dataset."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from probelens.data import (
    BACKGROUND_NAMES,
    CLASS_NAMES,
    MEAN,
    STD,
    SnowDesertDataset,
    SnowDesertSample,
    generate_snow_desert,
)


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """Run this module with one intra-op thread, restoring the previous setting afterwards.

    On shared, oversubscribed CI machines OpenMP threads waiting for each other can make multi-threaded run time
    explode (observed: 4000 images in ~2 s uncontended with 2 threads, but 15-20 s when another process keeps one of
    the 2 cores busy, against ~3-5 s single-threaded). One thread gives stable run times and a stricter speed bound.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def default_sample() -> SnowDesertSample:
    """4000 default images (p=0.95) with background images, shared by the statistical tests."""
    return generate_snow_desert(4000, seed=0, with_backgrounds=True)


@pytest.fixture(scope="module")
def uninformative_sample() -> SnowDesertSample:
    """2000 images whose background is uninformative (p=0.5)."""
    return generate_snow_desert(2000, p=0.5, seed=3)


# ----------------------------------------------------------------------------------------------------------- helpers


def _mask_features(sample: SnowDesertSample) -> Tensor:
    """Hand-made texture features computed inside the mask only: ``[N, 3]``.

    Luminance is taken relative to the fur level (90th percentile inside the mask). Features: the fraction of dark
    pixels, and the fractions of light "ring centre" pixels that have dark pixels 2 (resp. 3) px away in all four
    directions.
    """
    lum = sample.images.mean(1, keepdim=True)
    mask = sample.masks
    inside = torch.where(mask, lum, torch.full_like(lum, float("nan"))).flatten(1)
    fur = torch.nanquantile(inside, 0.9, dim=1)[:, None, None, None]
    rel = lum / fur
    dark = (rel < 0.6) & mask
    light = (rel > 0.75) & mask
    area = mask.flatten(1).sum(1).float()
    feats = [dark.flatten(1).sum(1) / area]
    for k in (2, 3):
        enclosed = light.clone()
        for shift in ((k, 0), (-k, 0), (0, k), (0, -k)):
            enclosed &= torch.roll(dark, shift, dims=(2, 3))
        feats.append(enclosed.flatten(1).sum(1) / area)
    return torch.stack(feats, 1)


def _logistic_regression_accuracy(x: Tensor, y: Tensor) -> float:
    """Fit a standardised logistic regression on the first half, return accuracy on the second half (deterministic)."""
    half = x.shape[0] // 2
    x_tr, y_tr, x_te, y_te = x[:half], y[:half], x[half:], y[half:]
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-8
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x_tr @ w + b, y_tr.float()) + 1e-3 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return ((x_te @ w + b > 0).long() == y_te).float().mean().item()


# ------------------------------------------------------------------------------------------------- shapes and types


def test_shapes_dtypes_and_ranges(default_sample: SnowDesertSample) -> None:
    s = default_sample
    assert isinstance(s, SnowDesertSample)
    assert len(s) == 4000
    assert s.images.shape == (4000, 3, 64, 64) and s.images.dtype == torch.float32
    assert s.labels.shape == (4000,) and s.labels.dtype == torch.int64
    assert s.masks.shape == (4000, 1, 64, 64) and s.masks.dtype == torch.bool
    assert s.backgrounds.shape == (4000,) and s.backgrounds.dtype == torch.int64
    assert s.background_images is not None
    assert s.background_images.shape == (4000, 3, 64, 64) and s.background_images.dtype == torch.float32
    for t in (s.images, s.background_images):
        assert torch.isfinite(t).all()
        assert t.min() >= 0.0 and t.max() <= 1.0
    assert set(s.labels.unique().tolist()) == {0, 1}
    assert set(s.backgrounds.unique().tolist()) == {0, 1}
    assert CLASS_NAMES == ("snow", "arabian")
    assert BACKGROUND_NAMES == ("snow", "desert")


def test_background_images_are_optional() -> None:
    assert generate_snow_desert(4, seed=0).background_images is None


@pytest.mark.parametrize("size", [(48, 80), (80, 48), (32, 32), (40, 64)])
def test_non_square_sizes(size: tuple[int, int]) -> None:
    h, w = size
    s = generate_snow_desert(64, size=size, seed=1, with_backgrounds=True)
    assert s.images.shape == (64, 3, h, w)
    assert s.masks.shape == (64, 1, h, w)
    assert s.background_images is not None and s.background_images.shape == (64, 3, h, w)
    area = s.masks.flatten(1).sum(1)
    assert (area > 0).all() and (area < h * w).all()
    # The animal always fits: it never touches the image border.
    m = s.masks[:, 0]
    assert not (m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())


def test_int_size_equals_square_pair() -> None:
    a = generate_snow_desert(8, size=40, seed=2)
    b = generate_snow_desert(8, size=(40, 40), seed=2)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)


def test_empty_request() -> None:
    s = generate_snow_desert(0)
    assert s.images.shape == (0, 3, 64, 64) and s.labels.shape == (0,) and s.masks.shape == (0, 1, 64, 64)


# ------------------------------------------------------------------------------------------------ argument checking


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"p": 1.5}, "p must be in [0, 1], got 1.5"),
        ({"p": -0.1}, "p must be in [0, 1], got -0.1"),
        ({"purity": 2.0}, "purity must be in [0, 1], got 2.0"),
        ({"spot_contrast": -1.0}, "spot_contrast must be a finite number >= 0, got -1.0"),
        ({"spot_contrast": float("nan")}, "got nan"),
        ({"n": -3}, "n must be a non-negative int, got -3"),
        ({"n": 2.5}, "got 2.5"),
        ({"size": 8}, "got 8"),
        ({"size": (64, 10)}, "got (64, 10)"),
        ({"size": (64,)}, "got (64,)"),
        ({"size": "big"}, "got 'big'"),
        ({"size": 64.0}, "got 64.0"),
        ({"size": (64.5, 64)}, "got (64.5, 64)"),
    ],
)
def test_invalid_arguments_raise_with_the_bad_value(kwargs: dict, message: str) -> None:
    args = {"n": 4, **kwargs}
    with pytest.raises(ValueError) as info:
        generate_snow_desert(**args)
    assert message in str(info.value)


def test_dataset_validates_arguments() -> None:
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        SnowDesertDataset(n=4, p=1.5)


# ------------------------------------------------------------------------------------------------ seeding and RNG


def test_same_seed_same_data_different_seed_different_data() -> None:
    a = generate_snow_desert(600, seed=7, with_backgrounds=True)
    b = generate_snow_desert(600, seed=7, with_backgrounds=True)
    c = generate_snow_desert(600, seed=8, with_backgrounds=True)
    for name in ("images", "labels", "masks", "backgrounds", "background_images"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.masks, c.masks)
    assert not torch.equal(a.labels, c.labels)


def test_with_backgrounds_does_not_change_the_images() -> None:
    a = generate_snow_desert(100, seed=4)
    b = generate_snow_desert(100, seed=4, with_backgrounds=True)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)


def test_result_does_not_depend_on_thread_count() -> None:
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = generate_snow_desert(100, seed=5)
        torch.set_num_threads(2)
        b = generate_snow_desert(100, seed=5)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(a.images, b.images)
    assert torch.equal(a.masks, b.masks) and torch.equal(a.labels, b.labels)


def test_global_rng_untouched() -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    expected_next = torch.rand(5)
    torch.set_rng_state(state)
    generate_snow_desert(50, seed=0, with_backgrounds=True)
    SnowDesertDataset(n=20, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(5), expected_next)


# ------------------------------------------------------------------------------------------------ masks and labels


def test_mask_area_and_non_degenerate_masks(default_sample: SnowDesertSample) -> None:
    area = default_sample.masks.float().mean(dim=(1, 2, 3))
    assert 0.10 <= area.mean().item() <= 0.20
    assert (area > 0).all(), "every image must contain an animal"
    assert (area < 1).all(), "no mask may cover the whole image"
    assert area.min().item() > 0.05 and area.max().item() < 0.3


def test_mask_area_does_not_depend_on_class(default_sample: SnowDesertSample) -> None:
    area = default_sample.masks.float().mean(dim=(1, 2, 3))
    labels = default_sample.labels
    assert abs(area[labels == 0].mean().item() - area[labels == 1].mean().item()) < 0.005


def test_classes_are_balanced(default_sample: SnowDesertSample) -> None:
    assert (default_sample.labels == 1).sum().item() == 2000
    odd = generate_snow_desert(101, seed=3).labels
    assert abs((odd == 0).sum().item() - (odd == 1).sum().item()) == 1


@pytest.mark.parametrize(("p", "tolerance"), [(0.95, 0.02), (0.5, 0.03), (0.8, 0.03)])
def test_background_agreement_rate_close_to_p(p: float, tolerance: float) -> None:
    s = generate_snow_desert(4000, size=16, p=p, seed=11)  # the rate does not depend on the image size
    agree = (s.labels == s.backgrounds).float().mean().item()
    assert abs(agree - p) <= tolerance


def test_background_agreement_extremes() -> None:
    s1 = generate_snow_desert(500, p=1.0, seed=0)
    assert torch.equal(s1.labels, s1.backgrounds)
    s0 = generate_snow_desert(500, p=0.0, seed=0)
    assert torch.equal(s0.labels, 1 - s0.backgrounds)


def test_default_agreement_rate(default_sample: SnowDesertSample) -> None:
    agree = (default_sample.labels == default_sample.backgrounds).float().mean().item()
    assert abs(agree - 0.95) <= 0.02


# ------------------------------------------------------------------------------------------------ the two cues


def test_background_cue_separates_snow_from_desert_perfectly(default_sample: SnowDesertSample) -> None:
    outside = ~default_sample.masks
    count = outside.flatten(1).sum(1)
    mean_rgb = (default_sample.images * outside).flatten(2).sum(2) / count[:, None]
    blue_minus_red = mean_rgb[:, 2] - mean_rgb[:, 0]
    predicted_desert = (blue_minus_red < 0).long()
    assert torch.equal(predicted_desert, default_sample.backgrounds)
    # Snow is bright, desert is yellow-orange.
    bg = default_sample.backgrounds
    assert mean_rgb[bg == 0].mean(0).min() > 0.8
    assert mean_rgb[bg == 1, 0].mean() > mean_rgb[bg == 1, 2].mean() + 0.3


def test_background_carries_no_class_information_beyond_its_identity(default_sample: SnowDesertSample) -> None:
    """Within one background type, the background pixels look the same for both classes."""
    assert default_sample.background_images is not None
    mean_rgb = default_sample.background_images.mean(dim=(2, 3))
    labels, bg = default_sample.labels, default_sample.backgrounds
    for b in (0, 1):
        m0 = mean_rgb[(bg == b) & (labels == 0)].mean(0)
        m1 = mean_rgb[(bg == b) & (labels == 1)].mean(0)
        assert (m0 - m1).abs().max().item() < 0.01


def test_texture_cue_inside_the_mask_is_real(uninformative_sample: SnowDesertSample) -> None:
    feats = _mask_features(uninformative_sample)
    labels = uninformative_sample.labels
    # Rosettes (class 0) have many enclosed light centres; solid spots (class 1) make the coat darker.
    assert feats[labels == 0, 1].mean() > 2 * feats[labels == 1, 1].mean()
    assert feats[labels == 1, 0].mean() > feats[labels == 0, 0].mean() + 0.04
    assert _logistic_regression_accuracy(feats, labels) > 0.8


def test_texture_cue_vanishes_when_purity_is_one_half() -> None:
    """Control: with purity 0.5 the same features are at chance, so the texture is the only object cue."""
    s = generate_snow_desert(2000, p=0.5, purity=0.5, seed=3)
    assert abs(_logistic_regression_accuracy(_mask_features(s), s.labels) - 0.5) < 0.06


def test_spot_contrast_controls_spot_visibility() -> None:
    spread = []
    for contrast in (0.0, 0.5, 1.0):
        s = generate_snow_desert(300, seed=9, spot_contrast=contrast)
        lum = s.images.mean(1, keepdim=True)
        inside = torch.where(s.masks, lum, torch.full_like(lum, float("nan"))).flatten(1)
        q = torch.nanquantile(inside, torch.tensor([0.05, 0.95]), dim=1)
        spread.append((q[1] - q[0]).mean().item())
    assert spread[0] < spread[1] < spread[2]
    assert spread[2] > 2.5 * spread[0]  # no spots at all (only fur shading) vs clearly visible spots


def test_background_images_equal_images_outside_the_mask(default_sample: SnowDesertSample) -> None:
    bg_images = default_sample.background_images
    assert bg_images is not None
    changed = default_sample.images != bg_images
    assert not (changed & ~default_sample.masks).any(), "background pixels must be identical"
    assert (changed & default_sample.masks).flatten(1).any(1).all(), "the animal must be visible in every image"


# ------------------------------------------------------------------------------------------------ dataset


def test_dataset_items_and_attributes() -> None:
    ds = SnowDesertDataset(n=40, seed=2)
    raw = generate_snow_desert(40, seed=2)
    assert len(ds) == 40
    assert ds.class_names == CLASS_NAMES
    assert ds.mean == MEAN and ds.std == STD
    expected = (raw.images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(ds.images, expected)
    assert torch.equal(ds.labels, raw.labels)
    assert torch.equal(ds.masks, raw.masks)
    assert torch.equal(ds.backgrounds, raw.backgrounds)
    item = ds[3]
    assert len(item) == 2
    image, label = item
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and label.item() == raw.labels[3].item()


def test_dataset_without_normalisation_and_with_masks() -> None:
    ds = SnowDesertDataset(n=10, size=(32, 48), seed=2, normalize=False, return_masks=True)
    raw = generate_snow_desert(10, size=(32, 48), seed=2)
    assert torch.equal(ds.images, raw.images)
    assert ds.mean == (0.0, 0.0, 0.0) and ds.std == (1.0, 1.0, 1.0)
    image, label, mask = ds[0]
    assert image.shape == (3, 32, 48) and mask.shape == (1, 32, 48) and mask.dtype == torch.bool
    assert torch.equal(mask, raw.masks[0]) and label.item() == raw.labels[0].item()


def test_normalisation_constants_match_the_default_data(default_sample: SnowDesertSample) -> None:
    mean = default_sample.images.mean(dim=(0, 2, 3))
    std = default_sample.images.std(dim=(0, 2, 3))
    torch.testing.assert_close(mean, torch.tensor(MEAN), atol=0.01, rtol=0.0)
    torch.testing.assert_close(std, torch.tensor(STD), atol=0.01, rtol=0.0)


def test_dataset_works_with_a_dataloader() -> None:
    ds = SnowDesertDataset(n=20, seed=0, return_masks=True)
    images, labels, masks = next(iter(DataLoader(ds, batch_size=8, shuffle=False)))
    assert images.shape == (8, 3, 64, 64) and labels.shape == (8,) and masks.shape == (8, 1, 64, 64)


# ------------------------------------------------------------------------------------------------ learnability


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 2),
    )


@pytest.mark.slow
def test_tiny_cnn_learns_the_animal_when_the_background_is_uninformative() -> None:
    """End to end: with p=0.5 only the coat texture predicts the class, and a tiny CNN must still learn it."""
    ds = SnowDesertDataset(n=2500, p=0.5, seed=100)
    x_train, y_train = ds.images[:2000], ds.labels[:2000]
    x_test, y_test = ds.images[2000:], ds.labels[2000:]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = _tiny_cnn()
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        for _ in range(5):
            net.train()
            perm = torch.randperm(2000)
            for i in range(0, 2000, 64):
                idx = perm[i : i + 64]
                loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = (net(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.75, f"held-out accuracy {accuracy:.3f}"
