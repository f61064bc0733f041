"""Where the map math runs (probelens.writing.transfer): at once on an accelerator, its uint8 result copied to the
host without blocking; deferred on the CPU to whoever draws; computed once either way; the same pixels."""

import pytest
import torch

from probelens.render import apply_colormap, normalize_maps, overlay_heatmap
from probelens.writing.transfer import map_math, on_accelerator

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_on_the_cpu_the_math_waits_for_the_drawing_and_runs_once():
    calls = []

    def math():
        calls.append(1)
        return [torch.ones(2, 3), torch.zeros(1)]

    result = map_math(math, torch.device("cpu"))
    assert calls == []  # nothing on the training thread
    first = result()
    assert calls == [1] and result() is first and len(calls) == 1
    assert [t.device.type for t in first] == ["cpu", "cpu"]


def test_now_runs_the_math_at_once_and_returns_the_same_host_tensor():
    calls = []
    t = torch.arange(6.0)
    result = map_math(lambda: calls.append(1) or t * 2, "cpu", now=True)
    assert calls == [1]
    assert torch.equal(result(), t * 2) and result() is result()


def test_which_devices_count_as_accelerators():
    assert not on_accelerator("cpu") and not on_accelerator("meta")
    assert on_accelerator("cuda") and on_accelerator(torch.device("cuda", 1))


def test_keep_device_gives_the_pixels_of_the_host_path():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 20, 24), dtype=torch.uint8, generator=g)
    heat = normalize_maps(torch.randn(3, 1, 5, 6, generator=g))
    assert torch.equal(
        overlay_heatmap(images, heat, 0.4, "viridis", keep_device=True), overlay_heatmap(images, heat, 0.4, "viridis")
    )
    assert torch.equal(apply_colormap(heat, "magma", keep_device=True), apply_colormap(heat, "magma"))


@CUDA
def test_on_cuda_the_math_runs_on_the_device_and_lands_in_pinned_host_memory():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=g)
    maps = torch.rand(4, 1, 8, 8, generator=g)
    devices = []
    on_device = maps.cuda()

    def math():
        out = overlay_heatmap(images, normalize_maps(on_device, vmin=0.0), 0.5, "jet", keep_device=True)
        devices.append(out.device.type)
        return out

    result = map_math(math, on_device.device)
    assert devices == ["cuda"]  # run at once, on the device
    host = result()
    assert host.device.type == "cpu" and host.is_pinned()
    expected = overlay_heatmap(images, normalize_maps(maps, vmin=0.0), 0.5, "jet")
    # the same pixels up to one step of rounding (CUDA's bilinear kernel and FMA round differently)
    assert (host.int() - expected.int()).abs().max() <= 1
    assert (host != expected).float().mean() < 0.01
