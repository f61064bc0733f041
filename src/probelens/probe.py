"""The probe set: a small, fixed batch of validation images every monitor explains at every log step."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

Denormalize = Callable[[Tensor], Tensor]
MaskFunction = Callable[[Tensor, Tensor], Tensor]


def _split_item(item: Any) -> tuple[Tensor, Any, Tensor | None]:
    """(image, label, mask-or-None) from a dataset item: a tuple/list ``(x, y[, mask])`` or a mapping with
    ``image``/``label`` (or ``input``/``target``) and optional ``mask`` keys."""
    if isinstance(item, dict):
        image = item.get("image", item.get("input", item.get("x")))
        label = item.get("label", item.get("target", item.get("y")))
        mask = item.get("mask")
        if image is None or label is None:
            raise ValueError(
                f"dataset items are dicts with keys {sorted(item)}; ProbeSet.from_dataset needs 'image' and 'label' "
                "(or 'input'/'target') keys"
            )
        return torch.as_tensor(image), label, None if mask is None else torch.as_tensor(mask)
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        mask = item[2] if len(item) >= 3 and isinstance(item[2], Tensor) else None
        return torch.as_tensor(item[0]), item[1], mask
    raise ValueError(
        f"cannot read a dataset item of type {type(item).__name__}; ProbeSet.from_dataset needs (image, label), "
        "(image, label, mask) or a dict with 'image' and 'label'"
    )


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

    Raises:
        ValueError: a tensor has the wrong rank, dtype or size; the set is empty; masks are empty or full.
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
        self.targets = torch.as_tensor(self.targets)
        if self.targets.shape != (n,):
            raise ValueError(
                f"targets must have shape [{n}] (one class index per image), got {tuple(self.targets.shape)}"
            )
        if self.targets.dtype.is_floating_point or self.targets.dtype == torch.bool:
            raise ValueError(f"targets must be integer class indices, got dtype {self.targets.dtype}")
        self.targets = self.targets.long()
        if int(self.targets.min()) < 0:
            raise ValueError(f"targets must be non-negative class indices, got minimum {int(self.targets.min())}")
        if self.class_names is not None:
            self.class_names = [str(c) for c in self.class_names]
            if int(self.targets.max()) >= len(self.class_names):
                raise ValueError(
                    f"target {int(self.targets.max())} has no name: class_names has {len(self.class_names)} entries"
                )
        channels = self.images.shape[1]
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) not in (1, channels):
                    raise ValueError(f"{name} has {len(value)} values but the images have {channels} channels")
                setattr(self, name, value)
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std (or neither, or a denormalize callable)")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ValueError(f"std must be non-zero, got {self.std}")
        if self.masks is not None:
            self.masks = self._check_masks(self.masks)

    def _check_masks(self, masks: Tensor) -> Tensor:
        n, _, h, w = self.images.shape
        masks = torch.as_tensor(masks)
        if masks.dim() == 3:
            masks = masks.unsqueeze(1)
        if masks.shape != (n, 1, h, w):
            raise ValueError(
                f"masks must have shape [N,1,H,W] = {[n, 1, h, w]} to match the images, got {tuple(masks.shape)}"
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

    def class_name(self, index: int) -> str:
        """Name of class ``index`` (its number when no names were given)."""
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def fingerprint(self) -> str:
        """A short hash of the images and targets: a resumed run checks it sees the identical probe set."""
        if self._fingerprint is None:
            h = hashlib.sha1()
            h.update(self.images.detach().float().cpu().contiguous().numpy().tobytes())
            h.update(self.targets.cpu().numpy().tobytes())
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
    ) -> ProbeSet:
        """Pick a fixed, seeded subset of a map-style dataset.

        With ``per_class=True`` the subset is class-balanced: ``num_samples // num_classes`` images of each class (the
        remainder goes to the first classes), drawn in the order of a random permutation from a private
        ``torch.Generator(seed)``. The global RNGs (torch, ``random``, numpy) are restored after the dataset's items
        are read, so random transforms in the dataset do not change the training that follows. Items may be
        ``(image, label)``, ``(image, label, mask)`` or dicts with ``image``/``label``/``mask`` keys; masks found in
        the items are kept.

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

        Returns:
            The probe set, with ``indices`` and ``seed`` recorded.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        size = len(dataset)
        if size == 0:
            raise ValueError("the dataset is empty; the probe set needs at least one image")
        gen = torch.Generator().manual_seed(int(seed))
        order = torch.randperm(size, generator=gen).tolist()
        labels = _dataset_labels(dataset)
        if labels is None:
            # read labels lazily in permutation order; enough for a balanced pick in any sane dataset
            budget = min(size, max(50 * num_samples, 1000))
            with _rng_preserved():  # a dataset's random transforms must not move the training's RNG streams
                label_of = {i: int(torch.as_tensor(_split_item(dataset[i])[1])) for i in order[:budget]}
            order = order[:budget]
        else:
            label_of = {i: int(labels[i]) for i in order}
        if per_class:
            classes = sorted(set(label_of.values()))
            quota = {
                c: num_samples // len(classes) + (1 if k < num_samples % len(classes) else 0)
                for k, c in enumerate(classes)
            }
            chosen: list[int] = []
            for i in order:
                c = label_of[i]
                if quota[c] > 0:
                    chosen.append(i)
                    quota[c] -= 1
                    if len(chosen) == num_samples:
                        break
            # a class with too few images: fill up with others
            if len(chosen) < num_samples:
                taken = set(chosen)
                rest = [i for i in order if i not in taken]
                chosen += rest[: num_samples - len(chosen)]
            rank = {i: k for k, i in enumerate(order)}
            chosen.sort(key=lambda i: (label_of[i], rank[i]))
        else:
            chosen = order[:num_samples]
        with _rng_preserved():
            items = [_split_item(dataset[i]) for i in chosen]
        images = torch.stack([it[0].float() for it in items])
        targets = torch.tensor([int(torch.as_tensor(it[1])) for it in items], dtype=torch.long)
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
        )
