"""Tests for probelens.render.image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from probelens.render import (
    CELLS_KEY,
    apply_colormap,
    cells_from_text,
    cells_to_text,
    encode_png,
    normalize_maps,
    overlay_heatmap,
    saliency_to_heat,
    sanitize,
    save_png,
    to_display_images,
)

NAN = float("nan")
INF = float("inf")


def _maps(*images: list[list[float]]) -> torch.Tensor:
    return torch.tensor(images, dtype=torch.float32).unsqueeze(1)  # [N,1,H,W]


def test_normalize_per_image_min_max() -> None:
    maps = _maps([[0.0, 2.0], [4.0, 6.0]], [[-1.0, 1.0], [1.0, 3.0]])
    out = normalize_maps(maps)
    assert out.shape == maps.shape
    expected = _maps([[0.0, 1 / 3], [2 / 3, 1.0]], [[0.0, 0.5], [0.5, 1.0]])
    torch.testing.assert_close(out, expected)


def test_normalize_fixed_scalar_range_clamps() -> None:
    maps = _maps([[0.0, 2.0], [4.0, 6.0]], [[-1.0, 1.0], [1.0, 3.0]])
    out = normalize_maps(maps, vmin=0.0, vmax=4.0)
    expected = _maps([[0.0, 0.5], [1.0, 1.0]], [[0.0, 0.25], [0.25, 0.75]])
    torch.testing.assert_close(out, expected)


def test_normalize_per_image_tensor_range() -> None:
    maps = _maps([[0.0, 2.0], [4.0, 6.0]], [[-1.0, 1.0], [1.0, 3.0]])
    out = normalize_maps(maps, vmin=torch.tensor([0.0, -1.0]), vmax=torch.tensor([8.0, 1.0]))
    expected = _maps([[0.0, 0.25], [0.5, 0.75]], [[0.0, 1.0], [1.0, 1.0]])
    torch.testing.assert_close(out, expected)


def test_normalize_only_vmin_uses_per_image_max() -> None:
    maps = _maps([[1.0, 2.0], [3.0, 5.0]])
    out = normalize_maps(maps, vmin=0.0)
    torch.testing.assert_close(out, _maps([[0.2, 0.4], [0.6, 1.0]]))


def test_normalize_symmetric() -> None:
    maps = _maps([[-2.0, 1.0], [0.0, 4.0]], [[-1.0, 0.5], [0.0, 0.25]])
    out = normalize_maps(maps, symmetric=True)
    expected = _maps([[0.25, 0.625], [0.5, 1.0]], [[0.0, 0.75], [0.5, 0.625]])
    torch.testing.assert_close(out, expected)
    fixed = normalize_maps(maps[:1], vmax=8.0, symmetric=True)
    torch.testing.assert_close(fixed, _maps([[0.375, 0.5625], [0.5, 0.75]]))


def test_normalize_multichannel_is_per_image_not_per_channel() -> None:
    maps = torch.tensor([[[[0.0, 1.0]], [[2.0, 4.0]]]])  # [1,2,1,2]
    out = normalize_maps(maps)
    torch.testing.assert_close(out, torch.tensor([[[[0.0, 0.25]], [[0.5, 1.0]]]]))


def test_normalize_constant_map_gives_zeros() -> None:
    maps = torch.cat([torch.full((1, 1, 4, 4), 3.5), torch.rand(1, 1, 4, 4)])
    out = normalize_maps(maps)
    assert torch.isfinite(out).all()
    assert torch.equal(out[0], torch.zeros(1, 4, 4))
    assert out[1].max() == 1.0
    assert torch.equal(normalize_maps(maps, vmin=1.0, vmax=1.0), torch.zeros_like(maps))
    # Symmetric: an all-zero map sits at the diverging midpoint.
    assert torch.equal(normalize_maps(torch.zeros(1, 1, 3, 3), symmetric=True), torch.full((1, 1, 3, 3), 0.5))


def test_normalize_nan_and_inf_do_not_crash() -> None:
    maps = _maps([[NAN, 1.0], [INF, -INF]], [[NAN, NAN], [NAN, NAN]])
    out = normalize_maps(maps)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]))
    assert torch.equal(out[1], torch.zeros(1, 2, 2))
    assert torch.isfinite(normalize_maps(maps, symmetric=True)).all()


def test_sanitize_flags_nonfinite() -> None:
    clean, flagged = sanitize(torch.tensor([1.0, NAN, INF]))
    assert flagged
    assert torch.equal(clean, torch.tensor([1.0, 0.0, 0.0]))
    same, flagged = sanitize(torch.tensor([1.0, 2.0]))
    assert not flagged
    assert torch.equal(same, torch.tensor([1.0, 2.0]))


MEAN = {1: [0.5], 3: [0.485, 0.456, 0.406], 4: [0.4, 0.5, 0.3, 0.2]}
STD = {1: [0.25], 3: [0.229, 0.224, 0.225], 4: [0.2, 0.3, 0.25, 0.1]}


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("size", [(8, 8), (5, 11)])
def test_to_display_images_round_trip(channels: int, size: tuple[int, int]) -> None:
    torch.manual_seed(channels)
    original = torch.randint(0, 256, (3, channels, *size), dtype=torch.uint8)
    mean = torch.tensor(MEAN[channels]).view(1, -1, 1, 1)
    std = torch.tensor(STD[channels]).view(1, -1, 1, 1)
    normalised = (original.float() / 255.0 - mean) / std
    out = to_display_images(normalised, mean=MEAN[channels], std=STD[channels])
    assert out.shape == (3, 3, *size)
    assert out.dtype == torch.uint8
    expected = original[:, :1].expand(-1, 3, -1, -1) if channels == 1 else original[:, :3]
    assert (out.int() - expected.int()).abs().max() <= 1


def test_to_display_images_callable_and_minmax_default() -> None:
    original = torch.randint(0, 256, (2, 3, 6, 6), dtype=torch.uint8)
    x = original.float() / 255.0 * 2.0 - 1.0
    out = to_display_images(x, denormalize=lambda t: (t + 1.0) / 2.0)
    assert (out.int() - original.int()).abs().max() <= 1
    minmax = to_display_images(torch.tensor([[[[-5.0, 0.0], [5.0, 15.0]]]]))
    assert minmax[0, :, 0, 0].tolist() == [0, 0, 0]
    assert minmax[0, :, 1, 1].tolist() == [255, 255, 255]
    assert minmax[0, :, 0, 1].tolist() == [64, 64, 64]


def test_to_display_images_two_channels_uses_channel_zero_as_gray() -> None:
    x = torch.stack([torch.full((4, 4), 0.2), torch.full((4, 4), 0.9)]).unsqueeze(0)
    out = to_display_images(x, mean=0.0, std=1.0)
    assert out.shape == (1, 3, 4, 4)
    assert (out == 51).all()


def test_to_display_images_nan_and_clamp() -> None:
    x = torch.tensor([[[[NAN, 2.0], [-1.0, 0.5]]]])
    out = to_display_images(x, mean=0.0, std=1.0)
    assert out[0, 0].tolist() == [[0, 255], [0, 128]]


def test_overlay_alpha_extremes() -> None:
    images = torch.randint(0, 256, (2, 3, 16, 12), dtype=torch.uint8)
    heat = torch.rand(2, 1, 16, 12)
    assert torch.equal(overlay_heatmap(images, heat, alpha=0.0), images)
    assert torch.equal(overlay_heatmap(images, heat, alpha=1.0, cmap="jet"), apply_colormap(heat, "jet"))
    half = overlay_heatmap(images, heat, alpha=0.5)
    expected = ((images.float() + apply_colormap(heat, "jet").float()) / 2).round()
    assert (half.float() - expected).abs().max() <= 1


def test_overlay_resizes_heat_and_accepts_single_image() -> None:
    images = torch.randint(0, 256, (3, 3, 32, 24), dtype=torch.uint8)
    heat = torch.rand(3, 1, 4, 3)
    out = overlay_heatmap(images, heat, alpha=0.7, cmap="viridis")
    assert out.shape == images.shape
    assert out.dtype == torch.uint8
    single = overlay_heatmap(images[0], heat[0], alpha=0.7, cmap="viridis")
    assert torch.equal(single, out[0])
    constant = overlay_heatmap(images[:1], torch.ones(1, 4, 3), alpha=1.0, cmap="gray")
    assert (constant == 255).all()


def test_overlay_rejects_float_images() -> None:
    with pytest.raises(ValueError):
        overlay_heatmap(torch.rand(1, 3, 4, 4), torch.rand(1, 1, 4, 4))


def test_saliency_to_heat_reductions() -> None:
    s = torch.tensor([[[[3.0]], [[-4.0]], [[0.0]]]])  # [1,3,1,1]
    assert saliency_to_heat(s).shape == (1, 1, 1, 1)
    assert saliency_to_heat(s, "abs_max").item() == 4.0
    assert saliency_to_heat(s, "abs_sum").item() == 7.0
    assert saliency_to_heat(s, "sum").item() == -1.0
    assert saliency_to_heat(s, "l2").item() == pytest.approx(5.0)
    with pytest.raises(ValueError):
        saliency_to_heat(s, "median")


def test_encode_png_round_trip() -> None:
    image = torch.randint(0, 256, (3, 9, 13), dtype=torch.uint8)
    data = encode_png(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB")))
    assert torch.equal(decoded.permute(2, 0, 1), image)


def test_save_png_creates_parents(tmp_path: Path) -> None:
    image = torch.randint(0, 256, (3, 5, 4), dtype=torch.uint8)
    path = tmp_path / "a" / "b" / "img.png"
    save_png(image, path)
    assert path.read_bytes() == encode_png(image)


def test_png_text_chunks_round_trip_through_pil_and_leave_the_pixels_alone():
    image = torch.randint(0, 256, (3, 9, 13), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cells = [(0, 0, 0, 6, 9), (1, 6, 0, 13, 9), (1, 0, 0, 1, 1)]
    png = encode_png(image, text={**cells_to_text(cells), "Comment": "caf\u00e9"})
    with Image.open(io.BytesIO(png)) as decoded:
        assert decoded.text["Comment"] == "caf\u00e9"
        assert cells_from_text(decoded.text) == cells
        assert torch.equal(torch.from_numpy(np.array(decoded)).permute(2, 0, 1), image)
    assert encode_png(image, text={}) == encode_png(image)  # no chunk, no change


@pytest.mark.parametrize("key", ["", " lead", "x" * 80, "tab\there", "\u00e9t\u00e9"])
def test_png_text_rejects_keys_png_does_not_allow(key):
    with pytest.raises(ValueError, match="PNG text key"):
        encode_png(torch.zeros(3, 2, 2, dtype=torch.uint8), text={key: "v"})


@pytest.mark.parametrize("raw", ["not json", '{"a": 1}', "[1, 2]", ""])
def test_unreadable_cells_text_gives_no_cells(raw):
    assert cells_from_text({CELLS_KEY: raw}) == []
    assert cells_from_text({"other": "[[0, 0, 0, 1, 1]]"}) == []


@pytest.mark.parametrize(
    "entry", ["[1, 2, 3]", "[0, 5, 0, 5, 9]", "[-1, 0, 0, 1, 1]", "[0, 0, 0, 1.5, 1]", "[true, 0, 0, 1, 1]"]
)
def test_malformed_cells_are_skipped_and_the_good_ones_kept(entry):
    assert cells_from_text({CELLS_KEY: f"[[2, 0, 0, 3, 4], {entry}, [3, 1, 1, 2, 2]]"}) == [
        (2, 0, 0, 3, 4),
        (3, 1, 1, 2, 2),
    ]
