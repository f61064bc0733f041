"""The probe set: a small, fixed batch of validation images every monitor explains at every log step."""

from __future__ import annotations

import contextlib
import hashlib
import math
import operator
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Union, cast

import torch
from torch import Tensor

from probelens.logformat import check_tag_segments

Denormalize = Callable[[Tensor], Tensor]
MaskFunction = Callable[[Tensor, Tensor], Tensor]
GroupSource = Union[Sequence[Any], Tensor, Callable[[Any], Any], str]  # noqa: UP007 (a runtime alias)
"""What :meth:`ProbeSet.from_dataset` takes as ``groups``: a sequence aligned with the dataset, a callable on the item,
or the key of dict items."""


IMAGE_KEYS = ("image", "pixel_values", "img", "input", "inputs", "x")
"""Keys :meth:`ProbeSet.from_dataset` looks up, in this order, for the image of a dict item (``input_key=`` names
another)."""
TARGET_KEYS = ("label", "labels", "target", "targets", "y")
"""Keys looked up, in this order, for the class index of a dict item (``target_key=`` names another)."""


def _pick_key(item: dict, given: str | None, known: Sequence[str], what: str, option: str) -> Any:
    if given is not None:
        if given not in item:
            raise ValueError(
                f"{option}={given!r} is not a key of the dataset's items (keys: {sorted(map(str, item))}); "
                f"pass the key that holds the {what}"
            )
        return item[given]
    for key in known:
        if key in item:
            return item[key]
    raise ValueError(
        f"dataset items are dicts with keys {sorted(map(str, item))}, none of which ProbeSet.from_dataset knows "
        f"for the {what} (it looks for {list(known)}); name it with ProbeSet.from_dataset(..., {option}='<key>')"
    )


def _split_item(
    item: Any, input_key: str | None = None, target_key: str | None = None
) -> tuple[Tensor, Any, Tensor | None]:
    """(image, label, mask-or-None) from a dataset item: a tuple/list ``(x, y[, mask])`` or a mapping with an image
    key (:data:`IMAGE_KEYS`, or ``input_key``), a label key (:data:`TARGET_KEYS`, or ``target_key``) and an optional
    ``mask`` key."""
    if isinstance(item, dict):
        image = _pick_key(item, input_key, IMAGE_KEYS, "image", "input_key")
        label = _pick_key(item, target_key, TARGET_KEYS, "class label", "target_key")
        mask = item.get("mask")
        return _as_image(image), label, None if mask is None else torch.as_tensor(mask)
    if input_key is not None or target_key is not None:
        raise ValueError(
            f"input_key/target_key name keys of dict items, but the dataset's items are {type(item).__name__}s; "
            "leave them out for (image, label[, mask]) items"
        )
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        mask = item[2] if len(item) >= 3 and isinstance(item[2], Tensor) else None
        return _as_image(item[0]), item[1], mask
    raise ValueError(
        f"cannot read a dataset item of type {type(item).__name__}; ProbeSet.from_dataset needs (image, label), "
        "(image, label, mask) or a dict with an image and a label key (e.g. 'image'/'label' or "
        "'pixel_values'/'labels'; input_key= and target_key= name others)"
    )


def _as_image(image: Any) -> Tensor:
    try:
        return torch.as_tensor(image)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"a dataset image of type {type(image).__name__} is not a tensor ({err}); give the dataset a transform "
            "that returns the model's input tensor (e.g. torchvision.transforms.v2.ToImage() then "
            "ToDtype(torch.float32, scale=True) and Normalize)"
        ) from None


def _class_index(label: Any, where: str) -> int:
    """A class label as an int; a string or a float label is refused with the fix."""
    if isinstance(label, str) or (isinstance(label, (list, tuple)) and label and isinstance(label[0], str)):
        raise ValueError(
            f"{where} is the string {label!r}: ProbeSet needs integer class indices; map the names to indices "
            "(e.g. {name: i for i, name in enumerate(names)}) and pass class_names=names"
        )
    value = torch.as_tensor(label)
    if value.numel() != 1:
        raise ValueError(
            f"{where} has shape {tuple(value.shape)}, not one class index (a one-hot or multi-label target?); "
            "ProbeSet needs one integer class index per image (e.g. target.argmax())"
        )
    if value.dtype.is_floating_point or value.dtype == torch.bool:
        raise ValueError(f"{where} is {value.item()!r} of dtype {value.dtype}; class labels must be integer indices")
    return int(value)


