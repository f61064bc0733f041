import pytest
import torch
from torch.utils.data import TensorDataset

from probelens import ProbeSet


def dataset(n=100, classes=3, channels=3, with_masks=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, channels, 8, 10, generator=g)
    y = torch.arange(n) % classes
    if with_masks:
        m = torch.zeros(n, 1, 8, 10, dtype=torch.bool)
        m[:, :, 2:5, 3:7] = True
        return TensorDataset(x, y, m)
    return TensorDataset(x, y)


def test_from_dataset_is_class_balanced_seeded_and_leaves_global_rng_alone():
    ds = dataset()
    rng = torch.get_rng_state()
    a = ProbeSet.from_dataset(ds, num_samples=9, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.bincount(a.targets).tolist() == [3, 3, 3]
    b = ProbeSet.from_dataset(ds, num_samples=9, seed=3)
    assert torch.equal(a.indices, b.indices) and a.fingerprint() == b.fingerprint()
    c = ProbeSet.from_dataset(ds, num_samples=9, seed=4)
    assert not torch.equal(a.indices, c.indices) and a.fingerprint() != c.fingerprint()
    for i, idx in enumerate(a.indices.tolist()):
        assert torch.equal(a.images[i], ds[idx][0]) and int(a.targets[i]) == int(ds[idx][1])


def test_uneven_quota_and_not_per_class():
    ds = dataset(classes=2)
    p = ProbeSet.from_dataset(ds, num_samples=5, seed=0)
    assert torch.bincount(p.targets).tolist() == [3, 2]
    q = ProbeSet.from_dataset(ds, num_samples=5, per_class=False, seed=0)
    assert len(q) == 5


def test_masks_from_dataset_items_and_from_function():
    p = ProbeSet.from_dataset(dataset(with_masks=True), num_samples=4)
    assert p.has_masks and p.masks.shape == (4, 1, 8, 10) and p.masks.dtype == torch.bool

    def boxes(images, targets):
        m = torch.zeros(images.shape[0], 1, *images.shape[-2:], dtype=torch.bool)
        m[..., :4, :4] = True
        return m

    q = ProbeSet.from_dataset(dataset(), num_samples=4, masks=boxes)
    assert q.masks[:, :, :4, :4].all() and not q.masks[:, :, 4:, :].any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": torch.randn(3, 8, 8)}, "3-D tensor"),
        ({"images": torch.randint(0, 255, (2, 3, 8, 8))}, "floating point"),
        ({"images": torch.randn(0, 3, 8, 8), "targets": torch.zeros(0)}, "empty"),
        ({"targets": torch.tensor([0])}, r"shape \[2\]"),
        ({"targets": torch.tensor([0.0, 1.0])}, "integer"),
        ({"masks": torch.ones(2, 1, 4, 4, dtype=torch.bool)}, r"\[N,1,H,W\]"),
        ({"masks": torch.zeros(2, 1, 8, 8, dtype=torch.bool)}, "empty"),
        ({"masks": torch.ones(2, 1, 8, 8, dtype=torch.bool)}, "whole image"),
        ({"mean": (0.5, 0.5), "std": (0.2, 0.2)}, "2 values but the images have 3 channels"),
        ({"class_names": ["only-one"]}, "has no name"),
        # two names, one tag segment: one class's numbers would overwrite the other's
        (
            {"class_names": ["snow leopard", "snow/leopard"]},
            r"class_names\[0\]='snow leopard' and class_names\[1\]='snow/leopard' both become the tag segment "
            "'snow_leopard'",
        ),
        (
            {"groups": torch.tensor([0, 1]), "group_names": ["on snow", "on  snow!"]},
            r"group_names\[1\]='on  snow!'.*'on_snow'.*e.g. group_names\[1\]='on_snow_1'",
        ),
        ({"class_names": ["???", "0"]}, r"tag segment '0'"),  # a name with nothing left falls back to its index
    ],
)
def test_bad_probe_input_names_the_problem(kwargs, message):
    args = {"images": torch.randn(2, 3, 8, 8), "targets": torch.tensor([0, 1])}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ProbeSet(**args)


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_display_images_any_channel_count(channels):
    mean, std = (0.5,) * channels, (0.25,) * channels
    raw = torch.rand(2, channels, 6, 9)
    p = ProbeSet(images=(raw - 0.5) / 0.25, targets=torch.tensor([0, 1]), mean=mean, std=std)
    shown = p.display_images()
    assert shown.dtype == torch.uint8 and shown.shape == (2, 3, 6, 9)
    expected = (raw[:, :1] if channels == 1 else raw[:, :3]) * 255
    assert (shown.float() - expected.expand(-1, 3, -1, -1)).abs().max() <= 1.0


def test_class_names_from_dataset_attribute():
    ds = dataset(classes=2)
    ds.classes = ["a", "b"]
    p = ProbeSet.from_dataset(ds, num_samples=2)
    assert p.class_name(1) == "b" and p.class_name(7) == "7"


def test_masks_from_boxes():
    masks = ProbeSet.masks_from_boxes([[1, 2, 4, 5], [0, 0, 10, 1]], (8, 10))
    assert masks.shape == (2, 1, 8, 10) and masks.dtype == torch.bool
    assert masks[0, 0, 2:5, 1:4].all() and masks[0].sum() == 9
    assert masks[1, 0, 0].all() and masks[1].sum() == 10
    p = ProbeSet(torch.randn(2, 3, 8, 10), torch.tensor([0, 1]), masks=masks)
    assert p.has_masks
    with pytest.raises(ValueError, match="x1 > x0"):
        ProbeSet.masks_from_boxes([[4, 0, 2, 3]], (8, 8))
    with pytest.raises(ValueError, match=r"\[N,4\]"):
        ProbeSet.masks_from_boxes([[1, 2, 3]], (8, 8))


def test_probe_sets_compare_by_identity_and_key_dicts():
    images, targets = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1])
    a, b = ProbeSet(images, targets), ProbeSet(images.clone(), targets.clone())
    assert a == a and a != b  # no elementwise tensor comparison (which raised before)
    assert {a: 1, b: 2}[a] == 1
    assert a.fingerprint() == b.fingerprint()  # contents compare through the fingerprint
