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
    ("shortcut/score", "shortcut score (0 object, 1 background)"),
    ("shortcut/background_only_accuracy", "accuracy, object removed"),
    ("shortcut/foreground_only_accuracy", "accuracy, background neutralised"),
    ("shortcut/background_swap_flip_rate", "flip rate, backgrounds swapped"),
    ("shortcut/mask_attribution", "Grad-CAM mass on the object"),
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


def main(argv: list[str] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    argv = list(sys.argv[1:] if argv is None else argv)
    demo = load_demo()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in (0.95, 0.5):
            trainer = demo.main(["--p", str(p), "--logdir", tmp, "--quiet", *argv])
            runs[p] = scalars(trainer.logger.log_dir)
    fig, grid = plt.subplots(2, 3, figsize=(11, 6), sharex=True)
    axes = grid.flatten()
    for ax, (tag, title) in zip(axes, TAGS):
        for p, style in ((0.95, "-o"), (0.5, "--s")):
            if tag in runs[p]:
                steps, values = zip(*runs[p][tag])
                ax.plot(steps, values, style, label=f"p={p}")
        if tag == "shortcut/mask_attribution" and "shortcut/mask_attribution_chance" in runs[0.95]:
            ax.axhline(runs[0.95]["shortcut/mask_attribution_chance"][0][1], color="gray", lw=1, label="chance")
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
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
