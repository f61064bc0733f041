"""Fault injection: a monitor never takes a training run down, loses nothing it already wrote, and writes nowhere but
the log dir, whatever the machine does to it (SIGKILL, a full disk, a read-only file system) or the user passes.

The process-level faults run training in a subprocess (``_child.py`` beside this file), so that the kill and the file
system faults hit a real Trainer; the file-system faults use a small tmpfs (root only, as in CI) and are skipped
with the reason where the machine cannot mount one.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest
import torch
from pytorch_lightning.loggers import CSVLogger

from lit import LitClassifier, decode, loaders, read_events, trainer
from probelens import (
    ActivationMonitor,
    DeconvMonitor,
    FeatureVisMonitor,
    FilterMonitor,
    GradCAMMonitor,
    OcclusionMonitor,
    ProbeSet,
    SaliencyMonitor,
    ShortcutMonitor,
)

pytestmark = pytest.mark.integration

CHILD = Path(__file__).with_name("_child.py")
TESTS = Path(__file__).parents[1]


def _probe(n: int = 8) -> ProbeSet:
    _, val = loaders(64)
    x, y = next(iter(val))
    return ProbeSet(x[:n], y[:n])


def _every_monitor(probe: ProbeSet) -> list:
    every = {"every_n_epochs": 1}
    return [
        FilterMonitor(**every),
        ActivationMonitor(probe, **every),
        GradCAMMonitor(probe, **every),
        SaliencyMonitor(probe, **every),
        ShortcutMonitor(probe, **every),
        OcclusionMonitor(probe, window=4, **every),
        DeconvMonitor(probe, **every),
        FeatureVisMonitor(layers="model.0", channels=2, steps=2, **every),
    ]


def _child(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-W", "always", str(CHILD), *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def decode_png(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _grad_cam_steps(run_dir: Path) -> dict[int, int]:
    """step -> number of Grad-CAM grids at that step that decode, read back with TensorBoard's own reader."""
    acc = read_events(run_dir)
    tags = [t for t in acc.Tags()["images"] if t.startswith("probelens/gradcam/")]
    assert tags, f"no Grad-CAM pictures in {run_dir}: {acc.Tags()['images']}"
    steps: dict[int, int] = {}
    for tag in tags:
        for event in acc.Images(tag):
            assert decode(event).size > 0  # a record that is there is whole
            steps[event.step] = steps.get(event.step, 0) + 1
    return steps


# ---------------------------------------------------------------------------------------------- SIGKILL and resume
def test_sigkill_during_a_firing_loses_only_that_firing_and_the_run_resumes(tmp_path):
    marker = tmp_path / "firing"
    proc = _child("sigkill", str(tmp_path), str(marker))
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the child ended before its second firing:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the child never reached its second firing")
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # inside the second firing (log step 3; firings at global steps 2, 4, 6, 8)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    run_dir = tmp_path / "tb" / "version_0"
    killed = _grad_cam_steps(run_dir)
    assert 1 in killed  # the firing before the kill is whole
    assert killed.get(3, killed[1]) == killed[1]  # the killed firing's pictures that are there are whole

    resumed = _child("resume", str(tmp_path), str(marker))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert "probe set differs" not in err  # the same probe (fingerprint) after the resume
    steps = _grad_cam_steps(run_dir)
    assert sorted(steps) == [1, 3, 5, 7], steps
    k = steps[1]
    assert steps[5] == steps[7] == k, steps  # every firing wrote every grid
    # the killed firing came after the last checkpoint, so the resumed run trains that step again and writes it
    # again, as Lightning writes its own scalars of those steps again: the killed run's pictures stay beside them
    assert steps[3] == k + killed.get(3, 0), (steps, killed)


# ---------------------------------------------------------------------------------------------- file system faults
def _tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs (a full file system) needs root; CI runs as root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"this machine cannot mount a tmpfs here ({done.stderr.decode().strip()}); the test needs one")


@pytest.fixture
def fault_root():
    """A folder in the system temp dir that the ``nobody`` user can reach; ``make(size)`` mounts a tmpfs there."""
    root = Path(tempfile.mkdtemp(prefix="probelens-fault-"))
    root.chmod(0o755)
    mounted: list[Path] = []

    def make(size: str | None) -> Path:
        path = root / "fs"
        path.mkdir()
        if size is not None:
            _tmpfs(path, size)
            mounted.append(path)
        path.chmod(0o777)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def _probelens_frames_end_the_traceback(err: str) -> bool:
    """Whether the last traceback in ``err`` ends in a probelens frame (its own unguarded code crashed the run)."""
    if "Traceback (most recent call last)" not in err:
        return False
    last = err.rsplit("Traceback (most recent call last)", 1)[1]
    frames = [line for line in last.splitlines() if line.strip().startswith('File "')]
    return bool(frames) and "probelens" in frames[-1]


