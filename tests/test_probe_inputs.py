"""ProbeSet inputs as users have them: group labels, dict items with other keys, uint8 data, and bad inputs refused at
construction with the value and the fix (fast tier: no Trainer)."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from probelens import ProbeSet
from probelens.data import BACKGROUND_NAMES, CLASS_NAMES, SnowDesertDataset


def images(n=8, seed=0):
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


class DictData(Dataset):
    """Hugging Face-style items: ``{"pixel_values": ..., "labels": ..., "place": ...}`` (keys configurable)."""

    def __init__(self, n=40, image_key="pixel_values", label_key="labels", uint8=False):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
        if not uint8:
            self.x = self.x.float() / 255
        self.y = torch.arange(n) % 2
        self.place = ["water" if (i // 2) % 2 else "land" for i in range(n)]
        self.image_key, self.label_key = image_key, label_key

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {self.image_key: self.x[i], self.label_key: int(self.y[i]), "place": self.place[i]}


# ----------------------------------------------------------------------------------------------- groups on ProbeSet
def test_groups_are_kept_named_and_enter_the_fingerprint():
    x, t = images(), torch.tensor([0, 1] * 4)
    g = torch.tensor([0, 0, 1, 1] * 2)
    probe = ProbeSet(x, t, groups=g, group_names=("land", "water"))
    assert probe.has_groups and probe.num_groups == 2 and probe.groups.dtype == torch.long
    assert probe.group_names == ["land", "water"] and probe.group_name(1) == "water"
    plain = ProbeSet(x, t)
    other = ProbeSet(x, t, groups=torch.tensor([1, 1, 0, 0] * 2))
    assert len({plain.fingerprint(), probe.fingerprint(), other.fingerprint()}) == 3
    assert ProbeSet(x, t, groups=g.tolist()).fingerprint() == probe.fingerprint()  # names do not enter it


@pytest.mark.parametrize(
    ("groups", "names", "message"),
    [
        (torch.tensor([0, 1, 0]), None, r"groups must have shape \[8\].*got \(3,\)"),
        (torch.tensor([0.0, 1.0] * 4), None, r"integer group indices.*float32.*groups\.long\(\)"),
        (torch.tensor([True, False] * 4), None, r"integer group indices.*torch\.bool"),
        (torch.tensor([0, -1] * 4), None, "non-negative group indices, got minimum -1"),
        (["a", "b"] * 4, None, r"groups are strings.*group_names=names"),
        (
            torch.tensor([0, 0, 1, 1] * 2),
            ["land"],
            r"group_names has 1 names \(\['land'\]\) but groups holds ids \[0, 1\]",
        ),
        (torch.tensor([0, 0, 1, 1] * 2), ["a", "b", "c"], "group_names has 3 names"),
        (torch.tensor([0, 0, 1, 1] * 2), "ab", "group_names must be a sequence of names, got the string 'ab'"),
        (torch.zeros(8, dtype=torch.long), None, "a single group"),
        (torch.tensor([0, 0, 0, 1, 0, 0, 0, 1]), None, r"class '0' has no probe image of group\(s\) \['1'\]"),
        (torch.tensor([0, 0, 2, 2] * 2), None, r"no probe image of group\(s\) \['1'\].*renumber the groups"),
        (None, ["land", "water"], "group_names=.* without groups"),
    ],
)
def test_bad_groups_are_refused_with_the_value_and_the_fix(groups, names, message):
    with pytest.raises(ValueError, match=message):
        ProbeSet(images(), torch.tensor([0, 1] * 4), groups=groups, group_names=names)


def test_a_class_without_some_group_names_the_class_and_its_counts():
    t = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    g = torch.tensor([0, 1, 0, 1, 0, 0, 0, 0])
    with pytest.raises(ValueError, match=r"class 'arabian' has no probe image of group\(s\) \['snow'\].*'desert': 4"):
        ProbeSet(images(), t, class_names=["snow", "arabian"], groups=1 - g, group_names=["snow", "desert"])


def test_a_resume_with_other_groups_is_told_and_the_group_verdict_travels_in_the_checkpoint():
    from probelens import ShortcutMonitor

    x, t = images(), torch.tensor([0, 1] * 4)
    saved = ShortcutMonitor(ProbeSet(x, t, groups=torch.tensor([0, 0, 1, 1] * 2)))
    saved.verdicts["groups"].update(0.9, 1.0)
    saved.alerts, saved.alert_evidence = [7], [("groups",)]
    state = saved.state_dict()
    same = ShortcutMonitor(ProbeSet(x, t, groups=torch.tensor([0, 0, 1, 1] * 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same.load_state_dict(state)
    assert same.verdicts["groups"].streak == 1 and same.verdicts["groups"].history == [0.9]
    assert same.alert_evidence == [("groups",)] and same.verdict is same.verdicts["groups"]
    other = ShortcutMonitor(ProbeSet(x, t, groups=torch.tensor([1, 1, 0, 0] * 2)))
    with pytest.warns(UserWarning, match="the probe set differs from the one in the checkpoint"):
        other.load_state_dict(state)


# ----------------------------------------------------------------------------------------------- groups, from_dataset
def biased(n=400, conflict_every=20):
    """Two classes, the group agrees with the class except for every ``conflict_every``-th image (5%)."""
    y = torch.arange(n) % 2
    conflict = (torch.arange(n) // 2) % conflict_every == 0
    g = torch.where(conflict, 1 - y, y)
    return TensorDataset(images(n), y), g


def test_per_group_pick_holds_the_rare_conflicting_images_of_a_biased_set():
    data, g = biased()
    probe = ProbeSet.from_dataset(data, num_samples=16, seed=0, groups=g, group_names=["snow", "desert"])
    cells = torch.zeros(2, 2, dtype=torch.long)
    for t, k in zip(probe.targets.tolist(), probe.groups.tolist()):
        cells[t, k] += 1
    assert cells.tolist() == [[4, 4], [4, 4]]  # 5% of the data, 50% of the probe
    for i, idx in enumerate(probe.indices.tolist()):  # every group is the one of its dataset item
        assert int(probe.groups[i]) == int(g[idx]) and int(probe.targets[i]) == int(data[idx][1])
    plain = ProbeSet.from_dataset(data, num_samples=16, seed=0)  # without groups: class-balanced only
    assert plain.groups is None and int((plain.targets != g[plain.indices]).sum()) <= 3
    # per_group=False: class balance only, the groups still recorded
    loose = ProbeSet.from_dataset(data, num_samples=16, seed=0, groups=g, per_group=False)
    assert torch.equal(loose.indices, plain.indices) and torch.equal(loose.groups, g[plain.indices])


def test_groups_from_a_callable_a_dict_key_and_strings():
    data = DictData()
    by_key = ProbeSet.from_dataset(data, num_samples=8, groups="place")
    by_call = ProbeSet.from_dataset(data, num_samples=8, groups=lambda item: item["place"])
    by_list = ProbeSet.from_dataset(data, num_samples=8, groups=data.place)
    assert by_key.group_names == ["land", "water"]  # strings mapped in sorted order
    for p in (by_call, by_list):
        assert torch.equal(p.indices, by_key.indices) and torch.equal(p.groups, by_key.groups)
    for i, idx in enumerate(by_key.indices.tolist()):
        assert by_key.group_name(int(by_key.groups[i])) == data.place[idx]
    named = ProbeSet.from_dataset(data, num_samples=8, groups="place", group_names=["water", "land"])
    assert [named.group_name(int(k)) for k in named.groups] == [data.place[i] for i in named.indices.tolist()]


def test_snow_desert_backgrounds_as_groups_with_the_dataset_names():
    val = SnowDesertDataset(n=200, size=16, p=0.9, seed=1)
    probe = ProbeSet.from_dataset(val, num_samples=16, groups=val.backgrounds)  # names from val.group_names
    assert probe.class_names == list(CLASS_NAMES) and probe.group_names == list(BACKGROUND_NAMES)
    assert torch.equal(probe.groups, val.backgrounds[probe.indices])
    assert int((probe.groups != probe.targets).sum()) == 8  # half the probe conflicts, 10% of the data does


def test_a_short_cell_is_taken_whole_and_warned_about_and_an_empty_one_refused():
    data, g = biased(n=200, conflict_every=50)  # 4 conflicting images in all: 2 per class
    with pytest.warns(UserWarning, match=r"\(class '0', group '1'\): 2 of 8.*\(class '1', group '0'\): 2 of 8"):
        probe = ProbeSet.from_dataset(data, num_samples=32, groups=g)
    assert len(probe) == 32 and int((probe.groups != probe.targets).sum()) == 4
    y = data.tensors[1]
    with pytest.raises(ValueError, match=r"no image of cell\(s\) \(class 'b', group 'x'\)"):
        ProbeSet.from_dataset(
            data, num_samples=8, groups=torch.where(y == 1, 1, g), group_names=["x", "y"], class_names=["a", "b"]
        )


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        (torch.tensor([0, 1] * 10), r"groups has 20 entries but the dataset has 40 items"),
        (torch.zeros(40, 2, dtype=torch.long), r"groups must be 1-D"),
        ([0.0, 1.0] * 20, r"integer group ids, got the float 0\.0 .*groups\.long\(\)"),
        ("nope", r"groups='nope' is not a key of dataset item"),
    ],
)
def test_bad_groups_for_from_dataset(groups, message):
    with pytest.raises(ValueError, match=message):
        ProbeSet.from_dataset(DictData(), num_samples=8, groups=groups)


def test_a_group_key_on_tuple_items_is_refused():
    data, _ = biased(40)
    with pytest.raises(ValueError, match=r"groups='place' names a key of dict items.*tuples"):
        ProbeSet.from_dataset(data, num_samples=8, groups="place")


# ----------------------------------------------------------------------------------------------- dict items, keys
def test_hugging_face_items_are_read_and_other_keys_can_be_named():
    hf = ProbeSet.from_dataset(DictData(), num_samples=8)
    assert hf.images.shape == (8, 3, 8, 8) and torch.bincount(hf.targets).tolist() == [4, 4]
    custom = DictData(image_key="photo", label_key="cls")
    with pytest.raises(ValueError, match=r"keys \['cls', 'photo', 'place'\].*input_key='<key>'"):
        ProbeSet.from_dataset(custom, num_samples=8)
    named = ProbeSet.from_dataset(custom, num_samples=8, input_key="photo", target_key="cls")
    assert torch.equal(named.images, hf.images) and torch.equal(named.targets, hf.targets)
    with pytest.raises(ValueError, match=r"target_key='label' is not a key of the dataset's items"):
        ProbeSet.from_dataset(custom, num_samples=8, input_key="photo", target_key="label")
    with pytest.raises(ValueError, match="name keys of dict items, but the dataset's items are tuples"):
        ProbeSet.from_dataset(biased(40)[0], num_samples=8, input_key="image")


# ----------------------------------------------------------------------------------------------- uint8 data
def test_a_uint8_dataset_is_refused_with_the_fix_not_converted():
    """Converting would explain a model that normalises uint8 in forward on floats it never sees (issue 27 item 3)."""
    with pytest.raises(
        ValueError, match=r"torch\.uint8 images \(item \d+: values \d+\.\.\d+\).*ToDtype\(torch\.float32"
    ):
        ProbeSet.from_dataset(DictData(uint8=True), num_samples=8)
    x = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8 images"):
        ProbeSet.from_dataset(TensorDataset(x, torch.arange(10) % 2), num_samples=4)


# ----------------------------------------------------------------------------------------------- message problems
def test_nan_pixels_are_refused_naming_the_images():
    x = images()
    x[2, 0, 1, 1] = float("nan")
    x[5, 1] = float("inf")
    with pytest.raises(ValueError, match=re.escape("probe images [2, 5] hold NaN or Inf pixels")):
        ProbeSet(x, torch.tensor([0, 1] * 4))


@pytest.mark.parametrize("std", [(0.2, -0.1, 0.3), (0.0,), (float("nan"),), (0.2, float("inf"), 0.2)])
def test_a_std_that_cannot_undo_the_normalisation_is_refused(std):
    with pytest.raises(ValueError, match=r"std must be (positive|finite)"):
        ProbeSet(images(), torch.tensor([0, 1] * 4), mean=(0.5,) * len(std), std=std)


def test_soft_masks_are_refused_with_how_to_binarise_and_hard_float_masks_accepted():
    soft = torch.zeros(8, 1, 8, 8)
    soft[..., 2:6, 2:6] = 1.0
    soft[3, :, 1, 1:7] = 0.4  # a soft edge on image 3
    with pytest.raises(ValueError, match=r"masks of probe images \[3\] are soft .*masks=soft_masks > 0\.5"):
        ProbeSet(images(), torch.tensor([0, 1] * 4), masks=soft)
    hard = ProbeSet(images(), torch.tensor([0, 1] * 4), masks=(soft > 0.5).float())
    assert hard.masks.dtype == torch.bool and int(hard.masks[0].sum()) == 16
    with pytest.raises(ValueError, match=r"not 0/1 \(range 0\.0\.\.255\.0\)"):
        ProbeSet(images(), torch.tensor([0, 1] * 4), masks=soft * 255)


def test_a_bare_string_of_class_names_is_refused():
    with pytest.raises(ValueError, match=r"class_names must be a sequence of names, got the string 'ab'.*\['ab'\]"):
        ProbeSet(images(2), torch.tensor([0, 1]), class_names="ab")
    assert ProbeSet(images(2), torch.tensor([0, 1]), class_names=("a", "b")).class_names == ["a", "b"]


def test_string_targets_get_a_clear_message():
    with pytest.raises(ValueError, match=r"targets are strings.*map each name to its index.*class_names=names"):
        ProbeSet(images(2), ["cat", "dog"])
    data = [(torch.randn(3, 4, 4), "cat"), (torch.randn(3, 4, 4), "dog")]
    with pytest.raises(ValueError, match=r"the label of dataset item \d is the string '(cat|dog)'.*class_names"):
        ProbeSet.from_dataset(data, num_samples=2)


def test_valid_inputs_raise_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data, g = biased()
        ProbeSet.from_dataset(data, num_samples=16, groups=g)
        ProbeSet.from_dataset(DictData(), num_samples=8, groups="place")


def test_the_lazy_probe_reads_named_keys_and_says_where_a_failure_came_from():
    """``probe_from_trainer`` (what a monitor built without ``probe=`` calls when training starts) on a stand-in
    trainer whose validation loader holds dict items."""
    from torch.utils.data import DataLoader

    from probelens.core.probe_source import probe_from_trainer
    from probelens.core.run import SharedRun

    class Loaders:  # the attributes probe_from_trainer reads; weak-referenceable like a Trainer
        def __init__(self, data):
            self.val_dataloaders = DataLoader(data, batch_size=4)

    hf = probe_from_trainer(Loaders(DictData()), 8, 0, "ShortcutMonitor", run=SharedRun())
    assert hf is not None and len(hf) == 8
    odd = Loaders(DictData(image_key="photo", label_key="cls"))
    named = probe_from_trainer(odd, 8, 0, "ShortcutMonitor", run=SharedRun(), input_key="photo", target_key="cls")
    assert named is not None and torch.equal(named.images, hf.images)
    with pytest.raises(ValueError, match=r"ShortcutMonitor was built without probe= .* val dataset \(DictData\)"):
        probe_from_trainer(odd, 8, 0, "ShortcutMonitor", run=SharedRun())
    with pytest.raises(ValueError, match=r"val dataset \(DictData\), which failed: ValueError: the dataset yields"):
        probe_from_trainer(Loaders(DictData(uint8=True)), 8, 0, "ShortcutMonitor", run=SharedRun())
