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
    available = len(dataset)
    if available < size:
        rank_zero_warn(
            f"{owner}: probe_size={size} but the {source} dataset has only {available} images, so the probe set "
            f"holds all {available}; pass probe_size<={available} to silence this."
        )
        size = available
    probes = run.probes
    key = (id(dataset), size, seed)
    if input_key is not None or target_key is not None:
        probes = {}  # named keys: this monitor's own probe set (the run's shared ones are read with the known keys)
    if key not in probes:
        mean, std = getattr(dataset, "mean", None), getattr(dataset, "std", None)
        if not (isinstance(mean, (tuple, list)) and isinstance(std, (tuple, list))):
            mean = std = None
        try:
            probes[key] = ProbeSet.from_dataset(
                dataset, num_samples=size, seed=seed, mean=mean, std=std, input_key=input_key, target_key=target_key
            )
        except (ValueError, TypeError, KeyError, IndexError) as err:
            # raised before the first training step (the sanity check or train start): say where the probe came from
            # and how to give one, instead of a bare error from deep inside the dataset
            raise ValueError(
                f"{owner} was built without probe= and picks its probe set from the trainer's {source} dataset "
                f"({type(dataset).__name__}), which failed: {type(err).__name__}: {err}. Build the probe yourself and "
                f"pass it: {owner}(probe=ProbeSet.from_dataset({source}_dataset, num_samples={size}, "
                "input_key=..., target_key=...)) for dict items with other keys, or ProbeSet(images, targets)"
            ) from err
    return probes[key]
