"""Layouts come from the forward structure, never from a shape (fast tier, torch only).

The cases a shape cannot tell: channels equal to the grid side (``[N,32,32,32]`` NCHW or NHWC), a token count that is
the square of the channel count (``[N,256,16]`` or ``[N,16,256]``), a reshape that changes the order before a
LayerNorm, unrolled tokens (Hiera), a side branch that pools to a coarse grid (GC-ViT). Each is read from how the
tensor was made, or refused by name with a message that shows ``reshape=``.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probelens.methods import grad_cam
from probelens.methods.layers import resolve_layers
from probelens.methods.layout import LayerTraces, resolve_layouts, trace_layers
from probelens.methods.summary import layer_summary


def _hand_grad_cam(model: nn.Module, module: nn.Module, x: Tensor, targets: Tensor, to_nchw) -> Tensor:
    """ReLU(sum_c mean_hw(dY/dA_c) A_c), upsampled, on the map ``to_nchw`` makes of the module's raw output."""
    kept: list[Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: kept.append(out))
    try:
        score = model(x).gather(1, targets[:, None]).sum()
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score, kept[0])
    act, grad = to_nchw(kept[0].detach()), to_nchw(grad)
    cam = F.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1, keepdim=True))
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)


class _TokenStage(nn.Module):
    """PVT-v2's stage in 6 lines: NHWC in, tokens inside, NCHW out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc, self.norm = nn.Linear(channels, channels), nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        tokens = self.norm(self.fc(x.reshape(b, h * w, c)))
        return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)


class _PvtLike(nn.Module):
    """The outside tester's repro: conv -> permute(0,2,3,1) -> LayerNorm, then a stage; C == H == W == 32."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.stage = nn.Conv2d(3, 32, 4, 4), nn.LayerNorm(32), _TokenStage(32)
        self.head = nn.Linear(32, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage(self.norm(self.conv(x).permute(0, 2, 3, 1)))
        return self.head(x.mean((2, 3)))


def test_a_stage_that_takes_nhwc_and_returns_nchw_of_one_shape_is_read_as_nchw():
    torch.manual_seed(0)
    model, x, targets = _PvtLike().eval(), torch.rand(2, 3, 128, 128), torch.tensor([0, 2])
    records = trace_layers(model, x)
    assert records["stage"].shape == records["norm"].shape == (2, 32, 32, 32)
    assert records["norm"].layout.kind == "nhwc" and records["stage"].layout.kind == "nchw"
    assert records["stage.norm"].layout.kind == "tokens" and records["stage.norm"].layout.grid == (32, 32)
    assert list(resolve_layers(model, "auto", example_input=x)) == ["stage"]
    ours = grad_cam(model, x, targets, layers=["stage", "norm"])
    by_hand = _hand_grad_cam(model, model.stage, x, targets, lambda t: t)
    torch.testing.assert_close(ours["stage"], by_hand)
    misread = _hand_grad_cam(model, model.stage, x, targets, lambda t: t.permute(0, 3, 1, 2))
    assert (misread - by_hand).abs().amax() > 0.1 * by_hand.abs().amax()  # the guess the old code made is far off
    nhwc = _hand_grad_cam(model, model.norm, x, targets, lambda t: t.permute(0, 3, 1, 2))
    torch.testing.assert_close(ours["norm"], nhwc)


class _Transposed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.mix, self.head = nn.Conv2d(3, 16, 4, 4), nn.Conv2d(16, 16, 1), nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.mix(self.conv(x).transpose(2, 3))  # [N, C, W, H]: looks like NCHW on a square image
        return self.head(y.mean((2, 3)))


def test_a_transposed_map_is_refused_by_name_with_its_axes_and_reshape():
    model, x = _Transposed().eval(), torch.rand(1, 3, 64, 64)
    assert trace_layers(model, x)["mix"].layout is None
    with pytest.raises(ValueError) as info:
        resolve_layouts(model, x, ["mix"])
    message = str(info.value)
    assert "'mix' (Conv2d, output [N, 16, 16, 16])" in message
    assert "(batch, channels, W 16, H 16)" in message and "reshape=" in message
    assert list(resolve_layers(model, "auto", example_input=x)) == ["conv"]


class _SquareTokens(nn.Module):
    """16 channels on a 16x16 grid: 256 tokens = 16 ** 2."""

    def __init__(self, transpose: bool) -> None:
        super().__init__()
        self.transpose = transpose
        self.conv, self.fc, self.head = (
            nn.Conv2d(3, 16, 4, 4),
            nn.Linear(16 if transpose else 256, 16),
            nn.Linear(16, 2),
        )

    def forward(self, x: Tensor) -> Tensor:
        t = self.conv(x).flatten(2)  # [N, 16, 256]
        t = self.fc(t.transpose(1, 2) if self.transpose else t)
        return self.head(t.mean(1))


def test_a_token_count_that_is_the_square_of_the_channels_is_read_from_the_flatten():
    x = torch.rand(1, 3, 64, 64)
    tokens = trace_layers(_SquareTokens(transpose=True), x)["fc"]
    assert tokens.layout.kind == "tokens" and tokens.layout.grid == (16, 16)
    # without the transpose the Linear mixes the 256 positions: [N, 16 channels, 16 features], no map at all
    mixed = trace_layers(_SquareTokens(transpose=False), x)["fc"]
    assert mixed.layout is None
    with pytest.raises(ValueError) as info:
        resolve_layouts(_SquareTokens(transpose=False), x, ["fc"])
    assert "CHANNELS_FIRST_TOKENS" not in str(info.value) and "channels_first" not in str(info.value)


class _ScrambledNorm(nn.Module):
    """A reshape that changes the order before a LayerNorm: NCHW reshaped straight to [N, HW, C] (no permute)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(3, 16, 4, 4), nn.LayerNorm(16), nn.Linear(16, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.head(self.norm(y.reshape(y.shape[0], -1, 16)).mean(1))


def test_an_order_changing_reshape_before_a_layernorm_is_not_read_as_tokens():
    record = trace_layers(_ScrambledNorm(), torch.rand(1, 3, 64, 64))["norm"]
    assert record.shape == (2, 256, 16) and record.layout is None  # shaped like 16x16 tokens, but they are not


class _Unrolled(nn.Module):
    """Hiera's unroll in small: tokens ordered by (row parity, column parity, coarse row, coarse column)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc, self.head = nn.Conv2d(3, 8, 4, 4), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x).permute(0, 2, 3, 1)  # [N, 8, 8, C]
        n, h, w, c = y.shape
        y = y.reshape(n, h // 2, 2, w // 2, 2, c).permute(0, 2, 4, 1, 3, 5).reshape(n, h * w, c)
        return self.head(self.fc(y).mean(1))


def test_unrolled_tokens_are_read_in_their_order():
    torch.manual_seed(0)
    model, x, targets = _Unrolled().eval(), torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    layout = trace_layers(model, x)["fc"].layout
    assert layout.kind == "tokens" and layout.grid == (8, 8) and layout.order is not None

    def reroll(t: Tensor) -> Tensor:  # the inverse of the model's unroll, written out by hand
        n, _, c = t.shape
        return t.reshape(n, 2, 2, 4, 4, c).permute(0, 3, 1, 4, 2, 5).reshape(n, 8, 8, c).permute(0, 3, 1, 2)

    raw = torch.randn(2, 64, 8)
    torch.testing.assert_close(layout.to_nchw(raw), reroll(raw))
    ours = grad_cam(model, x, targets, layers=["fc"])["fc"]
    torch.testing.assert_close(ours, _hand_grad_cam(model, model.fc, x, targets, reroll))


class _SideBranch(nn.Module):
    """A stage with a pooled side branch (GC-ViT's global_block in small): the 4x4 context only makes a gate."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, 2)
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Conv2d(8, 8, 1))
        self.body, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.stem(x)
        gate = torch.sigmoid(self.context(y).mean((2, 3)))[:, :, None, None]
        return self.head((self.body(y) * gate).mean((2, 3)))


def test_auto_leaves_out_a_side_branch_that_never_reaches_the_final_map():
    x = torch.rand(1, 3, 32, 32)
    records = trace_layers(_SideBranch(), x)
    assert records["context"].layout.grid == (4, 4) and not records["context"].main_path
    assert records["body"].main_path
    assert list(resolve_layers(_SideBranch(), "auto", example_input=x)) == ["body"]


def test_auto_says_which_map_shaped_layers_it_skips(caplog):
    with caplog.at_level(logging.INFO, logger="probelens"):
        resolve_layers(_Transposed(), "auto", example_input=torch.rand(1, 3, 64, 64))
    assert "skips 1 layer" in caplog.text and "'mix'" in caplog.text and "reshape=" in caplog.text


def test_one_trace_is_shared_until_the_model_changes():
    model, x = _PvtLike(), torch.rand(1, 3, 64, 64)
    traces = LayerTraces()
    first = traces.records(model, x)
    assert traces.records(model, x[:1].clone()) is first and traces.made == 1
    model.head = nn.Linear(32, 5)  # a new head: the modules changed
    assert traces.records(model, x) is not first and traces.made == 2
    traces.records(model, torch.rand(1, 3, 32, 32))  # another image size
    assert traces.made == 3


def test_the_table_measures_at_most_the_fields_asked_for():
    net = nn.Sequential(*[nn.Conv2d(4 if i else 3, 4, 3, padding=1) for i in range(10)])
    rows = layer_summary(net, torch.rand(1, 3, 16, 16), max_receptive_fields=3)
    measured = [r.name for r in rows if r.receptive_field is not None]
    assert measured == ["0", "4", "9"]
    assert rows[-1].receptive_field == (16, 16) and rows[0].receptive_field == (3, 3)
