"""Measure how well strategy discovery (SpRAy-style spectral clustering of predicted-class Grad-CAM maps, and
SPARE-style clustering of pooled features) recovers the true spurious groups, per epoch (the figures of
docs/discovery.md).

    python docs/measure_discovery.py            # 5-10 minutes per seed on 2 shared CPU cores
    python docs/measure_discovery.py --seeds 0  # one seed
    python docs/measure_discovery.py --discovery  # also the forward-only discovery sets of 512 images

The true spurious group of an image is its background (snow/desert, or the stripes' orientation cue). Each case
trains the tests' tiny CNN (tests/models.py ``small_cnn``) with a plain torch loop (SGD, momentum 0.9, batch 32),
1600 fresh images per epoch. After each epoch, on two probes drawn from a held-out pool where the background is
uninformative (p=0.5):

- balanced: 20 background-agreeing + 20 background-conflicting images per class;
- imbalanced: 36 agreeing + 4 conflicting per class (the minority group a biased validation set gives).

Per class: :func:`probelens.metrics.discover_strategies` on predicted-class Grad-CAM at the last conv stage (the
monitor's defaults: 8x8 grid, eigengap over at most 4 clusters), the adjusted Rand index of its clusters against the
background within the class, the same with k forced to 2 (so a wrong eigengap choice and a wrong embedding can be
told apart), the same discovery on the pooled penultimate features (SPARE-style), the number of clusters, the eigengap
and whether the class was flagged as "decided in two distinct ways" (the last three are what the monitor logs). A
baseline that needs no clustering at all: the ARI of the model's own predictions within the class (for a pure
background model they *are* the background). Ground truth for the model: accuracy on conflicting images. Printed as
markdown tables, the mean over the seeds and both classes. Deterministic (seeded training on the CPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests")]

from models import small_cnn  # noqa: E402
from probelens.data import MEAN, STD, generate_cue_scenes, generate_snow_desert  # noqa: E402
from probelens.methods import grad_cam  # noqa: E402
from probelens.metrics.discovery import (  # noqa: E402
    adjusted_rand_index,
    discover_strategies,
    map_features,
    spectral_clusters,
)

SIZE = 48
EPOCHS = 6
PER_EPOCH = 1600

# (title, family, training p, object cue, lr)
CASES = [
    ("snow/desert p=0.95 (shortcut)", "snow_desert", 0.95, 0.8, 0.02),
    ("snow/desert p=0.5 (clean)", "snow_desert", 0.5, 1.0, 0.02),
    ("stripes p=0.9, easy object (object model, informative background)", "stripes", 0.9, 1.0, 0.05),
]


def scenes(family: str, n: int, p: float, cue: float, seed: int):
    """(normalised images, labels, backgrounds) of one family."""
    if family == "snow_desert":
        s = generate_snow_desert(n, size=SIZE, p=p, purity=cue, spot_contrast=1.0, seed=seed)
        mean, std = MEAN, STD
    else:
        s = generate_cue_scenes(n, family=family, size=32, p=p, object_cue=cue, object_kind="colour", seed=seed)
        mean, std = (0.5,) * 3, (0.25,) * 3
    m, sd = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return (s.images - m) / sd, s.labels, s.backgrounds


def probe(pool, conflicting: int, agreeing: int):
    """Per class ``agreeing`` images whose background agrees with it and ``conflicting`` whose background does not."""
    x, y, bg = pool
    picks = []
    for c in (0, 1):
        agree = torch.nonzero((y == c) & (bg == c)).flatten()[:agreeing]
        conflict = torch.nonzero((y == c) & (bg != c)).flatten()[:conflicting]
        assert len(agree) == agreeing and len(conflict) == conflicting, "pool too small"
        picks += [agree, conflict]
    index = torch.cat(picks)
    return x[index], y[index], bg[index]


def evaluate(model, images, labels, backgrounds, seed: int) -> dict[str, list[float]]:
    """Per class: ARI (discovered, forced k=2, features), clusters, flag."""
    model.eval()
    with torch.no_grad():
        logits = model(images)
        features = model[:-2](images).flatten(1)  # pooled penultimate features (before dropout and the head)
    preds = logits.argmax(1)
    cam = grad_cam(model, images, preds, layers=["9"])["9"]  # the last conv's ReLU: what layers="auto" picks
    model.train()
    report = discover_strategies(cam, labels, seed=seed)
    spare = discover_strategies(features, labels, seed=seed)
    out: dict[str, list[float]] = {
        "ari": [],
        "ari_k2": [],
        "ari_features": [],
        "ari_prediction": [],
        "clusters": [],
        "eigengap": [],
        "flag": [],
        "flag_features": [],
    }
    for c, found in report.classes.items():
        truth = backgrounds[found.indices]
        out["ari"].append(adjusted_rand_index(truth, found.clusters))
        x = map_features(cam[found.indices], report.grid)
        knn = max(2, round(len(found.indices) ** 0.5))
        forced, _, _ = spectral_clusters(x, neighbours=knn, max_clusters=4, seed=seed, clusters=2)
        out["ari_k2"].append(adjusted_rand_index(truth, forced))
        out["ari_features"].append(adjusted_rand_index(truth, spare.classes[c].clusters))
        out["ari_prediction"].append(adjusted_rand_index(truth, preds[found.indices]))
        out["clusters"].append(float(found.num_clusters))
        out["eigengap"].append(found.eigengap)
        out["flag"].append(float(found.two_strategies))
        out["flag_features"].append(float(spare.classes[c].two_strategies))
    return out


def run(family: str, p: float, cue: float, lr: float, seed: int, probes) -> list[dict[str, object]]:
    torch.manual_seed(seed)
    model = small_cnn(seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    conflict_x, conflict_y, _ = scenes(family, 256, 0.0, 1.0, seed=7)
    rows = []
    for epoch in range(EPOCHS):
        x, y, _ = scenes(family, PER_EPOCH, p, cue, seed=100 * seed + 10 + epoch)
        order = torch.randperm(len(y))
        model.train()
        for start in range(0, len(y), 32):
            b = order[start : start + 32]
            loss = F.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            conflict = float((model(conflict_x).argmax(1) == conflict_y).float().mean())
        row: dict[str, object] = {"epoch": epoch + 1, "conflict": conflict}
        for name, (images, labels, backgrounds) in probes.items():
            row[name] = evaluate(model, images, labels, backgrounds, seed)
        rows.append(row)
    return rows


def _cell(values: list[float], digits: int = 2) -> str:
    mean = sum(values) / len(values)
    return f"{mean:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--discovery",
        action="store_true",
        help="also cluster two forward-only discovery sets of 512 validation images (StrategyMonitor(discovery_size="
        "512, source='features')): one distributed like the training data, one with an uninformative background",
    )
    args = parser.parse_args()
    torch.set_num_threads(2)
    for title, family, p, cue, lr in CASES:
        pool = scenes(family, 800, 0.5, 1.0, seed=3)
        probes = {"balanced": probe(pool, 20, 20), "imbalanced": probe(pool, 4, 36)}
        if args.discovery:
            probes[f"discovery 512, p={p}"] = scenes(family, 512, p, cue, seed=4)
            probes["discovery 512, p=0.5"] = scenes(family, 512, 0.5, 1.0, seed=5)
        runs = [run(family, p, cue, lr, seed, probes) for seed in args.seeds]
        print(f"\n### {title}\n")
        print(f"training: p={p}, object cue {cue}, lr {lr}; seeds {args.seeds}; mean over seeds and both classes\n")
        print(
            "| epoch | conflict acc. | probe | ARI (eigengap k) | ARI (k=2 forced) | ARI (features, SPARE-style) "
            "| ARI (prediction) | clusters | eigengap | flagged classes (maps / features) |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for e in range(EPOCHS):
            conflict = [r[e]["conflict"] for r in runs]
            for name in probes:
                vals = {key: [v for r in runs for v in r[e][name][key]] for key in runs[0][e][name]}  # type: ignore[index]
                flags = f"{int(sum(vals['flag']))} / {int(sum(vals['flag_features']))} of {len(vals['flag'])}"
                print(
                    f"| {e + 1} | {_cell(conflict)} | {name} | {_cell(vals['ari'])} | {_cell(vals['ari_k2'])} | "
                    f"{_cell(vals['ari_features'])} | {_cell(vals['ari_prediction'])} | "
                    f"{_cell(vals['clusters'], 1)} | {_cell(vals['eigengap'])} | {flags} |"
                )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