def _names(value: Any, option: str) -> list[str] | None:
    """A list of names; a bare string (which would become one name per character) is refused."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise ValueError(
            f"{option} must be a sequence of names, got the string {value!r} (which would name one class per "
            f"character); pass a list, e.g. {option}={[value]!r} or {option}={list(str(value))!r}"
        )
    names = [str(c) for c in value]
    check_tag_segments(names, option)  # each name is one tag segment of the shortcut, concept and discovery tags
    return names


def _first_positions(flags: Tensor, limit: int = 10) -> str:
    where = flags.nonzero().flatten().tolist()
    return str(where[:limit])[:-1] + (f", ... ({len(where)} in all)]" if len(where) > limit else "]")


def _dataset_labels(dataset: Any) -> Tensor | None:
    for attr in ("targets", "labels"):
        labels = getattr(dataset, attr, None)
        if labels is not None:
            try:
                labels = torch.as_tensor(labels)
            except (TypeError, ValueError):
                continue
            if labels.dim() == 1 and len(labels) == len(dataset):
                return labels.long()
    return None


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """Restore torch's (CPU and CUDA), Python's and numpy's global RNG states on exit."""
    import random

    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@dataclass(eq=False)
class ProbeSet:
    """A fixed batch of images that the monitors explain at every log step.

    Identity: a probe set equals only itself (``==`` is ``is``) and hashes by identity, so it can key a dict; the
    monitors sharing one ``ProbeSet`` object share one explanation pass. To compare contents (e.g. across a resume),
    compare :meth:`fingerprint` values.

    Args:
        images: ``[N,C,H,W]`` float model inputs (already normalised as the model expects). Any channel count and any
            ``H x W`` (non-square included).
        targets: ``[N]`` int64 true class indices.
        masks: optional ``[N,1,H,W]`` bool foreground masks (object = True), used by shortcut metrics.
        mean: per-channel mean used to normalise the images (for display only).
        std: per-channel std used to normalise the images (for display only).
        denormalize: alternatively, a callable mapping model inputs ``[N,C,H,W]`` back to ``[0,1]`` display values.
        class_names: optional names for captions; index ``i`` names class ``i``.
        indices: positions of the images in the source dataset (set by :meth:`from_dataset`).
        seed: the seed that picked them (set by :meth:`from_dataset`).
        groups: optional ``[N]`` int64 group label of each image (a spurious attribute: the background, the
            hospital, the scanner; ids ``0 .. G-1``). With groups, :class:`~probelens.ShortcutMonitor` compares the
            accuracy of each class across its groups. Every class of the probe needs an image of every group.
        group_names: optional names of the groups; index ``g`` names group ``g`` (``len(group_names) == G``).

    Raises:
        ValueError: a tensor has the wrong rank, dtype or size, or holds NaN/Inf; the set is empty; masks are empty,
            full or soft; ``std`` is not positive; names are a bare string; groups are not integer ids, do not match
            ``group_names`` or leave a class without some group.
    """

    images: Tensor
    targets: Tensor
    masks: Tensor | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    denormalize: Denormalize | None = None
    class_names: Sequence[str] | None = None
    indices: Tensor | None = None
    seed: int | None = None
    groups: Tensor | None = None
    group_names: Sequence[str] | None = None
    _fingerprint: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor):
            raise TypeError(f"images must be a torch.Tensor [N,C,H,W], got {type(self.images).__name__}")
        if self.images.dim() == 3:
            raise ValueError(
                f"images must be [N,C,H,W] (probelens explains 2-D image models), got a 3-D tensor "
                f"{tuple(self.images.shape)}: for one image [C,H,W] use images.unsqueeze(0), for grayscale [N,H,W] "
                "images.unsqueeze(1); a batch of 1-D signals [N,C,L] (Conv1d models) is not supported"
            )
        if self.images.dim() != 4:
            raise ValueError(f"images must be a 4-D tensor [N,C,H,W], got shape {tuple(self.images.shape)}")
        if not self.images.dtype.is_floating_point:
            raise ValueError(
                f"images must be floating point model inputs, got dtype {self.images.dtype}; convert with "
                "images.float() / 255 and normalise as the model expects"
            )
        n = self.images.shape[0]
        if n == 0:
            raise ValueError("the probe set is empty; give it at least one image")
        finite = torch.isfinite(self.images.detach()).flatten(1).all(1).cpu()
        if not bool(finite.all()):
            raise ValueError(
                f"probe images {_first_positions(~finite)} hold NaN or Inf pixels; every monitor would explain "
                "them as if the model diverged. Fix the data (or the normalisation: a zero std divides by 0) or drop "
                "those images"
            )
        self.targets = self._check_indices(self.targets, "targets", "class")
        self.class_names = _names(self.class_names, "class_names")
        if self.class_names is not None and int(self.targets.max()) >= len(self.class_names):
            raise ValueError(
                f"target {int(self.targets.max())} has no name: class_names has {len(self.class_names)} entries"
            )
        channels = self.images.shape[1]
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, Tensor):
                    value = value.flatten().tolist()
                elif isinstance(value, (int, float)):
                    value = (value,)
                value = tuple(float(v) for v in value)
                if len(value) not in (1, channels):
                    raise ValueError(f"{name} has {len(value)} values but the images have {channels} channels")
                if not all(math.isfinite(v) for v in value):
                    raise ValueError(f"{name} must be finite, got {value}")
                setattr(self, name, value)
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std (or neither, or a denormalize callable)")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(
                f"std must be positive (the per-channel standard deviation the images were divided by), got "
                f"{self.std}; a zero or negative std cannot undo the normalisation for display"
            )
        if self.masks is not None:
            self.masks = self._check_masks(self.masks)
        self.group_names = _names(self.group_names, "group_names")
        if self.groups is None:
            if self.group_names is not None:
                raise ValueError(
                    f"group_names={self.group_names} were given without groups; pass groups=LongTensor[N] (one group "
                    "id per image) too, or leave group_names out"
                )
        else:
            self.groups = self._check_indices(self.groups, "groups", "group")
            self._check_groups()

    def _check_indices(self, values: Any, option: str, what: str) -> Tensor:
        """``values`` as an int64 ``[N]`` tensor of non-negative indices (targets, groups), or a ValueError naming
        the problem and the fix."""
        n = self.images.shape[0]
        names = "class_names" if option == "targets" else "group_names"
        if isinstance(values, (list, tuple)) and any(isinstance(v, str) for v in values):
            raise ValueError(
                f"{option} are strings ({list(values)[:4]}...); ProbeSet needs integer {what} indices: map each "
                f"name to its index (e.g. {{name: i for i, name in enumerate(names)}}) and pass {names}=names"
            )
        try:
            values = torch.as_tensor(values)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(
                f"{option} must be a LongTensor [{n}] of {what} indices, got {type(values).__name__} ({err}); map "
                f"names to indices and pass {names}="
            ) from None
        if values.shape != (n,):
            raise ValueError(f"{option} must have shape [{n}] (one {what} index per image), got {tuple(values.shape)}")
        if values.dtype.is_floating_point or values.dtype == torch.bool or values.is_complex():
            raise ValueError(
                f"{option} must be integer {what} indices (a LongTensor), got dtype {values.dtype}; convert with "
                f"{option}.long() if they hold whole numbers"
            )
        values = values.long() if option == "targets" else values.long().cpu()
        if int(values.min()) < 0:
            raise ValueError(f"{option} must be non-negative {what} indices, got minimum {int(values.min())}")
        return values

    def _check_groups(self) -> None:
        """Groups are ids ``0 .. G-1`` (``G = len(group_names)`` when named), at least two of them, and every class
        of the probe has an image of every group (the monitor compares a class's accuracy across its groups)."""
        assert self.groups is not None
        top = int(self.groups.max())
        if self.group_names is not None and len(self.group_names) != top + 1:
            present = sorted(set(self.groups.tolist()))
            raise ValueError(
                f"group_names has {len(self.group_names)} names ({self.group_names}) but groups holds ids {present} "
                f"({top + 1} groups, ids 0..{top}); give one name per group id"
            )
        count = top + 1
        if count < 2:
            raise ValueError(
                f"groups holds a single group (id {top}) for all {len(self.groups)} images; group labels need at "
                "least two groups to compare (e.g. 0 = background agrees with the class, 1 = it does not)"
            )
        targets = self.targets.cpu()
        cells = torch.zeros(int(targets.max()) + 1, count, dtype=torch.long)
        cells.index_put_((targets, self.groups), torch.ones_like(targets), accumulate=True)
        for c in targets.unique().tolist():
            missing = [g for g in range(count) if int(cells[c, g]) == 0]
            if missing:
                have = {self.group_name(g): int(cells[c, g]) for g in range(count)}
                raise ValueError(
                    f"class {self.class_name(c)!r} has no probe image of group(s) "
                    f"{[self.group_name(g) for g in missing]} (its images per group: {have}); a class's accuracy is "
                    "compared across the groups, so every class needs every group: pick the probe with "
                    "ProbeSet.from_dataset(..., groups=..., per_group=True), renumber the groups 0..G-1 if some id is "
                    "unused, or merge the missing group"
                )

    def _check_masks(self, masks: Tensor) -> Tensor:
        n, _, h, w = self.images.shape
        masks = torch.as_tensor(masks)
        if masks.dim() == 3:
            masks = masks.unsqueeze(1)
        if masks.shape != (n, 1, h, w):
            raise ValueError(
                f"masks must have shape [N,1,H,W] = {[n, 1, h, w]} to match the images, got {tuple(masks.shape)}"
            )
        if masks.dtype.is_floating_point:
            finite = torch.isfinite(masks)
            if not bool(finite.all()):
                raise ValueError(
                    f"masks of probe images {_first_positions(~finite.flatten(1).all(1).cpu())} hold NaN or Inf; "
                    "masks must be bool (object = True)"
                )
            hard = (masks == 0) | (masks == 1)
            if not bool(hard.all()):
                soft = ~hard.flatten(1).all(1).cpu()
                lo, hi = float(masks.min()), float(masks.max())
                kind = "soft (values between 0 and 1)" if lo >= 0.0 and hi <= 1.0 else f"not 0/1 (range {lo}..{hi})"
                raise ValueError(
                    f"masks of probe images {_first_positions(soft)} are {kind}; the shortcut metrics need hard "
                    "foreground masks (object = True). Binarise them, e.g. masks=soft_masks > 0.5; a loose mask "
                    "(low threshold) leaks background into 'object only', a tight one leaves object in 'background "
                    "only' (docs/shortcut.md)"
                )
        masks = masks.bool() if masks.dtype != torch.bool else masks
        area = masks.flatten(1).float().mean(1)
        empty = (area == 0).nonzero().flatten().tolist()
        full = (area == 1).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"masks of probe images {empty} are empty; every probe image needs some foreground")
        if full:
            raise ValueError(f"masks of probe images {full} cover the whole image; a mask must leave some background")
        return masks

    @staticmethod
    def masks_from_boxes(boxes: Tensor | Sequence[Sequence[float]], image_size: tuple[int, int]) -> Tensor:
        """Boolean masks ``[N,1,H,W]`` from boxes ``[N,4]`` given as ``(x0, y0, x1, y1)`` in pixels, ``x1``/``y1``
        exclusive (a box covers columns ``x0 .. x1-1``). Fractional coordinates are rounded to the nearest pixel.

        Example:
            >>> ProbeSet.masks_from_boxes([[1, 0, 3, 2]], (3, 4))[0, 0].int().tolist()
            [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
        """
        b = torch.as_tensor(boxes, dtype=torch.float32)
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes must be [N,4] (x0, y0, x1, y1), got shape {tuple(b.shape)}")
        h, w = image_size
        b = b.round().long()
        if (b[:, 2] <= b[:, 0]).any() or (b[:, 3] <= b[:, 1]).any():
            raise ValueError("every box needs x1 > x0 and y1 > y0 (pixels, x1/y1 exclusive)")
        ys = torch.arange(h).view(1, h, 1)
        xs = torch.arange(w).view(1, 1, w)
        inside = (
            (ys >= b[:, 1].view(-1, 1, 1))
            & (ys < b[:, 3].view(-1, 1, 1))
            & (xs >= b[:, 0].view(-1, 1, 1))
            & (xs < b[:, 2].view(-1, 1, 1))
        )
        return inside.unsqueeze(1)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    @property
    def has_groups(self) -> bool:
        return self.groups is not None

    @property
    def num_groups(self) -> int:
        """Number of groups ``G`` (0 without groups)."""
        return 0 if self.groups is None else int(self.groups.max()) + 1

    def group_name(self, index: int) -> str:
        """Name of group ``index`` (its number when no names were given)."""
        if self.group_names is not None and 0 <= index < len(self.group_names):
            return self.group_names[index]
        return str(index)

    def class_name(self, index: int) -> str:
        """Name of class ``index`` (its number when no names were given)."""
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def fingerprint(self) -> str:
        """A short hash of the images, targets and (when given) groups: a resumed run checks it sees the identical
        probe set. A probe without groups hashes as before groups existed."""
        if self._fingerprint is None:
            h = hashlib.sha1()
            h.update(self.images.detach().float().cpu().contiguous().numpy().tobytes())
            h.update(self.targets.cpu().numpy().tobytes())
            if self.groups is not None:
                h.update(b"groups")
                h.update(self.groups.cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def interleaved(self) -> Tensor:
        """Probe indices in the order pictures show them: interleaved by class (the first image of each class, then
        the second of each, ...; classes by index, each class in probe order), so the first ``k`` of any grid cover
        every class. Stable across steps (it depends on the targets only).

        Example:
            >>> import torch
            >>> ProbeSet(torch.zeros(5, 1, 4, 4), torch.tensor([0, 0, 0, 1, 1])).interleaved().tolist()
            [0, 3, 1, 4, 2]
        """
        t = self.targets.cpu()
        rank = torch.zeros_like(t)
        for c in t.unique():
            members = t == c
            rank[members] = torch.arange(int(members.sum()))
        return torch.argsort(rank * (int(t.max()) + 1) + t, stable=True)

    def display_images(self) -> Tensor:
        """The probe images as ``uint8 [N,3,H,W]`` for display (normalisation undone)."""
        from probelens.render import to_display_images

        return to_display_images(self.images.detach().float().cpu(), self.mean, self.std, self.denormalize)

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        num_samples: int = 16,
        per_class: bool = True,
        seed: int = 0,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        denormalize: Denormalize | None = None,
        class_names: Sequence[str] | None = None,
        masks: Tensor | MaskFunction | None = None,
        groups: GroupSource | None = None,
        group_names: Sequence[str] | None = None,
        per_group: bool = True,
        input_key: str | None = None,
        target_key: str | None = None,
    ) -> ProbeSet:
        """Pick a fixed, seeded subset of a map-style dataset.

        With ``per_class=True`` the subset is class-balanced: ``num_samples // num_classes`` images of each class (the
        remainder goes to the first classes), drawn in the order of a random permutation from a private
        ``torch.Generator(seed)``. With ``groups`` and ``per_group=True`` it is balanced over the (class, group) cells
        instead, so that the rare images whose group disagrees with their class in a biased validation set (the ones
        a shortcut gets wrong) are in it; a cell with fewer images than its share is taken whole and warned about
        (naming the cell and its count), a class without some group is refused. The global RNGs (torch,
        ``random``, numpy) are restored after the dataset's items are read, so random transforms in the dataset do
        not change the training that follows. Items may be ``(image, label)``, ``(image, label, mask)`` or dicts
        (an image key of :data:`IMAGE_KEYS` such as ``image`` or Hugging Face's ``pixel_values``, a label key of
        :data:`TARGET_KEYS` such as ``label``/``labels``, an optional ``mask``); masks found in the items are kept.

        The images must be floating point model inputs: a dataset of ``uint8`` (or other integer) images is refused
        with the fix, because converting them here would explain the model on inputs it never sees when its
        ``forward`` normalises integers itself, and gradients cannot flow through integer inputs.

        Args:
            dataset: a map-style dataset (``__len__`` and ``__getitem__``).
            num_samples: probe size.
            per_class: balance the classes.
            seed: the seed of the private generator.
            mean: normalisation mean for display.
            std: normalisation std for display.
            denormalize: or a callable mapping inputs back to ``[0,1]``.
            class_names: names for captions (defaults to ``dataset.classes``/``dataset.class_names`` if present).
            masks: explicit masks ``[num_samples,1,H,W]``, or a function ``(images, targets) -> masks``.
            groups: the group of each item (a spurious attribute): a sequence aligned with the dataset (``groups[i]``
                is item ``i``'s), a callable on the item (``lambda item: item["place"]``), or the key of dict items
                (``"place"``). Values are group ids ``0..G-1`` or strings (mapped to ids in sorted order, or by
                their position in ``group_names``).
            group_names: names of the groups (defaults to ``dataset.group_names`` if present, else the sorted
                string values).
            per_group: with ``groups``, balance the (class, group) cells (``per_class=False``: the groups only).
            input_key: the key of dict items that holds the image (default: the first of :data:`IMAGE_KEYS`).
            target_key: the key of dict items that holds the class index (default: the first of
                :data:`TARGET_KEYS`).

        Returns:
            The probe set, with ``indices`` and ``seed`` recorded.

        Example:
            >>> import torch
            >>> from torch.utils.data import TensorDataset
            >>> data = TensorDataset(torch.randn(40, 3, 8, 8), torch.arange(40) % 2)
            >>> probe = ProbeSet.from_dataset(data, num_samples=8, groups=(torch.arange(40) // 2) % 2,
            ...                               group_names=["land", "water"])
            >>> [(int(t), int(g)) for t, g in zip(probe.targets, probe.groups)].count((1, 0))
            2
        """
        try:
            wanted = operator.index(num_samples)  # numpy integers too
        except TypeError:
            wanted = 0
        if isinstance(num_samples, bool) or wanted < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
        num_samples = wanted
        for option, key in (("input_key", input_key), ("target_key", target_key)):
            if key is not None and not isinstance(key, str):
                raise ValueError(f"{option} must be the string key of dict items, got {key!r}")
        size = len(dataset)
        if size == 0:
            raise ValueError("the dataset is empty; the probe set needs at least one image")
        group_names = _names(group_names, "group_names")
        if groups is None and group_names is not None:
            raise ValueError(f"group_names={group_names} were given without groups=; pass both or neither")
        if groups is not None and not (callable(groups) or isinstance(groups, str)):
            if isinstance(groups, Tensor) and groups.dim() != 1:
                raise ValueError(f"groups must be 1-D (one group per dataset item), got shape {tuple(groups.shape)}")
            if len(groups) != size:
                raise ValueError(
                    f"groups has {len(groups)} entries but the dataset has {size} items; give one group per dataset "
                    "item, aligned with its indices (or a callable on the item, or the key of dict items)"
                )
        gen = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(size, generator=gen).tolist()
        labels = _dataset_labels(dataset) if target_key is None else None
        reads_items = groups is not None and (callable(groups) or isinstance(groups, str))
        raw_groups: dict[int, Any] = {}
        if labels is None or reads_items:
            # read labels (and groups) lazily in permutation order; enough for a balanced pick in any sane dataset
            budget = min(size, max(50 * num_samples, 1000))
            label_of: dict[int, int] = {}
            with _rng_preserved():  # a dataset's random transforms must not move the training's RNG streams
                for i in order[:budget]:
                    item = dataset[i]
                    label = labels[i] if labels is not None else _split_item(item, input_key, target_key)[1]
                    label_of[i] = _class_index(label, f"the label of dataset item {i}")
                    if reads_items:
                        raw_groups[i] = _group_of_item(item, cast("Callable[[Any], Any] | str", groups), i)
            order = order[:budget]
        else:
            label_of = {i: int(labels[i]) for i in order}
        if groups is not None and not reads_items:
            raw_groups = {i: groups[i] for i in order}  # type: ignore[index]
        if groups is not None and group_names is None:
            group_names = _names(getattr(dataset, "group_names", None), "dataset.group_names")
        group_of, group_names = _group_ids(raw_groups, group_names) if groups is not None else ({}, group_names)

        def cell(i: int) -> tuple[int, ...]:
            key = (label_of[i],) if per_class else ()
            return (*key, group_of[i]) if groups is not None and per_group else key

        if per_class or (groups is not None and per_group):
            count: dict[tuple[int, ...], int] = {}
            for i in order:
                count[cell(i)] = count.get(cell(i), 0) + 1
            cells = sorted(count)
            if groups is not None and per_group:
                num_groups = len(group_names) if group_names is not None else max(group_of.values()) + 1
                classes = sorted(set(label_of.values())) if per_class else [None]
                cells = sorted((c, g) if c is not None else (g,) for c in classes for g in range(num_groups))
            quota = {
                k: num_samples // len(cells) + (1 if n < num_samples % len(cells) else 0) for n, k in enumerate(cells)
            }
            short = {k: count.get(k, 0) for k in cells if count.get(k, 0) < quota[k]}
            if groups is not None and per_group:
                _warn_short_cells(short, quota, len(order), size, class_names, group_names, per_class, dataset)
            chosen: list[int] = []
            for i in order:
                k = cell(i)
                if quota.get(k, 0) > 0:
                    chosen.append(i)
                    quota[k] -= 1
                    if len(chosen) == num_samples:
                        break
            # a class (or cell) with too few images: fill up with others
            if len(chosen) < num_samples:
                taken = set(chosen)
                rest = [i for i in order if i not in taken]
                chosen += rest[: num_samples - len(chosen)]
            rank = {i: k for k, i in enumerate(order)}
            if per_class:
                chosen.sort(key=lambda i: (label_of[i], rank[i]))
        else:
            chosen = order[:num_samples]
        with _rng_preserved():
            items = [_split_item(dataset[i], input_key, target_key) for i in chosen]
        for i, item in zip(chosen, items):
            if not item[0].dtype.is_floating_point:
                image = item[0]
                raise ValueError(
                    f"the dataset yields {image.dtype} images (item {i}: values {int(image.min())}..{int(image.max())}"
                    "); probelens explains the model's floating point inputs (gradients flow through them) and will "
                    "not convert them itself: floats 0-255 (or /255) are inputs the model never sees if its forward "
                    "normalises integer images. Convert in the dataset's transform (e.g. torchvision.transforms.v2."
                    "ToDtype(torch.float32, scale=True) then Normalize(mean, std)) and train the model on those "
                    "floats, or build the probe from the floats your model's forward accepts: "
                    "ProbeSet(images.float() / 255, targets, ...)"
                )
        shapes = {tuple(it[0].shape) for it in items}
        if len(shapes) > 1:
            raise ValueError(
                f"the picked dataset images have different shapes {sorted(shapes)}; a probe set is one batch: give "
                "the dataset a transform that resizes (e.g. torchvision.transforms.v2.Resize((H, W)))"
            )
        images = torch.stack([it[0] for it in items]).float()
        targets = torch.tensor(
            [_class_index(it[1], f"the label of dataset item {i}") for i, it in zip(chosen, items)], dtype=torch.long
        )
        if callable(masks):
            mask_tensor: Tensor | None = masks(images, targets)
        elif masks is not None:
            mask_tensor = masks
        elif all(it[2] is not None for it in items):
            mask_tensor = torch.stack([it[2] for it in items if it[2] is not None])
        else:
            mask_tensor = None
        if class_names is None:
            class_names = getattr(dataset, "class_names", None) or getattr(dataset, "classes", None)
        return cls(
            images=images,
            targets=targets,
            masks=mask_tensor,
            mean=mean,
            std=std,
            denormalize=denormalize,
            class_names=class_names,
            indices=torch.tensor(chosen, dtype=torch.long),
            seed=int(seed),
            groups=None if groups is None else torch.tensor([group_of[i] for i in chosen], dtype=torch.long),
            group_names=group_names,
        )


