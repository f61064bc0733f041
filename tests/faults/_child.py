"""The training runs of ``test_fault_injection.py``, one per fault, in a process of their own.

``python _child.py sigkill ROOT MARKER``: trains with Grad-CAM every 2 steps and a checkpoint every 2 steps; at the
firing of step 4 it touches MARKER and sleeps until killed. ``resume ROOT MARKER``: resumes that run from its last
checkpoint into the same TensorBoard folder, to step 8. ``fs ROOT FAULT``: trains on ROOT and, after the firing at
step 2, fills ROOT (``full disk``) or takes the write permission of the pictures' folder away (``read-only``, as the
``nobody`` user where this runs as root: root ignores permissions); the last line of stdout is JSON. ``memory ROOT
N``: one fit with an N-image 64x64 probe; prints the fit-start memory estimate and the peak RSS growth (MiB,
from the kernel's peak, reset before the fit).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from lit import LitClassifier, loaders, trainer
from probelens import ActivationMonitor, GradCAMMonitor, ProbeSet, SaliencyMonitor


def probe(n: int = 8, side: int = 16) -> ProbeSet:
    g = torch.Generator().manual_seed(5)
    return ProbeSet(torch.randn(n, 3, side, side, generator=g), torch.arange(n) % 2)


class SleepsInItsSecondFiring(GradCAMMonitor):
    """Grad-CAM that, at its second firing (step 3), writes its pictures, then waits inside the firing to be killed."""

    marker = ""

    def explain(self, step, pl_module, trainer):
        super().explain(step, pl_module, trainer)
        if step == 3 and self.marker:  # the second firing (log steps 1, 3, 5, 7: the loss curves' steps)
            Path(self.marker).touch()
            time.sleep(600)


def sigkill_or_resume(mode: str, root: str, marker: str) -> None:
    torch.manual_seed(0)
    monitor = SleepsInItsSecondFiring(probe(), every_n_steps=2)
    monitor.marker = marker if mode == "sigkill" else ""
    checkpoint = ModelCheckpoint(dirpath=os.path.join(root, "ckpt"), every_n_train_steps=2, save_last=True)
    t = trainer(
        root,
        [monitor, checkpoint],
        logger=TensorBoardLogger(root, name="tb", version=0),
        enable_checkpointing=True,
        max_steps=8,
        max_epochs=-1,
    )
    train, val = loaders(64, batch_size=16)
    t.fit(LitClassifier(), train, val, ckpt_path=os.path.join(root, "ckpt", "last.ckpt") if mode == "resume" else None)
    print(json.dumps({"global_step": t.global_step}))


class Fault(pl.Callback):
    """After the monitors' firing at step 2, fill the disk or make the pictures' folder read-only."""

    def __init__(self, root: str, fault: str) -> None:
        self.root, self.fault, self.done = root, fault, False

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step < 3 or self.done:
            return
        self.done = True
        if self.fault == "full disk":
            try:
                with open(os.path.join(self.root, "filler"), "wb") as fh:
                    while True:
                        fh.write(b"\0" * 4096)
                        fh.flush()
            except OSError as err:  # full (also when the file cannot even be made)
                assert err.errno == errno.ENOSPC, err
        else:
            for folder, _dirs, files in os.walk(os.path.join(trainer.log_dir, "probelens_images")):
                os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
                for name in files:
                    os.chmod(os.path.join(folder, name), stat.S_IRUSR | stat.S_IRGRP)


def file_system(root: str, fault: str) -> None:
    if fault == "read-only" and os.geteuid() == 0:
        os.chmod(root, 0o777)
        os.setgid(65534)
        os.setuid(65534)  # nobody: permissions apply
    os.environ["HOME"] = root
    logger = TensorBoardLogger(root, name="tb", version=0) if fault == "full disk" else CSVLogger(root, name="csv")
    monitors = [GradCAMMonitor(probe(), every_n_steps=2), SaliencyMonitor(probe(), every_n_steps=2)]
    t = trainer(root, [*monitors, Fault(root, fault)], logger=logger, max_steps=8, max_epochs=-1)
    wrote = {}

    class Before(pl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 2:
                wrote["before"] = monitors[0].state.fire_count == 1

    t.callbacks.append(Before())
    try:
        t.fit(LitClassifier(), *loaders(64, batch_size=16))
    finally:
        print(json.dumps({"wrote_before_the_fault": wrote.get("before", False), "step": t.global_step}), flush=True)


def memory(root: str, n: int) -> None:
    import probelens.core.session as session

    estimates: list[int] = []
    check = session.SharedPass.check_memory

    def spy(self, *args, **kwargs):
        estimates.append(check(self, *args, **kwargs))
        return estimates[-1]

    session.SharedPass.check_memory = spy
    monitors = [
        GradCAMMonitor(probe(n, 64), layers="all", every_n_steps=1),
        SaliencyMonitor(probe(n, 64), every_n_steps=1),
        ActivationMonitor(probe(n, 64), every_n_steps=1),
    ]
    t = trainer(root, monitors, max_steps=2, max_epochs=-1)
    train, _ = loaders(16, batch_size=8, size=(64, 64))
    base = _reset_peak_rss()
    t.fit(LitClassifier(), train)
    print(json.dumps({"estimate": max(estimates) / 2**20, "growth": (_peak_rss() - base) / 2**20}))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> int:
    """The resident bytes now, with the kernel's peak (VmHWM) reset to them: the peak measured afterwards is the
    fit's own, not an earlier one (imports, data) that ``ru_maxrss`` would keep."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_kib("VmRSS") * 1024


def _peak_rss() -> int:
    return _status_kib("VmHWM") * 1024


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode in ("sigkill", "resume", "fresh"):
        sigkill_or_resume(mode, sys.argv[2], sys.argv[3])
    elif mode == "fs":
        file_system(sys.argv[2], sys.argv[3])
    elif mode == "memory":
        memory(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
