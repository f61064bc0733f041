"""The coloured-digits family: real handwriting (scikit-learn's bundled digits) with a colour shortcut."""

from __future__ import annotations

import pytest
import torch

from probelens import ProbeSet
from probelens.data.colored_digits import COLOR_NAMES, ColoredDigitsDataset, color_patches

pytest.importorskip("sklearn")


def test_splits_labels_colours_and_masks():
    train, val = ColoredDigitsDataset("train", p=0.9), ColoredDigitsDataset("val", p=0.9)
    assert len(train) + len(val) == 1797 and abs(len(train) - len(val)) <= 1
    assert train.images.shape == (len(train), 3, 32, 32) and train.images.dtype == torch.float32
    assert torch.equal(train.labels, (train.digits >= 5).long())
    agree = (train.colors == train.labels).float().mean().item()
    assert 0.87 <= agree <= 0.93  # p = 0.9
    assert torch.equal(train.conflicting, train.colors != train.labels)
    loose, tight = train.masks(0.2), train.masks(0.7)
    assert (tight <= loose).all() and 0 < tight.sum() < loose.sum()  # a tight mask is inside the loose one
    image, label, mask = ColoredDigitsDataset("val", mask_threshold=0.5)[3]
    assert image.shape == (3, 32, 32)
    assert mask.shape == (1, 32, 32) and mask.dtype == torch.bool and label in (0, 1)


def test_the_colour_is_the_background_and_the_data_is_deterministic():
    a, b = ColoredDigitsDataset(p=1.0, normalize=False), ColoredDigitsDataset(p=1.0, normalize=False)
    assert torch.equal(a.images, b.images)
    background = a.alpha[:, 0] < 0.01  # [N, H, W]: pixels without ink
    for color in (0, 1):
        pixels = a.images.permute(1, 0, 2, 3)[:, (a.colors == color)][:, background[a.colors == color]]
        dominant = pixels.mean(dim=1).argmax().item()
        assert dominant == color, (COLOR_NAMES[color], pixels.mean(dim=1))  # red: channel 0, green: channel 1
    assert not torch.equal(ColoredDigitsDataset(seed=1).colors, ColoredDigitsDataset(seed=2).colors)


def test_a_probe_with_groups_and_concept_patches():
    val = ColoredDigitsDataset("val", p=0.5, mask_threshold=0.5)
    probe = ProbeSet.from_dataset(val, num_samples=16, seed=0, mean=val.mean, std=val.std, class_names=val.class_names)
    assert len(probe) == 16
    patches = color_patches(5, "green")
    assert patches.shape == (5, 3, 32, 32)
    raw = color_patches(5, "green", normalize=False)
    assert raw[:, 1].mean() > raw[:, 0].mean()  # green
    with pytest.raises(ValueError, match="color='blue' is not one of"):
        color_patches(2, "blue")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "test"}, "split='test' is not allowed"),
        ({"p": 1.5}, "p=1.5 is not allowed"),
        ({"mask_threshold": 1.0}, "mask_threshold=1.0 is not allowed"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ColoredDigitsDataset(**kwargs)