@pytest.mark.parametrize(
    ("fault", "error"), [("full disk", "No space left on device"), ("read-only", "Permission denied")]
)
def test_a_file_system_fault_is_warned_counted_and_closes_the_event_file(fault_root, fault, error):
    """On a full disk (a 4 MiB tmpfs filled after the first firing) or a pictures' folder whose write permission
    goes after the first firing: the monitors warn with the system's error and count, nothing of probelens ends the
    run (a logger of the user's own may: TensorBoard's own writer fails on the full disk too), what was written
    before reads back whole, and probelens' event file is closed (no ResourceWarning)."""
    root = fault_root("4m" if fault == "full disk" else None)
    proc = _child("fs", str(root), fault, env={"PYTHONDEVMODE": "1"})
    out, err = proc.communicate(timeout=300)
    assert not _probelens_frames_end_the_traceback(err), err[-4000:]
    assert "failed at step" in err and error in err, err[-4000:]  # the monitor's own warning, with the error
    unclosed = [line for line in err.splitlines() if "ResourceWarning" in line and ".probelens" in line]
    assert not unclosed, unclosed
    result = json.loads(out.strip().splitlines()[-1])
    assert result["wrote_before_the_fault"], result
    if fault == "full disk":
        assert 1 in _grad_cam_steps(root / "tb" / "version_0")  # the firing before the fault reads back whole
    else:
        assert proc.returncode == 0, err[-3000:]  # CSV scalars still write: the run goes to its end
        assert result["step"] == 8
        before = sorted(root.rglob("probelens_images/**/gradcam/**/step_00000001.png"))
        assert before and all(decode_png(p).size > 0 for p in before)


# ---------------------------------------------------------------------------------------------- hostile names
@pytest.mark.parametrize("name", ["../../../escaped", "..", "a/../../b", "./.hidden", "x\\..\\..\\y"])
def test_a_name_never_writes_outside_the_log_dir(tmp_path, name):
    log_root = tmp_path / "deep" / "er" / "logs"
    probe = _probe()
    t = trainer(
        tmp_path, [GradCAMMonitor(probe, name=name, every_n_epochs=1)], logger=CSVLogger(str(log_root)), max_epochs=1
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(LitClassifier(), *loaders(32))
    pngs = sorted(tmp_path.rglob("*.png"))
    assert pngs, "no PNG was written"
    inside = Path(t.log_dir).resolve()
    outside = [p for p in pngs if not p.resolve().is_relative_to(inside)]
    assert not outside, f"{len(outside)} pictures outside {inside}: {outside[:3]}"


# ---------------------------------------------------------------------------------------------- copies after fit
def test_every_monitor_pickles_and_deepcopies_after_fit_and_the_copy_runs_again(tmp_path):
    monitors = _every_monitor(_probe())
    t = trainer(tmp_path / "first", monitors, max_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit(LitClassifier(), *loaders(32))
    copies = [pickle.loads(pickle.dumps(m)) for m in monitors[:4]] + [copy.deepcopy(m) for m in monitors[4:]]
    assert [type(c) for c in copies] == [type(m) for m in monitors]
    assert [c.state.fire_count for c in copies] == [m.state.fire_count for m in monitors]
    t2 = trainer(tmp_path / "second", copies, max_epochs=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t2.fit(LitClassifier(), *loaders(32))
    failures = [str(w.message) for w in caught if "failed at step" in str(w.message)]
    assert not failures, failures
    images = read_events(Path(t2.log_dir)).Tags()["images"]
    for kind in ("filters", "activations", "gradcam", "saliency", "occlusion", "deconv", "feature_vis"):
        assert any(f"/{kind}" in tag for tag in images), (kind, images)


# ---------------------------------------------------------------------------------------------- dtype and env
def test_every_monitor_runs_under_a_float64_default_dtype(tmp_path):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = LitClassifier()  # float64 weights, as the user's model under this default
        x = torch.randn(32, 3, 16, 16)
        y = torch.arange(32) % 2
        probe = ProbeSet(x[:8], y[:8])
        assert model.model[0].weight.dtype == torch.float64
        monitors = _every_monitor(probe)  # the constructors' dry runs included
        t = trainer(tmp_path, monitors, max_epochs=1)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t.fit(model, loader, loader)
    finally:
        torch.set_default_dtype(previous)
    failures = [str(w.message) for w in caught if "failed at step" in str(w.message)]
    assert not failures, failures
    assert all(m.state.fire_count >= 1 for m in monitors), [(m.name, m.state.fire_count) for m in monitors]


def test_a_logger_whose_log_metrics_raises_is_named_with_its_error_and_training_goes_on(tmp_path):
    class FullDiskCSV(CSVLogger):
        def log_metrics(self, metrics, step=None):  # the disk fills while probelens writes its scalars
            if any(key.startswith("probelens/") for key in metrics):
                raise OSError(28, "No space left on device")
            super().log_metrics(metrics, step)

    probe = _probe()
    t = trainer(tmp_path, [GradCAMMonitor(probe, every_n_epochs=1)], logger=FullDiskCSV(str(tmp_path)), max_epochs=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.fit(LitClassifier(), *loaders(32))
    said = [str(w.message) for w in caught if "log_metrics failed" in str(w.message)]
    assert len(said) == 1, said  # once per logger, however many scalars
    assert "FullDiskCSV" in said[0] and "No space left on device" in said[0]
    assert t.current_epoch == 2  # the run went to its end


# ---------------------------------------------------------------------------------------------- memory at fit start
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's /proc/self/clear_refs")
def test_the_memory_estimate_at_fit_start_covers_the_measured_growth(tmp_path):
    """The estimate the fit-start check makes (and warns about above 2 GiB) against the peak RSS growth of a real
    fit, each in a fresh process; the growth of a tiny probe (the fixed cost of a fit) is taken off."""

    def measure(n: int) -> tuple[float, float]:
        proc = _child("memory", str(tmp_path / f"m{n}"), str(n))
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        result = json.loads(out.strip().splitlines()[-1])
        return result["estimate"], result["growth"]

    _, fixed = measure(4)
    estimate, growth = measure(96)
    assert estimate >= growth - fixed, (estimate, growth, fixed)
    assert estimate <= 4 * growth, (estimate, growth)  # an estimate, not a scare
