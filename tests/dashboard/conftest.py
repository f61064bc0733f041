"""Fixtures of the dashboard tests: the event files of two real (tiny) Lightning runs with probelens monitors, and a
real ``tensorboard`` server on 127.0.0.1 with the probelens plugin loaded through its entry point."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import ModuleType

import pytest
import torch
from tb_client import STEPS
from torch.utils.data import DataLoader

from lit import LitClassifier, read_events, trainer
from probelens import GradCAMMonitor, ProbeSet, SaliencyMonitor, ShortcutMonitor
from probelens.data import CLASS_NAMES, MEAN, STD, SnowDesertDataset

ROOT = Path(__file__).resolve().parents[2]


def _load_screenshots() -> ModuleType:
    """``docs/screenshots.py``: its TensorBoard launcher and DevTools-pipe Chromium driver, shared with the tests."""
    spec = importlib.util.spec_from_file_location("probelens_docs_screenshots", ROOT / "docs" / "screenshots.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def shots() -> ModuleType:
    if importlib.util.find_spec("tensorboard.main") is None:
        pytest.skip("the tensorboard entry point (tensorboard.main) is not installed")
    return _load_screenshots()


def _train(logdir: Path, name: str, seed: int) -> Path:
    torch.manual_seed(seed)
    train = SnowDesertDataset(n=64, size=16, seed=seed)
    val = SnowDesertDataset(n=32, size=16, seed=seed + 1, return_masks=True)
    probe = ProbeSet.from_dataset(
        val, num_samples=6, per_class=True, seed=0, mean=MEAN, std=STD, class_names=CLASS_NAMES
    )
    monitors = [
        GradCAMMonitor(probe, layers="last", every_n_steps=1),
        SaliencyMonitor(probe, methods="vanilla", every_n_steps=1),
        ShortcutMonitor(probe, every_n_steps=1),
    ]
    from pytorch_lightning.loggers import TensorBoardLogger

    tr = trainer(logdir, monitors, logger=TensorBoardLogger(str(logdir), name=name), max_epochs=3)
    tr.fit(LitClassifier(seed=seed), DataLoader(train, batch_size=16, shuffle=True), DataLoader(val, batch_size=32))
    return Path(tr.logger.log_dir)


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``lightning_logs/`` holding runs ``a/version_0`` and ``b/version_0`` (different seeds), 12 logged steps each."""
    logdir = tmp_path_factory.mktemp("dash") / "lightning_logs"
    for name, seed in (("a", 0), ("b", 1)):
        run = _train(logdir, name, seed)
        steps = [e.step for e in read_events(run).Images("probelens/gradcam/model.8")]
        assert steps == list(range(STEPS)), steps
    return logdir


@pytest.fixture
def copy_of(tmp_path: Path) -> Callable[[Path], Path]:
    def copy(logdir: Path) -> Path:
        target = tmp_path / logdir.name
        shutil.copytree(logdir, target)
        return target

    return copy


@pytest.fixture(scope="session")
def serve(shots: ModuleType) -> Callable[..., AbstractContextManager[int]]:
    """``serve(logdir)``: a context manager running the real ``tensorboard`` on 127.0.0.1 at a free port, yielding
    the port once the probelens plugin answers; the server is stopped on exit."""

    def ready(port: int) -> bool:
        return "probelens" in shots.get_json(port, "/data/plugins_listing")

    def start(logdir: Path) -> Iterator[int]:
        return shots.tensorboard(logdir, ready, budget_s=90.0)

    return start


class Replay:
    """A subprocess appending a finished run's records to ``target`` step by step (``tests/dashboard/replay.py``):
    a run that is still training, as the server sees it."""

    def __init__(self, source: Path, target: Path) -> None:
        import subprocess

        self.target = target
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("replay.py")), str(source), str(target)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, command: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        assert answer.startswith("ok"), f"replay {command!r}: {answer!r}"
        return answer

    def upto(self, step: int) -> None:
        self.send(f"upto {step}")

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


@pytest.fixture
def replay() -> Iterator[Callable[[Path, Path], Replay]]:
    started: list[Replay] = []

    def start(source: Path, target: Path) -> Replay:
        started.append(Replay(source, target))
        return started[-1]

    yield start
    for r in started:
        r.close()
