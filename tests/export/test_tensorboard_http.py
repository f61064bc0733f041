"""The real `tensorboard` server, pointed at a probelens run, serves our tags through its HTTP API.

Routes checked against tensorboard/plugins/image/images_plugin.py (``/tags``, ``/images``, ``/individualImage``) and
tensorboard/plugins/scalar/scalars_plugin.py (``/tags``), mounted under ``/data/plugin/<plugin name>``.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from lit import LitClassifier, loaders, random_data, read_events, trainer
from probelens import GradCAMMonitor, ProbeSet, SaliencyMonitor

STARTUP_BUDGET_S = 60.0
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never goes through a proxy


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, route: str, **params: str) -> bytes:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with _NO_PROXY.open(f"http://127.0.0.1:{port}{route}{query}", timeout=10) as response:
        return response.read()


def get_json(port: int, route: str, **params: str) -> Any:
    return json.loads(get(port, route, **params))


@contextmanager
def tensorboard(logdir: Path, log: Path, missing: Callable[[int], str | None]) -> Iterator[int]:
    """Start ``tensorboard`` on 127.0.0.1 and yield its port once ``missing(port)`` has nothing left to report (it
    loads the event files in the background, tag by tag and step by step); always terminate it."""
    deadline = time.monotonic() + STARTUP_BUDGET_S
    still_missing = "no answer yet"
    for attempt in range(3):  # the free port may be taken between probing and binding it
        port = free_port()
        with open(log, "wb") as sink:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tensorboard.main",
                    "--logdir",
                    str(logdir),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--samples_per_plugin",
                    "images=1000",
                    "--load_fast=false",
                    "--reload_interval",
                    "1",
                ],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    still_missing = missing(port)
                    if still_missing is None:
                        yield port
                        return
                except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                    pass
                time.sleep(0.25)
            exited_early = proc.poll() is not None
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        output = log.read_text(errors="replace")
        if exited_early and "already in use" in output and attempt < 2:
            continue
        exited = f"exited with code {proc.returncode}" if exited_early else f"timed out after {STARTUP_BUDGET_S:.0f} s"
        pytest.fail(f"tensorboard did not serve the run ({exited}); missing: {still_missing}; its output:\n{output}")


def test_tensorboard_serves_every_logged_step_of_our_tags(tmp_path):
    if importlib.util.find_spec("tensorboard.main") is None:
        pytest.skip("the tensorboard entry point (tensorboard.main) is not installed")
    torch.manual_seed(0)
    probe = ProbeSet.from_dataset(random_data(32, seed=2), num_samples=6, seed=0, class_names=["cat", "dog"])
    # every step for 3 epochs of 4 steps: 12 logged images per tag, more than TensorBoard's default sample of 10
    monitors = [
        GradCAMMonitor(probe, layers="last", every_n_steps=1),
        SaliencyMonitor(probe, methods="vanilla", every_n_steps=1),
    ]
    train, val = loaders(n=64, batch_size=16)
    tr = trainer(tmp_path / "logs", monitors, max_epochs=3)
    tr.fit(LitClassifier(), train, val)
    run = Path(tr.logger.log_dir).relative_to(tmp_path / "logs").as_posix()  # "tb/version_0"
    acc = read_events(tr.logger.log_dir)
    logged = {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}
    ours = {"probelens/gradcam/model.8", "probelens/saliency/vanilla", "probelens/gradcam_filmstrip/model.8"}
    assert ours <= set(logged)
    assert logged["probelens/gradcam/model.8"] == list(range(12)) == [e.step for e in acc.Scalars("train_loss")]

    def missing(port: int) -> str | None:
        listed = get_json(port, "/data/plugin/images/tags").get(run, {})
        problems = []
        for tag, steps in logged.items():
            served = (
                [e["step"] for e in get_json(port, "/data/plugin/images/images", run=run, tag=tag)]
                if tag in listed
                else None
            )
            if served != steps:  # every step, not a sample of 10 (or a partly loaded file)
                problems.append(f"{tag}: served steps {served}, logged {steps}")
        if "probelens/cost_ms/GradCAMMonitor" not in get_json(port, "/data/plugin/scalars/tags").get(run, {}):
            problems.append("scalar probelens/cost_ms/GradCAMMonitor")
        return "; ".join(problems) or None

    with tensorboard(tmp_path / "logs", tmp_path / "tensorboard.log", missing) as port:
        image_tags = get_json(port, "/data/plugin/images/tags")
        assert set(image_tags) == {run}
        assert set(image_tags[run]) == set(logged)
        assert all(info["samples"] == 1 for info in image_tags[run].values())  # one picture per step
        for tag, steps in logged.items():
            entries = get_json(port, "/data/plugin/images/images", run=run, tag=tag)
            assert [e["step"] for e in entries] == steps, tag  # every step, not a sample of 10
        entries = get_json(port, "/data/plugin/images/images", run=run, tag="probelens/gradcam/model.8")
        png = get(port, f"/data/plugin/images/individualImage?{entries[-1]['query']}")
        assert png.startswith(b"\x89PNG") and png == acc.Images("probelens/gradcam/model.8")[-1].encoded_image_string
        scalar_tags = get_json(port, "/data/plugin/scalars/tags")[run]
        assert {"probelens/cost_ms/GradCAMMonitor", "probelens/cost_ms/SaliencyMonitor", "train_loss"} <= set(
            scalar_tags
        )
        cost = get_json(port, "/data/plugin/scalars/scalars", run=run, tag="probelens/cost_ms/GradCAMMonitor")
        assert [step for _, step, _ in cost] == list(range(12))
