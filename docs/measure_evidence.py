"""What each kind of evidence catches, and when: the table of README / docs/shortcut.md ("what you have").

    python docs/measure_evidence.py [--epochs 6] [--out docs/evidence_figures.md]     # ~10 minutes on 2 CPU cores
    python docs/measure_evidence.py --mask-quality [--epochs 12] [--seeds 3]           # ~5 minutes: masks section
    python docs/measure_evidence.py --digits-cnn 0.8 [--seeds 2]      # masks, a CNN that learns the digits (~2 min)

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


class Snapshots(pl.Callback):
    """The model's weights at the end of every validation (offline evaluation of many mask variants per epoch)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.states.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
"""Mask thresholds on the digits' soft alpha: 0.1-0.3 loose (background inside), 0.7-0.9 tight (edge left out)."""
MARGINS = (0, None)
"""``mask_margin``: 0 keeps the masks as given (probelens before the mask fit), ``None`` (the default) fits each mask
to its object (:func:`probelens.metrics.fit_mask_margins`)."""


def mask_quality_run(p: float, seed: int, epochs: int, root: str) -> dict:
    """Train the evidence CNN on coloured digits at ``p`` and evaluate the mask verdict offline per epoch for every
    (mask threshold, margin) with the pure :func:`probelens.metrics.shortcut_report`."""
    from probelens.data.colored_digits import CLASS_NAMES, ColoredDigitsDataset
    from probelens.metrics import ShortcutVerdict, counterfactual_batch, shortcut_report

    train = ColoredDigitsDataset("train", p=p, seed=seed)
    val = ColoredDigitsDataset("val", p=0.5, seed=1)
    like_train = ColoredDigitsDataset("val", p=p, seed=1)
    model = Net(seed=seed)
    snaps = Snapshots()
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=False,
        callbacks=[snaps],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(
            model,
            DataLoader(TensorDataset(train.images, train.labels), batch_size=64, shuffle=True),
            DataLoader(TensorDataset(val.images[:64], val.labels[:64]), batch_size=64),
        )
    g = torch.Generator().manual_seed(0)
    idx = torch.cat(
        [
            torch.nonzero(like_train.labels == c).flatten()[
                torch.randperm(int((like_train.labels == c).sum()), generator=g)[:16]
            ]
            for c in (0, 1)
        ]
    )
    images, targets = like_train.images[idx], like_train.labels[idx]
    batches = {
        (t, m): counterfactual_batch(images, like_train.masks(t)[idx], targets, margin=m)
        for t in THRESHOLDS
        for m in MARGINS
    }
    conflict = val.colors != val.labels
    out: dict = {"worst": [], "conflict": [], "probe_acc": [], "score": {}, "alert": {}, "sensitivity": {}, "fg": {}}
    verdicts = {key: ShortcutVerdict(threshold=0.5, patience=2, min_accuracy=0.75) for key in batches}
    for state in snaps.states:
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            right = model(val.images).argmax(1) == val.labels
            per_class = [float(right[conflict & (val.labels == c)].float().mean()) for c in (0, 1)]
            out["worst"].append(min(per_class))
            out["conflict"].append(float(right[conflict].float().mean()))
            logits = model(images)
            for key, cf in batches.items():
                report = shortcut_report(
                    logits,
                    targets,
                    class_tags=CLASS_NAMES,
                    masks=like_train.masks(key[0])[idx],
                    counterfactuals=cf,
                    counterfactual_logits=model(cf.images),
                )
                verdicts[key].update(report.scores["masks"], report.gate)
                out["score"].setdefault(key, []).append(report.scores["masks"])
                out["alert"].setdefault(key, []).append(int(verdicts[key].active))
                out["sensitivity"].setdefault(key, []).append(report.mask_sensitivity)
                out["fg"].setdefault(key, []).append(report.scalars["shortcut/foreground_only_accuracy"])
        out["probe_acc"].append(report.scalars["shortcut/probe_accuracy"])
    return out


def judge(worst: list[float], alert: list[int]) -> tuple[int, int]:
    """``(false alarms, misses)`` of an alert sequence against the ground truth per epoch (the worst class's conflict
    accuracy ``w``): a false alarm is an epoch with the alert standing while ``w >= 0.7`` (the background wins at
    most 30% of every class's conflicts); a miss is an epoch with no alert while ``w < 0.3`` in it and in the epoch
    before (patience 2 needs two steps)."""
    false_alarms = sum(1 for w, a in zip(worst, alert) if a and w >= 0.7)
    misses = sum(1 for i in range(1, len(worst)) if worst[i] < 0.3 and worst[i - 1] < 0.3 and not alert[i])
    return false_alarms, misses


