"""Measure how far the edited counterfactuals are from the truth, on generated data whose backgrounds are known.

    python docs/measure_counterfactuals.py          # ~4 minutes on 2 CPU cores; prints the tables of docs/shortcut.md

For each run below a model is trained with a real Lightning Trainer (CPU, seed 0) and, four times per epoch, evaluated
on 256 held-out images generated *with their true backgrounds* (the same scene without the object):

- accuracy with the object removed: on the true background vs the texture fill (``fill_from_background``, the
  default) vs the harmonic fill of probelens 0.1;
- background-swap flip rate (same partners): object on the partner's true background vs on its texture-filled or
  harmonic-filled background-only image;
- on the markers family (a local cue): how much of the partner's cue the pasted object hides, how often the fill
  copies cue pixels into the hole, and the flip rate on swaps that hide a third of the cue or more vs the others.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from probelens.data import MEAN, STD, generate_cue_scenes, generate_snow_desert
from probelens.metrics import fill_from_background, inpaint_harmonic, swap_partners

ROOT = Path(__file__).resolve().parents[1]


def load_demo():
    spec = importlib.util.spec_from_file_location("snow_vs_desert", ROOT / "examples" / "snow_vs_desert.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def normaliser(mean, std):
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    return lambda x: (x - m) / s


RUNS = {
    # name: (generator, its options, training images, epochs, model)
    "snow/desert p=0.95 (demo)": ("snow_desert", {"p": 0.95, "spot_contrast": 0.6}, 2000, 3, "demo"),
    "snow/desert p=1.0": ("snow_desert", {"p": 1.0}, 1280, 2, "demo"),
    "snow/desert p=0.5": ("snow_desert", {"p": 0.5}, 2000, 3, "demo"),
    "stripes p=1.0, object uninformative": (
        "stripes",
        {"p": 1.0, "object_cue": 0.5, "object_kind": "colour"},
        640,
        3,
        "tiny",
    ),
    "stripes p=0.9, easy object": ("stripes", {"p": 0.9, "object_cue": 1.0, "object_kind": "colour"}, 640, 3, "tiny"),
    "markers p=1.0, object uninformative": (
        "markers",
        {"p": 1.0, "object_cue": 0.5, "object_kind": "colour"},
        640,
        3,
        "tiny",
    ),
    "markers p=1.0, easy object": ("markers", {"p": 1.0, "object_cue": 1.0, "object_kind": "colour"}, 640, 3, "tiny"),
}


def generate(family: str, n: int, seed: int, options: dict, with_backgrounds: bool = False):
    if family == "snow_desert":
        s = generate_snow_desert(n, seed=seed, with_backgrounds=with_backgrounds, **options)
        return s, normaliser(MEAN, STD)
    s = generate_cue_scenes(n, family=family, seed=seed, with_backgrounds=with_backgrounds, **options)
    return s, normaliser((0.5,) * 3, (0.25,) * 3)


def tiny_cnn() -> torch.nn.Module:
    sys.path.insert(0, str(ROOT / "tests"))
    from lit import LitClassifier

    return LitClassifier(lr=0.02)


class Gap(pl.Callback):
    def __init__(self, family: str, options: dict) -> None:
        eval_options = {**options, "object_cue": 1.0} if family != "snow_desert" else options
        s, norm = generate(family, 256, 5, eval_options, with_backgrounds=True)
        self.family, self.s = family, s
        x, m, y = norm(s.images), s.masks, s.labels
        bg = s.background_images
        self.x, self.y, self.m = x, y, m
        self.partners = swap_partners(y)
        self.bg = {
            "true": norm(bg),
            "texture": norm(fill_from_background(s.images, m)),
            "harmonic": norm(inpaint_harmonic(s.images, m)),
        }
        self.rows: list[dict] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        pl_module.eval()
        with torch.no_grad():
            pred = lambda t: torch.cat([pl_module(c).argmax(1) for c in t.split(128)])  # noqa: E731
            p0 = pred(self.x)
            row = {
                "epoch": trainer.current_epoch
                + (trainer.fit_loop.epoch_loop.batch_progress.current.ready / max(1, trainer.num_training_batches)),
                "acc": float((p0 == self.y).float().mean()),
            }
            for k, b in self.bg.items():
                row[f"bg_{k}"] = float((pred(b) == self.y).float().mean())
                swapped = torch.where(self.m, self.x, b[self.partners])
                flips = pred(swapped) != p0
                row[f"flip_{k}"] = float(flips.float().mean())
                if k == "true":
                    row["flips_true"] = flips
        pl_module.train()
        self.rows.append(row)


def local_cue_report(gap: Gap) -> str:
    """How the pasted object and the fill touch the markers' local cue."""
    s, partners = gap.s, gap.partners
    cue = s.cue_masks[:, 0]
    partner_cue = cue[partners]
    covered = (partner_cue & s.masks[:, 0]).flatten(1).sum(1).float() / partner_cue.flatten(1).sum(1).clamp_min(1)
    copied = fill_from_background(s.cue_masks.float().expand(-1, 3, -1, -1), s.masks)[:, 0] > 0.5
    copied_in_hole = (copied & s.masks[:, 0]).flatten(1).any(1)
    flips = gap.rows[-1]["flips_true"]
    hidden = covered >= 1 / 3
    return (
        f"  pasted object covers on average {covered.mean():.1%} of the partner's marker pixels; "
        f"{hidden.float().mean():.1%} of swaps hide a third or more (about one marker of three)\n"
        f"  the texture fill copies marker pixels into the hole in {copied_in_hole.float().mean():.1%} of images\n"
        f"  last checkpoint, true-background swaps: flip rate {flips[hidden].float().mean():.2f} where a third or more "
        f"is hidden ({int(hidden.sum())} swaps) vs {flips[~hidden].float().mean():.2f} elsewhere"
    )


def main() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    demo = load_demo()
    for name, (family, options, n, epochs, model) in RUNS.items():
        pl.seed_everything(0)
        train, norm = generate(family, n, 0, options)
        gap = Gap(family, options)
        val = TensorDataset(gap.x[:64], gap.y[:64])
        net = demo.LeopardClassifier(width=8) if model == "demo" else tiny_cnn()
        tr = pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            logger=False,
            callbacks=[gap],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            val_check_interval=0.25,
        )
        tr.fit(
            net,
            DataLoader(TensorDataset(norm(train.images), train.labels), batch_size=64, shuffle=True),
            DataLoader(val, batch_size=64),
        )
        print(f"\n{name} ({n} training images, {epochs} epochs, {tuple(train.images.shape[-2:])} px, seed 0)")
        print("| epoch | accuracy | object removed: true / texture / harmonic | flip rate: true / texture / harmonic |")
        print("|---|---|---|---|")
        for r in gap.rows:
            print(
                f"| {r['epoch']:.2f} | {r['acc']:.2f} | "
                f"{r['bg_true']:.2f} / {r['bg_texture']:.2f} / {r['bg_harmonic']:.2f} | "
                f"{r['flip_true']:.2f} / {r['flip_texture']:.2f} / {r['flip_harmonic']:.2f} |"
            )
        for k in ("texture", "harmonic"):
            worst_bg = max(abs(r[f"bg_{k}"] - r["bg_true"]) for r in gap.rows)
            worst_flip = max(abs(r[f"flip_{k}"] - r["flip_true"]) for r in gap.rows)
            print(
                f"  largest gap to the true background, {k}: object removed {worst_bg:.3f}, flip rate {worst_flip:.3f}"
            )
        if family == "markers":
            print(local_cue_report(gap))


if __name__ == "__main__":
    main()