def _group_of_item(item: Any, groups: Callable[[Any], Any] | str, index: int) -> Any:
    if isinstance(groups, str):
        if not isinstance(item, dict):
            raise ValueError(
                f"groups={groups!r} names a key of dict items, but the dataset's items are {type(item).__name__}s; "
                "pass a sequence aligned with the dataset or a callable on the item (e.g. lambda item: item[2])"
            )
        if groups not in item:
            raise ValueError(f"groups={groups!r} is not a key of dataset item {index} (keys: {sorted(map(str, item))})")
        return item[groups]
    return groups(item)


def _group_ids(raw: dict[int, Any], names: list[str] | None) -> tuple[dict[int, int], list[str] | None]:
    """Group ids per dataset index from raw values (ints, 0-d tensors or strings), and the group names."""
    values = {i: (v.item() if isinstance(v, Tensor) and v.numel() == 1 else v) for i, v in raw.items()}
    strings = {v for v in values.values() if isinstance(v, str)}
    if strings:
        if any(not isinstance(v, str) for v in values.values()):
            raise ValueError("groups mix strings and numbers; give group ids 0..G-1 or names, not both")
        if names is None:
            names = sorted(strings)
        unknown = sorted(strings - set(names))
        if unknown:
            raise ValueError(f"groups holds {unknown}, which group_names={names} does not name")
        return {i: names.index(str(v)) for i, v in values.items()}, names
    out: dict[int, int] = {}
    for i, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                raise ValueError(
                    f"groups must be integer group ids, got the float {v!r} for dataset item {i}; convert with "
                    "groups.long() (or int(...) in the callable)"
                )
            raise ValueError(
                f"groups must be integer group ids (or names), got {v!r} ({type(v).__name__}) for dataset item {i}"
            )
        if v < 0:
            raise ValueError(f"groups must be non-negative group ids, got {v} for dataset item {i}")
        out[i] = v
    return out, names


