"""Print the verdict's three cases on the generator families, as the tests train them (the figures of
docs/shortcut.md, "The three cases").

    python docs/measure_verdict_cases.py          # ~2 minutes on 2 CPU cores

Each run is `train()` of tests/callbacks/test_shortcut_families.py (seed 0, tiny CNN, 640 training images per epoch,
32x32 cue scenes, 48x48 snow/desert, a 32-image probe): per epoch the ground truth (accuracy on 128 images whose
background cue disagrees with the class; worst class in brackets), the per-class flip rates, the score, the
background-only accuracy and the verdict.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "callbacks")]

CASES = [
    ("stripes: background model, then recovery", "stripes", [(1.0, 0.5)] * 3 + [(0.5, 1.0)] * 2, 1.0, 0.02),
    ("markers: background model, then recovery", "markers", [(1.0, 0.5)] * 3 + [(0.5, 1.0)] * 2, 1.0, 0.02),
    ("stripes: object model, background p=0.9", "stripes", [(0.9, 1.0)] * 4, 0.9, 0.05),
    ("markers: object model, background p=1.0", "markers", [(1.0, 1.0)] * 4, 1.0, 0.02),
    ("snow/desert 48 px: clean run p=0.5", "snow_desert", [(0.5, 1.0)] * 4, 0.5, 0.02),
    ("stripes: clean run p=0.5", "stripes", [(0.5, 1.0)] * 4, 0.5, 0.02),
    ("markers: clean run p=0.5", "markers", [(0.5, 1.0)] * 4, 0.5, 0.02),
]


def main() -> None:
    warnings.filterwarnings("ignore")
    from test_shortcut_families import train

    for title, family, schedule, probe_p, lr in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            _, truth, scalars, _, names = train(Path(tmp), family, schedule, probe_p=probe_p, lr=lr)
        print(f"\n{title} (schedule (p, object_cue) per epoch: {schedule}, lr {lr})")
        print(
            "| epoch | conflict accuracy (worst class) | flip rate "
            + " / ".join(names)
            + " | score | object removed | verdict |"
        )
        print("|---|---|---|---|---|---|")
        for k, step in enumerate(sorted(truth.by_step)):
            flips = " / ".join(f"{dict(scalars[f'shortcut/background_swap_flip_rate/{n}'])[step]:.2f}" for n in names)
            print(
                f"| {k + 1} | {truth.by_step[step]:.2f} ({truth.worst_class_by_step[step]:.2f}) | {flips} | "
                f"{dict(scalars['shortcut/score'])[step]:.2f} | "
                f"{dict(scalars['shortcut/background_only_accuracy'])[step]:.2f} | "
                f"{dict(scalars['shortcut/verdict'])[step]:.0f} |"
            )


if __name__ == "__main__":
    main()
