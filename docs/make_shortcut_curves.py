"""Train the demo at p=0.95 and p=0.5 and plot both runs' shortcut curves into docs/images/shortcut_curves.png.

    python docs/make_shortcut_curves.py            # ~5 minutes on 2 CPU cores

The figure in the README is produced by this script; the numbers printed are the ones quoted there.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TAGS = (
    ("shortcut/score", "score: worst class's flip rate (verdict at 0.5)"),
    ("shortcut/background_swap_flip_rate/snow", "flip rate, snow leopards on sand"),
    ("shortcut/background_swap_flip_rate/arabian", "flip rate, arabian leopards on snow"),
    ("shortcut/background_only_accuracy", "accuracy, object removed (context)"),
    ("shortcut/foreground_only_accuracy", "accuracy, background neutralised"),
    ("shortcut/mask_attribution", "Grad-CAM mass on the object"),
    ("shortcut/verdict", "verdict (1 while an alert stands)"),
    ("shortcut/background_swap_flip_rate", "flip rate, all swaps"),
    ("val/acc", "validation accuracy"),
)


def load_demo():
    spec = importlib.util.spec_from_file_location("snow_vs_desert", ROOT / "examples" / "snow_vs_desert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(log_dir, size_guidance={SCALARS: 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    return {
        t: [(e.step, e.value) for e in acc.Scalars(t)]
        for t, _ in (*TAGS, ("shortcut/mask_attribution_chance", ""))
        if t in tags
    }


def conflict_accuracy(model) -> dict[str, float]:
    """Ground truth after training: accuracy on 256 demo images whose background disagrees with the class, per
    class (the demo's default spot contrast 0.6)."""
    import torch

    from probelens.data import CLASS_NAMES, SnowDesertDataset

    data = SnowDesertDataset(n=256, p=0.0, spot_contrast=0.6, seed=7)
    model.eval()
    with torch.no_grad():
        right = model(data.images).argmax(1) == data.labels
    return {name: float(right[data.labels == k].float().mean()) for k, name in enumerate(CLASS_NAMES)}


def main(argv: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    argv = list(sys.argv[1:] if argv is None else argv)
    demo = load_demo()
    runs, conflict = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in (0.95, 0.5):
            trainer = demo.main(["--p", str(p), "--logdir", tmp, "--quiet", *argv])
            runs[p] = scalars(trainer.logger.log_dir)
            conflict[p] = conflict_accuracy(trainer.lightning_module)
    fig, grid = plt.subplots(3, 3, figsize=(11, 8.5), sharex=True)
    axes = grid.flatten()
    for ax, (tag, title) in zip(axes, TAGS):
        for p, style in ((0.95, "-o"), (0.5, "--s")):
            if tag in runs[p]:
                steps, values = zip(*runs[p][tag])
                ax.plot(steps, values, style, label=f"p={p}")
        if tag == "shortcut/mask_attribution" and "shortcut/mask_attribution_chance" in runs[0.95]:
            ax.axhline(runs[0.95]["shortcut/mask_attribution_chance"][0][1], color="gray", lw=1, label="chance")
        if tag == "shortcut/score":
            ax.axhline(0.5, color="gray", lw=1, ls=":", label="threshold")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("global step")
    axes[0].legend()
    fig.tight_layout()
    out = ROOT / "docs" / "images" / "shortcut_curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    for p, data in runs.items():
        print(f"p={p}:")
        for tag, _ in TAGS:
            print(f"  {tag:40s} " + " ".join(f"{v:.2f}" for _, v in data.get(tag, [])))
        print("  conflict accuracy at the end, per class: " + ", ".join(f"{k} {v:.2f}" for k, v in conflict[p].items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
