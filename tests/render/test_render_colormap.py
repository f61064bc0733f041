"""Tests for probelens.render.colormap."""

from __future__ import annotations

import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch

from probelens.render import apply_colormap, colormap_lut
from probelens.render.colormap import _cached_lut

# Registers a bare `probelens` parent package so that only the render subpackage is imported (the top-level package
# pulls in Lightning, which imports matplotlib on its own).
BARE_PARENT = (
    "import importlib.util, sys, types\n"
    "spec = importlib.util.find_spec('probelens')\n"
    "pkg = types.ModuleType('probelens')\n"
    "pkg.__path__ = list(spec.submodule_search_locations)\n"
    "sys.modules['probelens'] = pkg\n"
)


def run_isolated(code: str) -> str:
    """Runs ``code`` in a fresh interpreter with a bare ``probelens`` parent package; returns its stdout."""
    result = subprocess.run([sys.executable, "-c", BARE_PARENT + code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("name", ["jet", "viridis", "gray", "seismic", "RdBu_r", "magma"])
def test_lut_shape_dtype_and_endpoints_match_matplotlib(name: str) -> None:
    lut = colormap_lut(name)
    assert lut.shape == (256, 3)
    assert lut.dtype == torch.uint8
    cmap = matplotlib.colormaps[name]
    for value, row in ((0.0, 0), (1.0, 255)):
        expected = np.round(np.asarray(cmap(value))[:3] * 255.0)
        assert np.abs(lut[row].numpy().astype(float) - expected).max() <= 1.0, (name, value)


def test_lut_is_cached_and_returned_as_copy() -> None:
    assert _cached_lut("viridis") is _cached_lut("viridis")
    a = colormap_lut("viridis")
    a.zero_()
    b = colormap_lut("viridis")
    assert b.sum() > 0


def test_unknown_colormap_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="viridis"):
        colormap_lut("definitely_not_a_colormap")


def test_grey_alias() -> None:
    assert torch.equal(colormap_lut("grey"), colormap_lut("gray"))


def test_apply_colormap_ramp_is_monotone_in_lut_index() -> None:
    lut = colormap_lut("jet").long()
    ramp = torch.linspace(0.0, 1.0, 1000).reshape(1, 1000)
    rgb = apply_colormap(ramp, "jet")
    assert rgb.shape == (3, 1, 1000)
    assert rgb.dtype == torch.uint8
    colors = rgb[:, 0, :].T.long()  # [1000, 3]
    # Recover the LUT index of every output colour (nearest LUT row).
    idx = torch.cdist(colors.float(), lut.float()).argmin(dim=1)
    assert torch.equal(lut[idx], colors)
    assert idx[0] == 0
    assert idx[-1] == 255
    assert bool((idx[1:] >= idx[:-1]).all())


@pytest.mark.parametrize(
    ("shape", "out_shape"),
    [((5, 7), (3, 5, 7)), ((2, 5, 7), (2, 3, 5, 7)), ((2, 1, 5, 7), (2, 3, 5, 7))],
)
def test_apply_colormap_shapes(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> None:
    out = apply_colormap(torch.rand(shape), "viridis")
    assert out.shape == out_shape
    assert out.dtype == torch.uint8
    assert out.device.type == "cpu"


def test_apply_colormap_clamps_and_handles_nonfinite() -> None:
    lut = colormap_lut("gray")
    values = torch.tensor([[-3.0, 7.0, float("nan"), float("inf")]])
    out = apply_colormap(values, "gray")
    assert torch.equal(out[:, 0, 0], lut[0])
    assert torch.equal(out[:, 0, 1], lut[255])
    assert torch.equal(out[:, 0, 2], lut[0])
    assert torch.equal(out[:, 0, 3], lut[0])


def test_apply_colormap_accepts_lut_tensor() -> None:
    values = torch.rand(4, 6)
    assert torch.equal(apply_colormap(values, colormap_lut("magma")), apply_colormap(values, "magma"))


def test_apply_colormap_rejects_multichannel() -> None:
    with pytest.raises(ValueError):
        apply_colormap(torch.rand(2, 3, 4, 4))


def test_apply_colormap_quantises_to_nearest_entry() -> None:
    lut = colormap_lut("viridis")
    k = torch.arange(255)
    values = torch.cat([k / 255.0, (k + 0.4) / 255.0, (k + 0.6) / 255.0]).reshape(1, -1)
    out = apply_colormap(values, "viridis")[:, 0, :].T
    expected = torch.cat([lut[k], lut[k], lut[k + 1]])
    assert torch.equal(out, expected)
