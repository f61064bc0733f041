"""What each kind of evidence catches, and when: the table of README / docs/shortcut.md ("what you have").

    python docs/measure_evidence.py [--epochs 6] [--out docs/evidence_figures.md]     # ~10 minutes on 2 CPU cores

Two families, each trained at p=0.95 (the background colour or scene agrees with the class 95% of the time: a
shortcut run) and p=0.5 (it says nothing: a clean run):

- coloured digits (``probelens.data.colored_digits``): real handwriting from scikit-learn's bundled digits, red or
  green background; masks from the strokes' soft alpha at three thresholds (loose 0.2, 0.5, tight 0.8);
- snow vs desert (``probelens.data.SnowDesertDataset``): procedural leopards on snow or sand, exact masks.

On each run, side by side and each with the monitors' defaults: ``ShortcutMonitor`` with masks only (one per mask
threshold), with group labels only (the background), ``ConceptMonitor`` with pictures of the two backgrounds (both
named spurious), and ``StrategyMonitor`` (no evidence: discovery; it claims no verdict, so its "decided in two ways"
flag is reported as what it is). Masks, concepts and discovery take a class-balanced probe from validation data
distributed like the training data (what a user has); group labels take a probe balanced over (class, group) cells
(what ``from_dataset(groups=...)`` picks). Ground truth per epoch: the accuracy on held-out images whose background
disagrees with the class (*conflict accuracy*); the shortcut counts as learned from the first epoch where it is below
0.5.

Reported per run and evidence: the first epoch whose alert stands (``verdict`` 1; concept: the alert text), the
detection lag in epochs after the shortcut was learned, and on clean runs the epochs with an alert (false alarms).
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import SCALARS, TENSORS, EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import probelens
from probelens import ProbeSet

ROOT = Path(__file__).resolve().parents[1]


class Net(pl.LightningModule):
    """A small CNN (three conv blocks), the same for every family."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2),
        )  # fmt: skip
        self.conflict_acc: list[float] = []
        self.conflict: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking or self.conflict is None:
            return
        x, y = self.conflict
        with torch.no_grad():
            self.conflict_acc.append((self(x).argmax(1) == y).float().mean().item())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=2e-3)


def colored_digits(p: float):
    from probelens.data.colored_digits import ColoredDigitsDataset, color_patches

    train = ColoredDigitsDataset("train", p=p, seed=0)
    val = ColoredDigitsDataset("val", p=0.5, seed=1)  # a balanced validation set: half of it conflicts
    like_train = ColoredDigitsDataset("val", p=p, seed=1)  # the validation data a user has: distributed as training
    masks = {f"masks@{t}": (like_train, like_train.masks(t)) for t in (0.2, 0.5, 0.8)}
    concepts = {"red": color_patches(30, "red", seed=2), "green": color_patches(30, "green", seed=3)}
    return train.images, train.labels, val.images, val.labels, val.colors, masks, concepts, val


def snow_desert(p: float):
    from probelens.data import SnowDesertDataset

    train = SnowDesertDataset(n=2000, size=48, p=p, seed=0)
    val = SnowDesertDataset(n=400, size=48, p=0.5, seed=1)
    like_train = SnowDesertDataset(n=400, size=48, p=p, seed=1)
    masks = {"masks": (like_train, like_train.masks)}
    backgrounds = SnowDesertDataset(n=120, size=48, p=1.0, seed=7, spot_contrast=0.0)  # no leopard coat to see
    plain = backgrounds.images * (~backgrounds.masks)  # the background alone
    concepts = {name: plain[backgrounds.backgrounds == g][:30] for g, name in enumerate(("snow", "desert"))}
    return train.images, train.labels, val.images, val.labels, val.backgrounds, masks, concepts, val


FAMILIES = {"coloured digits": colored_digits, "snow/desert": snow_desert}