def mask_quality(epochs: int, seeds: int, out: Path) -> None:
    lines = [
        "<!-- mask-quality: begin -->",
        "## Masks as users have them (coloured digits)",
        "",
        f"`python docs/measure_evidence.py --mask-quality --epochs {epochs} --seeds {seeds}`: the evidence CNN trained",
        f"on coloured digits (32 px) at p = 0.5, 0.8, 0.95, seeds 0-{seeds - 1}, {epochs} epochs; a 32-image",
        "class-balanced probe from validation data distributed like the training data; masks `alpha > t` from the",
        "digits' soft edges (t = 0.1, 0.3 loose: background inside; 0.7, 0.9 tight: the soft edge left out). The mask",
        "verdict (threshold 0.5, patience 2, min_accuracy 0.75) is evaluated offline per epoch with",
        "`probelens.metrics.shortcut_report`, with the masks as given (`mask_margin=0`, probelens before the fit) and",
        "fitted to the objects (the default). Ground truth per epoch: the worst class's accuracy on 450 held-out",
        "digits whose colour disagrees with the class, `w`. False alarm: the alert stands while `w >= 0.7`; miss: no",
        "alert while `w < 0.3` in this and the previous epoch. Summed over seeds and epochs.",
        "",
    ]
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for p in (0.5, 0.8, 0.95):
            for seed in range(seeds):
                results[(p, seed)] = r = mask_quality_run(p, seed, epochs, root)
                print(f"p={p} seed={seed} worst-class conflict acc", [f"{w:.2f}" for w in r["worst"]], flush=True)
                for key in r["score"]:
                    print(
                        f"  t={key[0]} m={key[1]} score",
                        [f"{x:.2f}" for x in r["score"][key]],
                        "alert",
                        r["alert"][key],
                        "sens",
                        [f"{x:.2f}" for x in r["sensitivity"][key]],
                        flush=True,
                    )
    header = "| p | ground truth: epochs with w < 0.3 / w >= 0.7 | " + " | ".join(f"t={t}" for t in THRESHOLDS)
    for m in MARGINS:
        label = (
            "masks fitted to the objects (default, `mask_margin=None`)"
            if m is None
            else "masks as given (`mask_margin=0`)"
        )
        lines += [f"### {label}", ""]
        lines += [header + " |", "|---" * (len(THRESHOLDS) + 2) + "|"]
        for p in (0.5, 0.8, 0.95):
            runs = [results[(p, s)] for s in range(seeds)]
            low = sum(sum(w < 0.3 for w in r["worst"]) for r in runs)
            high = sum(sum(w >= 0.7 for w in r["worst"]) for r in runs)
            cells = []
            for t in THRESHOLDS:
                fa = sum(judge(r["worst"], r["alert"][(t, m)])[0] for r in runs)
                miss = sum(judge(r["worst"], r["alert"][(t, m)])[1] for r in runs)
                sens = max(max(x for x in r["sensitivity"][(t, m)] if x is not None) for r in runs)
                cells.append(f"{fa} FA, {miss} miss (sens. <= {sens:.2f})")
            lines += [f"| {p} | {low} / {high} | " + " | ".join(cells) + " |"]
        lines.append("")
    lines += ["Foreground-only accuracy of the p=0.95 runs (a colour model: ~0.5 if the masks hold no background):", ""]
    lines += ["| masks | " + " | ".join(f"t={t}" for t in THRESHOLDS) + " |", "|---" * (len(THRESHOLDS) + 1) + "|"]
    for m in MARGINS:
        vals = []
        for t in THRESHOLDS:
            fg = [
                x
                for s in range(seeds)
                for x in results[(0.95, s)]["fg"][(t, m)][1:] or results[(0.95, s)]["fg"][(t, m)]
            ]
            vals.append(f"{min(fg):.2f}-{max(fg):.2f}")
        lines += [f"| {'fitted' if m is None else 'as given'} | " + " | ".join(vals) + " |"]
    lines += ["", "<!-- mask-quality: end -->"]
    section = "\n".join(lines) + "\n"
    text = out.read_text() if out.exists() else ""
    if "<!-- mask-quality: begin -->" in text:
        head, rest = text.split("<!-- mask-quality: begin -->", 1)
        text = head + section + rest.split("<!-- mask-quality: end -->\n", 1)[-1]
    else:
        text = text + "\n" + section
    out.write_text(text)
    print(section)
    print(f"wrote {out}")


