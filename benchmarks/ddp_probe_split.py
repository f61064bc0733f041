"""DDP on 2 CPU processes (gloo, one thread each): the probe pass on rank 0 alone (the default) vs split across the
ranks and gathered (the path FSDP takes, forced here on DDP by patching the detection).

Run from the repository root (a few minutes on 2 cores)::

    python benchmarks/ddp_probe_split.py [--probe 64] [--size 64] [--reps 3]

It trains the test suite's small CNN for 24 steps three ways (no monitors, rank 0, split) with Grad-CAM at every conv,
activations and vanilla saliency firing every step, and prints the median wall time of each fit, the extra time per
firing, and the time spent in the probe pass itself (rank 0). Results are in ``docs/distributed.md``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
STEPS = 24


def _worker(rank: int, mode: str, port: int, probe_size: int, side: int, root: str, queue) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", NODE_RANK="0", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    import probelens.core.base as base
    import probelens.core.session as session
    from lit import LitClassifier, random_data, trainer
    from probelens import ProbeSet
    from probelens.pl import ActivationMonitor, GradCAMMonitor, SaliencyMonitor

    if mode == "split":  # every rank explains a slice of the unwrapped module, the slices are all-gathered
        base.sharded_root = lambda tr: tr.lightning_module
        session.is_sharded = base.is_sharded = lambda model: True
    spent = [0.0]

    def timed(fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        return run

    session.forward_backward = timed(session.forward_backward)
    session.sharded_forward_backward = timed(session.sharded_forward_backward)
    probe = ProbeSet.from_dataset(random_data(2 * probe_size, size=(side, side), seed=2), num_samples=probe_size)
    every = {"every_n_steps": 1}
    monitors = (
        []
        if mode == "none"
        else [
            GradCAMMonitor(probe, layers="all", filmstrip=False, **every),
            ActivationMonitor(probe, **every),
            SaliencyMonitor(probe, methods=("vanilla",), **every),
        ]
    )
    data = DataLoader(random_data(2 * 8 * STEPS, size=(side, side)), batch_size=8)
    pl.seed_everything(0)
    tr = trainer(
        os.path.join(root, mode), monitors, logger=False, strategy="ddp", devices=2, max_epochs=1, limit_val_batches=0
    )
    start = time.perf_counter()
    tr.fit(LitClassifier(), data)
    if rank == 0:
        queue.put((time.perf_counter() - start, spent[0]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", type=int, default=64, help="probe images")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    queue = mp.get_context("spawn").SimpleQueue()
    results: dict[str, list[tuple[float, float]]] = {"none": [], "rank0": [], "split": []}
    with tempfile.TemporaryDirectory() as root:
        for _ in range(args.reps):
            for mode, runs in results.items():
                worker_args = (mode, _free_port(), args.probe, args.size, root, queue)
                mp.start_processes(_worker, args=worker_args, nprocs=2, join=True, start_method="spawn")
                runs.append(queue.get())
    fit = {mode: statistics.median(t for t, _ in runs) for mode, runs in results.items()}
    pass_s = {mode: statistics.median(p for _, p in runs) for mode, runs in results.items()}
    print(f"probe {args.probe} images of {args.size}x{args.size}, {STEPS} firings, median of {args.reps}:")
    for mode in ("rank0", "split"):
        extra = (fit[mode] - fit["none"]) / STEPS * 1000
        print(
            f"  {mode:5s}: fit {fit[mode]:.2f} s (no monitors {fit['none']:.2f} s), {extra:.0f} ms per firing, "
            f"of which the probe pass {pass_s[mode] / STEPS * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