def _warn_short_cells(
    short: dict[tuple[int, ...], int],
    quota: dict[tuple[int, ...], int],
    read: int,
    size: int,
    class_names: Sequence[str] | None,
    group_names: Sequence[str] | None,
    per_class: bool,
    dataset: Any,
) -> None:
    """Refuse a class without some group; warn once, naming every cell with fewer images than its share."""
    names = _names(class_names, "class_names") or _names(
        getattr(dataset, "class_names", None) or getattr(dataset, "classes", None), "dataset.classes"
    )

    def label(k: tuple[int, ...]) -> str:
        group = group_names[k[-1]] if group_names is not None and k[-1] < len(group_names) else str(k[-1])
        if not per_class:
            return f"(group {group!r})"
        cls = names[k[0]] if names is not None and k[0] < len(names) else str(k[0])
        return f"(class {cls!r}, group {group!r})"

    where = f"the {read} dataset items read" if read < size else f"the dataset's {size} items"
    empty = [label(k) for k, n in short.items() if n == 0]
    if empty:
        raise ValueError(
            f"no image of cell(s) {', '.join(empty)} among {where}; every class needs every group (the monitor "
            "compares a class's accuracy across groups): use a validation set that has them, merge that group, or "
            "renumber the groups 0..G-1 if some id is unused"
        )
    if short:
        cells = ", ".join(f"{label(k)}: {n} of {quota[k]}" for k, n in short.items())
        warnings.warn(
            f"ProbeSet.from_dataset: too few images for an even (class, group) balance among {where}: {cells}. "
            "Those cells are taken whole and the probe is filled up from the others; their accuracies move in "
            "steps of 1/count. Use a larger validation set (or num_samples that its rarest cell can fill).",
            UserWarning,
            stacklevel=3,
        )
