"""The ``discovery`` field of the dashboard's run listing (fast tier): StrategyMonitor's tags parsed (its name, the
stage), every class that logged anything listed in the order written with its pictures and scalars, its pictures
kept out of the matrix (their cells are the prototypes, not a grid of the probe set), a run without discovery
listed with none, and new steps of a run still training listed at the next pass. Event files written by probelens'
own writer; the browser side is ``test_discovery_view.py``."""

from __future__ import annotations

import math

import pytest
import torch

from probelens.dashboard.index import LogIndex, RunIndex, discovery_picture, discovery_scalar
from probelens.logformat import Cell, GridFacts
from probelens.render.image import encode_png
from probelens.writing.event_file import EventFileWriter

KEYS = ("clusters", "eigengap", "largest_share", "two_strategies")


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("probelens/discovery/snow", ("", "", "snow")),
        ("probelens/spare/discovery/snow", ("", "spare", "snow")),
        ("validate/probelens/discovery/arabian", ("validate", "", "arabian")),
        ("probelens/discovery", None),  # no class
        ("probelens/gradcam/model.8", None),
        ("probelens/discovery/gradcam/model.8", None),  # a GradCAMMonitor named "discovery"
        ("shortcut/counterfactuals", None),
    ],
)
def test_discovery_picture_tags(tag, expected):
    assert discovery_picture(tag) == expected


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("discovery/snow/clusters", ("", "", "snow", "clusters")),
        ("discovery/spare/snow/eigengap", ("", "spare", "snow", "eigengap")),
        ("test/discovery/arabian/two_strategies", ("test", "", "arabian", "two_strategies")),
        ("discovery/snow", None),
        ("discovery//clusters", None),
        ("shortcut/discovery/snow/clusters", None),
        ("concept/stripes/snow", None),
    ],
)
def test_discovery_scalar_tags(tag, expected):
    assert discovery_scalar(tag) == expected


def _picture(prototypes: list[int], fingerprint: str = "fp") -> bytes:
    """A discovery-like picture: a row per cluster (mean map, prototype), the prototypes' cells recorded."""
    rows = len(prototypes)
    image = torch.full((3, 10 * rows, 20), 90, dtype=torch.uint8)
    cells = tuple(Cell(k, 10, 10 * j, 20, 10 * j + 10) for j, k in enumerate(prototypes))
    return encode_png(image, text=GridFacts(cells, fingerprint, maps=cells).text())


def _grid(fingerprint: str = "fp") -> bytes:
    """A Grad-CAM-like grid of probe images 0..3 interleaved by class (0, 2 snow; 1, 3 arabian)."""
    image = torch.full((3, 10, 40), 150, dtype=torch.uint8)
    order = [0, 1, 2, 3]
    cells = tuple(Cell(k, 10 * i, 0, 10 * i + 10, 10) for i, k in enumerate(order))
    return encode_png(image, text=GridFacts(cells, fingerprint).text())


def _firing(writer: EventFileWriter, step: int, values: dict[str, tuple[float, ...]], name: str = "") -> None:
    """What StrategyMonitor writes at a firing: per class its four scalars, then per class its picture."""
    for cls, vals in values.items():
        for key, value in zip(KEYS, vals):
            prefix = f"discovery/{name}/" if name else "discovery/"
            writer.add_scalar(f"{prefix}{cls}/{key}", value, step)
    for k, cls in enumerate(values):
        tag = f"probelens/{name}/discovery/{cls}" if name else f"probelens/discovery/{cls}"
        writer.add_image(tag, _picture([2 + k, k]), 20, 20, step)
    writer.flush()


def test_the_listing_carries_every_class_with_its_pictures_and_scalars(tmp_path):
    run = tmp_path / "run"
    writer = EventFileWriter(run)
    # the discovery picture is written before any grid: it must not set the matrix' rows (interleaved by class)
    _firing(writer, 0, {"snow": (2, 0.4, 0.5, 1), "arabian": (1, math.nan, 1.0, 0)})
    writer.add_image("probelens/gradcam/model.8", _grid(), 10, 40, 0)
    _firing(writer, 1, {"snow": (1, 0.05, 1.0, 0)})  # arabian not logged at step 1
    _firing(writer, 1, {"snow": (3, 0.2, 0.4, 1)}, name="spare")  # a second monitor, named
    writer.flush()
    index = RunIndex(tmp_path, run)
    index.refresh()
    summary = index.summary()

    # not a matrix column, and the matrix' rows are the grid's order, not the prototypes'
    assert [g["tag"] for g in summary["grids"]] == ["probelens/gradcam/model.8"]
    assert summary["pictures"] == [] and summary["probes"] == {"fp": [0, 1, 2, 3]}
    assert summary["steps"] == [0, 1] and summary["scalar_steps"] == [0, 1]
    assert "discovery/snow/clusters" not in summary["scalars"]  # the shortcut view's scalars only

    unnamed, named = summary["discovery"]
    assert (unnamed["stage"], unnamed["monitor"], named["monitor"]) == ("", "", "spare")
    snow, arabian = unnamed["classes"]
    assert (snow["class"], arabian["class"]) == ("snow", "arabian")  # the order written
    assert snow["tag"] == "probelens/discovery/snow"
    assert [e["step"] for e in snow["entries"]] == [0, 1]
    assert [e["step"] for e in arabian["entries"]] == [0]  # missing at step 1: absent, the view says so
    assert snow["entries"][0]["boxes"] == {"2": [10, 0, 20, 10], "0": [10, 10, 20, 20]}  # the prototypes
    assert list(snow["scalars"]) == list(KEYS)
    assert snow["scalars"]["clusters"] == [[0, 2.0], [1, 1.0]]
    assert snow["scalars"]["two_strategies"] == [[0, 1.0], [1, 0.0]]
    assert snow["scalar_tags"]["eigengap"] == "discovery/snow/eigengap"
    assert arabian["scalars"]["eigengap"] == [[0, None]]  # NaN (too few images): null, never a bare NaN
    assert named["classes"][0]["tag"] == "probelens/spare/discovery/snow"
    assert named["classes"][0]["scalars"]["clusters"] == [[1, 3.0]]

    status = index.status()
    assert status["discovery"] is True and status["grids"] == 1

    # a run still training: the next firing is listed at the next pass
    _firing(writer, 2, {"snow": (2, 0.3, 0.6, 1), "arabian": (2, 0.25, 0.5, 1)})
    assert index.refresh() is True
    snow, arabian = index.summary()["discovery"][0]["classes"]
    assert [e["step"] for e in arabian["entries"]] == [0, 2]
    assert snow["scalars"]["largest_share"][-1] == [2, pytest.approx(0.6)]
    writer.close()


def test_scalars_without_pictures_and_a_run_without_discovery(tmp_path):
    with EventFileWriter(tmp_path / "scalars_only") as writer:
        writer.add_scalar("validate/discovery/snow/clusters", 2, 5)  # the picture not written (yet)
    with EventFileWriter(tmp_path / "plain") as writer:
        writer.add_image("probelens/gradcam/model.8", _grid(), 10, 40, 0)
    index = LogIndex(tmp_path)
    index.refresh()
    only = index.run("scalars_only")
    plain = index.run("plain")
    assert only is not None and plain is not None
    (group,) = only.summary()["discovery"]
    assert group["stage"] == "validate"
    (snow,) = group["classes"]
    assert snow["tag"] is None and snow["entries"] == [] and snow["scalars"] == {"clusters": [[5, 2.0]]}
    assert only.status()["probelens"] is True and only.status()["discovery"] is True
    assert plain.summary()["discovery"] == [] and plain.status()["discovery"] is False
