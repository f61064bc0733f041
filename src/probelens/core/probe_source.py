"""A probe set picked from the trainer's own data, for monitors constructed without one (e.g. in a LightningCLI
config): the validation dataset, else the test one, else the training one."""

from __future__ import annotations

from typing import Any

from lightning_utilities.core.rank_zero import rank_zero_warn
from torch.utils.data import IterableDataset

from probelens.core.run import SharedRun
from probelens.probe import ProbeSet

_SOURCES = ("val_dataloaders", "test_dataloaders", "train_dataloader")


def first_map_dataset(trainer: Any) -> tuple[Any, str]:
    """The first dataset of the trainer's loaders (validation, test, training) that can be sampled by index, and
    where it came from (``"val"``, ``"test"``, ``"train"``); ``(None, "")`` when there is none."""
    for attr in _SOURCES:
        loaders = getattr(trainer, attr, None)
        if loaders is None:
            continue
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        dataset = getattr(loader, "dataset", None)
        # an IterableDataset has __getitem__ (torch's Dataset base raises NotImplementedError in it) and may have
        # __len__: it cannot be sampled by index all the same
        if isinstance(dataset, IterableDataset):
            continue
        if dataset is not None and hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
            return dataset, attr.split("_")[0]
    return None, ""


def probe_from_trainer(
    trainer: Any,
    size: int,
    seed: int,
    owner: str = "probelens",
    *,
    run: SharedRun,
    input_key: str | None = None,
    target_key: str | None = None,
) -> ProbeSet | None:
    """``ProbeSet.from_dataset`` of the trainer's first map-style dataset (``None`` when it has none yet: loaders
    are attached lazily), with the dataset's ``mean``/``std`` attributes when it has them; one per (dataset, size,
    seed, keys) and ``run``, so monitors with the same options share one probe set and one pass. ``input_key`` and
    ``target_key`` name the keys of dict items (default: ``ProbeSet.from_dataset``'s known keys, Hugging Face's
    ``pixel_values``/``labels`` among them). A dataset the probe cannot be built from raises a ``ValueError`` that
    says where the probe came from and how to pass one (raised before the first training step)."""
    dataset, source = first_map_dataset(trainer)
    if dataset is None:
        return None
    size = clamp_to_dataset(dataset, source, size, owner, "probe_size", "probe set")
    probes = run.probes
    key = (id(dataset), size, seed)
    if input_key is not None or target_key is not None:
        probes = {}  # named keys: this monitor's own probe set (the run's shared ones are read with the known keys)
    if key not in probes:
        mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
        if not (isinstance(mean, (tuple, list)) and isinstance(std, (tuple, list))):
            mean = std = None
        probes[key] = sample_dataset(
            dataset,
            source,
            f"{owner} was built without probe= and picks its probe set from",
            f"Build the probe yourself and pass it: {owner}(probe=ProbeSet.from_dataset({source}_dataset, "
            f"num_samples={size}, input_key=..., target_key=...)) for dict items with other keys, or "
            "ProbeSet(images, targets)",
            num_samples=size,
            seed=seed,
            mean=mean,
            std=std,
            input_key=input_key,
            target_key=target_key,
        )
    return probes[key]


def clamp_to_dataset(dataset: Any, source: str, size: int, owner: str, option: str, what: str) -> int:
    """``size``, or the dataset's length where that is smaller, said in a warning that names ``option``."""
    available = len(dataset)
    if available < size:
        rank_zero_warn(
            f"{owner}: {option}={size} but the {source} dataset has only {available} images, so the {what} "
            f"holds all {available}; pass {option}<={available} to silence this."
        )
    return min(size, available)


def sample_dataset(dataset: Any, source: str, why: str, fix: str, **options: Any) -> ProbeSet:
    """``ProbeSet.from_dataset(dataset, **options)``; a dataset it cannot be built from raises a ``ValueError`` that
    says where the set came from (``why`` + the trainer's ``source`` dataset) and ``fix``, instead of a bare error
    from deep inside the dataset (raised before the first training step)."""
    try:
        return ProbeSet.from_dataset(dataset, **options)
    except (ValueError, TypeError, KeyError, IndexError) as err:
        raise ValueError(
            f"{why} the trainer's {source} dataset ({type(dataset).__name__}), which failed: {type(err).__name__}: "
            f"{err}. {fix}"
        ) from err