def probe_of(val, images, labels, groups, masks=None, n: int = 32, with_groups: bool = True) -> ProbeSet:
    """``n`` probe images balanced over (class, group) cells, with the dataset's normalisation; the group labels are
    given to the probe only ``with_groups`` (a masks-only run must not see them)."""
    g = torch.Generator().manual_seed(0)
    picked = []
    for c in (0, 1):
        for k in (0, 1):
            cell = torch.nonzero((labels == c) & (groups == k)).flatten()
            picked.append(cell[torch.randperm(len(cell), generator=g)[: n // 4]])
    idx = torch.cat(picked)
    return ProbeSet(
        images[idx],
        labels[idx],
        masks=None if masks is None else masks[idx],
        groups=groups[idx] if with_groups else None,
        group_names=list(getattr(val, "group_names", ("snow", "desert"))) if with_groups else None,
        mean=val.mean,
        std=val.std,
        class_names=list(val.class_names),
    )


def run(family: str, p: float, epochs: int, root: str) -> dict:
    x, y, vx, vy, vg, masks, concepts, val = FAMILIES[family](p)
    model = Net()
    conflict = vg != vy
    model.conflict = (vx[conflict], vy[conflict])
    monitors = []
    for name, (data, m) in masks.items():
        # masks as users have them: a class-balanced probe from validation data distributed like the training data
        # (a probe balanced over the background groups would hold the model at chance and never arm this verdict)
        g = torch.Generator().manual_seed(0)
        idx = torch.cat(
            [
                torch.nonzero(data.labels == c).flatten()[
                    torch.randperm(int((data.labels == c).sum()), generator=g)[:16]
                ]
                for c in (0, 1)
            ]
        )
        probe = ProbeSet(
            data.images[idx],
            data.labels[idx],
            masks=m[idx],
            mean=data.mean,
            std=data.std,
            class_names=list(data.class_names),
        )
        monitors.append(probelens.ShortcutMonitor(probe, name=name.replace("@", "_")))
    monitors.append(probelens.ShortcutMonitor(probe_of(val, vx, vy, vg), name="groups"))
    # concepts and discovery take the class-balanced probe a user has (the last one above, masks left out): their
    # verdict is armed by the probe accuracy, which a probe balanced over the background groups holds at chance
    plain = ProbeSet(probe.images, probe.targets, mean=probe.mean, std=probe.std, class_names=probe.class_names)
    monitors.append(probelens.ConceptMonitor(plain, concepts=concepts, spurious=tuple(concepts), name="concepts"))
    monitors.append(probelens.StrategyMonitor(plain, name="discovery"))
    logger = pl.loggers.TensorBoardLogger(root, name=f"{family.replace('/', '_').replace(' ', '_')}_{p}")
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=logger,
        callbacks=monitors,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(
            model,
            DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True),
            DataLoader(TensorDataset(vx, vy), batch_size=256),
        )
    acc = EventAccumulator(logger.log_dir, size_guidance={SCALARS: 0, TENSORS: 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    steps = sorted({e.step for e in acc.Scalars("val_loss")})
    result = {"conflict_acc": model.conflict_acc, "evidence": {}}
    for monitor in monitors:
        tag = f"shortcut/{monitor.name}/verdict"
        if tag in scalars:
            by_step = {e.step: e.value for e in acc.Scalars(tag)}
            result["evidence"][monitor.name] = [int(by_step.get(s, 0.0) >= 0.5) for s in steps]
        elif monitor.name == "concepts":  # standing from the monitor's record of alerts and clears, per step
            events = sorted([(step, 1) for step, *_ in monitor.alerts] + [(step, -1) for step, *_ in monitor.clears])
            standing, state, changes = [], 0, dict.fromkeys(steps, 0)
            for step, change in events:
                changes[step] = changes.get(step, 0) + change
            for s in steps:
                state += changes.get(s, 0)
                standing.append(int(state > 0))
            result["evidence"]["concepts"] = standing
            cosines = [t for t in scalars if t.startswith("concept/") and t.endswith("/cosine")]
            best = {
                s: max((e.value for t in cosines for e in acc.Scalars(t) if e.step == s), default=float("nan"))
                for s in steps
            }
            result["cosine"] = [best[s] for s in steps]
        elif monitor.name == "discovery":
            flags = [t for t in scalars if t.startswith("discovery/") and t.endswith("two_strategies")]
            hit = {e.step for t in flags for e in acc.Scalars(t) if e.value >= 0.5}
            result["evidence"]["discovery (flag, no verdict)"] = [int(s in hit) for s in steps]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", default=str(ROOT / "docs" / "evidence_figures.md"))
    args = parser.parse_args()
    lines = [
        "# What each evidence catches (measured by `docs/measure_evidence.py`)",
        "",
        f"{args.epochs} epochs per run; per epoch: conflict accuracy (ground truth) and each evidence's alert (1 while",
        "it stands). Lag: epochs from the first epoch with conflict accuracy < 0.5 to the first alert.",
        "",
    ]
    with tempfile.TemporaryDirectory() as root:
        for family in FAMILIES:
            for p in (0.95, 0.5):
                r = run(family, p, args.epochs, root)
                learned = next((i for i, a in enumerate(r["conflict_acc"]) if a < 0.5), None)
                lines += [f"## {family}, p={p}", "", "| epoch | " + " | ".join(map(str, range(args.epochs))) + " |"]
                lines += ["|---" * (args.epochs + 1) + "|"]
                lines += ["| conflict accuracy | " + " | ".join(f"{a:.2f}" for a in r["conflict_acc"]) + " |"]
                if "cosine" in r:
                    lines += ["| concepts: largest cosine | " + " | ".join(f"{c:.2f}" for c in r["cosine"]) + " |"]
                for name, alerts in r["evidence"].items():
                    first = next((i for i, a in enumerate(alerts) if a), None)
                    lag = "" if first is None or learned is None else f" (lag {first - learned})"
                    lines += [f"| {name}{lag} | " + " | ".join(map(str, alerts)) + " |"]
                lines.append("")
                print("\n".join(lines[-(len(r["evidence"]) + 6) :]), flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