def digits_cnn(p: float, seeds: int, epochs: int = 10) -> None:
    """The mask verdict on a CNN that learns the digits (two conv blocks, no global pooling: where the strokes are
    matters), trained with a plain loop (batch 32, Adam 2e-3) on coloured digits at ``p``; per epoch the worst class's
    held-out conflict accuracy and, per mask threshold, masks as given (``0``) and fitted (``None``): the score, the
    alert (patience 2, min_accuracy 0.75), the leakage check and the object-only accuracy. At p=0.8 this model is
    mixed at first and an object model after, the setting of issue 23."""
    from probelens.data.colored_digits import CLASS_NAMES, ColoredDigitsDataset
    from probelens.metrics import ShortcutVerdict, counterfactual_batch, shortcut_report

    torch.set_num_threads(1)
    held_out = ColoredDigitsDataset("val", p=0.5, seed=2)
    conflict = held_out.colors != held_out.labels
    like = ColoredDigitsDataset("val", p=p, seed=1)
    g = torch.Generator().manual_seed(0)
    idx = torch.cat([torch.nonzero(like.labels == k).flatten()[torch.randperm(200, generator=g)[:16]] for k in (0, 1)])
    images, targets = like.images[idx], like.labels[idx]
    batches = {(t, m): counterfactual_batch(images, like.masks(t)[idx], targets, margin=m) for t in THRESHOLDS
               for m in MARGINS}  # fmt: skip
    for seed in range(seeds):
        train = ColoredDigitsDataset("train", p=p, seed=seed)
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 64, 2),
        )  # fmt: skip
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        order = torch.Generator().manual_seed(seed)
        verdicts = {k: ShortcutVerdict(0.5, 2, 0.75) for k in batches}
        rows: dict = {k: [] for k in batches}
        worst = []
        for _ in range(epochs):
            net.train()
            perm = torch.randperm(len(train.labels), generator=order)
            for i in range(0, len(perm), 32):
                b = perm[i : i + 32]
                loss = F.cross_entropy(net(train.images[b]), train.labels[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                right = net(held_out.images).argmax(1) == held_out.labels
                worst.append(min(float(right[conflict & (held_out.labels == k)].float().mean()) for k in (0, 1)))
                logits = net(images)
                for k, cf in batches.items():
                    r = shortcut_report(logits, targets, class_tags=CLASS_NAMES, masks=like.masks(k[0])[idx],
                                        counterfactuals=cf, counterfactual_logits=net(cf.images))  # fmt: skip
                    verdicts[k].update(r.scores["masks"], r.gate)
                    rows[k].append((r.scores["masks"], int(verdicts[k].active), r.mask_sensitivity,
                                    r.scalars["shortcut/foreground_only_accuracy"]))  # fmt: skip
        print(f"p={p} seed={seed} worst", " ".join(f"{w:.2f}" for w in worst), flush=True)
        for k, v in rows.items():
            print(
                f"  t={k[0]} m={k[1]} score", " ".join(f"{a:.2f}" for a, *_ in v),
                "alert", "".join(str(b) for _, b, *_ in v),
                "sens", " ".join(f"{x:.2f}" for *_, x, _ in v),
                "fg", " ".join(f"{f:.2f}" for *_, f in v), flush=True,
            )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--mask-quality", action="store_true", help="only the masks-as-users-have-them section")
    parser.add_argument("--digits-cnn", type=float, default=None, help="mask verdict on a digit-learning CNN at p")
    parser.add_argument("--out", default=str(ROOT / "docs" / "evidence_figures.md"))
    args = parser.parse_args()
    if args.digits_cnn is not None:
        digits_cnn(args.digits_cnn, args.seeds)
        return
    if args.mask_quality:
        mask_quality(args.epochs or 12, args.seeds, Path(args.out))
        return
    args.epochs = args.epochs or 6
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
    old = Path(args.out).read_text() if Path(args.out).exists() else ""
    kept = old[old.index("<!-- mask-quality: begin -->") :] if "<!-- mask-quality: begin -->" in old else ""
    Path(args.out).write_text("\n".join(lines) + "\n" + ("\n" + kept if kept else ""))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
