"""Per-epoch tables of the group-label verdict on the generator families (seed 0): the figures in docs/shortcut.md.

Each run is the harness of ``tests/callbacks/test_shortcut_groups.py`` (a 32-image probe of a 512-image validation
set at ``probe p``, balanced over (class, background) cells, the background as the group; ground truth = accuracy on
128 images whose background disagrees with the class). Prints, per epoch: conflict accuracy (all / worst class), the
group score (largest within-class gap), the gate (worst class's best group), armed, verdict; then the detection lag.

    python docs/measure_group_verdict.py            # all runs (~10 minutes on 2 free cores)
    python docs/measure_group_verdict.py stripes    # the runs of one family
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "callbacks")]

RUNS = [
    # (name, family, schedule [(p, object cue)] per epoch, probe p, lr)
    ("shortcut p=0.95, then recovery", "stripes", [(0.95, 0.5)] * 3 + [(0.5, 1.0)] * 2, 0.95, 0.02),
    ("shortcut p=0.95, then recovery", "markers", [(0.95, 0.5)] * 3 + [(0.5, 1.0)] * 2, 0.95, 0.02),
    ("shortcut p=0.95", "snow_desert", [(0.95, 0.5)] * 3, 0.95, 0.02),
    ("clean p=0.5", "stripes", [(0.5, 1.0)] * 4, 0.5, 0.02),
    ("clean p=0.5", "markers", [(0.5, 1.0)] * 4, 0.5, 0.02),
    ("clean p=0.5", "snow_desert", [(0.5, 1.0)] * 4, 0.5, 0.02),
    ("object model, informative background p=0.9", "stripes", [(0.9, 1.0)] * 4, 0.95, 0.05),
    ("object model, informative background p=1.0", "markers", [(1.0, 1.0)] * 4, 0.95, 0.02),
    ("object model, informative background p=0.9", "snow_desert", [(0.9, 1.0)] * 4, 0.95, 0.02),
]


def main(families: list[str]) -> None:
    import logging

    from test_shortcut_groups import train

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    for name, family, schedule, probe_p, lr in RUNS:
        if families and family not in families:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            monitor, truth, scalars, _, _ = train(Path(tmp), family, schedule, probe_p=probe_p, lr=lr)
        steps = sorted(truth.by_step)
        print(f"\n{family}: {name} (lr {lr}, probe p={probe_p})")
        print("epoch  conflict  worst-class  group-score  gate  armed  verdict")
        for k, s in enumerate(steps):
            print(
                f"{k + 1:5d}  {truth.by_step[s]:8.2f}  {truth.worst_class_by_step[s]:11.2f}  "
                f"{scalars['shortcut/score'][s]:11.2f}  {scalars['shortcut/agreeing_group_accuracy'][s]:4.2f}  "
                f"{scalars['shortcut/armed'][s]:5.0f}  {scalars['shortcut/verdict'][s]:7.0f}"
            )
        learned = next((k for k, s in enumerate(steps) if truth.by_step[s] < 0.3), None)
        alerts = [steps.index(a) for a in monitor.alerts]
        clears = [steps.index(c) for c in monitor.clears]
        lag = None if learned is None or not alerts else alerts[0] - learned
        print(
            f"shortcut learned at epoch {None if learned is None else learned + 1}; alerts at epochs "
            f"{[a + 1 for a in alerts]} (lag {lag}); clears at epochs {[c + 1 for c in clears]}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
