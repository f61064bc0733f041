"""Architecture conformance: the models users bring (torchvision and timm, random init, small inputs).

For each: ``layers="auto"`` gives one layer per resolution stage with the expected names (never a reused module, a
squeeze-excite gate, a channels-last permute or an attention map), every auto layer's layout is what the model really
holds, and Grad-CAM at those layers equals Captum's ``LayerGradCam`` (NCHW layers) or pytorch-grad-cam with its
``reshape_transform`` (channels-last and token layers). Then one short Lightning run per family with
``GradCAMMonitor`` + ``ActivationMonitor``, read back from the event file.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from probelens.methods import grad_cam
from probelens.methods.layers import resolve_layers
from probelens.methods.layout import trace_layers

tvm = pytest.importorskip("torchvision.models")
timm = pytest.importorskip("timm")
captum_attr = pytest.importorskip("captum.attr")
pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from timm.models.swin_transformer import SwinTransformer  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

SIZE = (64, 64)


def _vit(**kw):
    return VisionTransformer(img_size=SIZE, patch_size=8, embed_dim=48, depth=6, num_heads=3, num_classes=3, **kw)


def _swin():
    return SwinTransformer(
        img_size=SIZE, patch_size=4, window_size=4, embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 4),
        num_classes=3,
    )  # fmt: skip


def _tv_vit():
    return tvm.VisionTransformer(
        image_size=64, patch_size=16, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=3
    )


# model -> (constructor, the layers "auto" picks on a 64x64 image, in order)
MODELS = {
    "resnet18": (lambda: tvm.resnet18(num_classes=3), ["relu", "layer1", "layer2", "layer3", "layer4"]),
    # Bottleneck: its ReLU runs three times per block and the stride sits in conv2
    "resnet50": (lambda: tvm.resnet50(num_classes=3), ["relu", "layer1", "layer2", "layer3", "layer4"]),
    "vgg11": (
        lambda: tvm.vgg11(num_classes=3),
        ["features.1", "features.4", "features.9", "features.14", "features.19", "features"],
    ),
    "densenet121": (
        lambda: tvm.densenet121(num_classes=3),
        ["features.relu0", "features.denseblock1", "features.denseblock2", "features.denseblock3", "features"],
    ),
    "mobilenet_v2": (
        lambda: tvm.mobilenet_v2(num_classes=3),
        ["features.1", "features.3", "features.6", "features.13", "features"],
    ),
    # squeeze-excite gates (1x1) inside the blocks
    "mobilenet_v3_small": (
        lambda: tvm.mobilenet_v3_small(num_classes=3),
        ["features.0", "features.1", "features.3", "features.8", "features"],
    ),
    "efficientnet_b0": (
        lambda: tvm.efficientnet_b0(num_classes=3),
        ["features.1", "features.2", "features.3", "features.5", "features"],
    ),
    "regnet_y_400mf": (
        lambda: tvm.regnet_y_400mf(num_classes=3),
        ["stem", "trunk_output.block1", "trunk_output.block2", "trunk_output.block3", "trunk_output"],
    ),
    "shufflenet_v2": (lambda: tvm.shufflenet_v2_x0_5(num_classes=3), ["conv1", "stage2", "stage3", "conv5"]),
    "googlenet": (
        lambda: tvm.googlenet(num_classes=3, aux_logits=False, init_weights=True),
        ["conv1", "conv3", "inception3b", "inception4e", "inception5b"],
    ),
    # channels-last Permute + LayerNorm + Linear inside every block
    "convnext_tiny": (
        lambda: tvm.convnext_tiny(num_classes=3),
        ["features.1", "features.3", "features.5", "features"],
    ),
    "swin_t": (lambda: tvm.swin_t(num_classes=3), ["features.1", "features.3", "features.5", "norm"]),
    "tv_vit": (_tv_vit, [f"encoder.layers.encoder_layer_{i}.ln_1" for i in range(4)]),
    "timm_convnext_atto": (
        lambda: timm.create_model("convnext_atto", num_classes=3),
        ["stages.0", "stages.1", "stages.2", "stages"],
    ),
    "timm_efficientnet_b0": (
        lambda: timm.create_model("efficientnet_b0", num_classes=3),
        ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "bn2"],
    ),
    # unfolded patches [B, C, P, N] inside its transformer blocks
    "timm_mobilevit_xxs": (
        lambda: timm.create_model("mobilevit_xxs", num_classes=3),
        ["stages.0", "stages.1", "stages.2", "stages.3", "final_conv"],
    ),
    "timm_vit": (_vit, ["blocks.1.norm1", "blocks.2.norm1", "blocks.4.norm1", "blocks.5.norm1"]),
    "timm_vit_registers": (
        lambda: _vit(reg_tokens=4),
        ["blocks.1.norm1", "blocks.2.norm1", "blocks.4.norm1", "blocks.5.norm1"],
    ),
    "timm_swin": (_swin, ["layers.0", "layers.1", "layers.2", "norm"]),
}


ISOTROPIC = ("tv_vit", "timm_vit", "timm_vit_registers")


@pytest.fixture(scope="module")
def built():
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = MODELS[name][0]().eval()
        return cache[name]

    return get


def _grid(record):
    return record.layout.grid


@pytest.mark.parametrize("name", list(MODELS))
def test_auto_picks_one_layer_per_stage(name, built):
    model = built(name)
    x = torch.rand(1, 3, *SIZE)
    picked = list(resolve_layers(model, "auto", example_input=x))
    assert picked == MODELS[name][1]
    records = trace_layers(model, x)
    grids = [_grid(records[n]) for n in picked]
    assert all(records[n].calls == 1 for n in picked)  # never the last call of a reused module
    assert all(g[0] * g[1] > 1 for g in grids)  # no 1x1 gate, no pooled vector
    if name not in ISOTROPIC:  # CNNs and hierarchical transformers: one layer per stage, coarser and coarser
        assert all(a[0] * a[1] > b[0] * b[1] for a, b in itertools.pairwise(grids)), grids
        spatial = {_grid(r) for r in records.values() if r.spatial and r.calls == 1}
        assert len(picked) == len({g for g in spatial if g[0] * g[1] >= grids[-1][0] * grids[-1][1]}) or name in (
            "shufflenet_v2",  # its 16x16 stage is a max-pool alone
            "vgg11",  # its 2x2 stage ends the features; at 64x64 the adaptive pool then upsamples to 7x7
        )
    else:  # an isotropic transformer: evenly spaced blocks, ending at the last, all on the patch grid
        assert len(set(grids)) == 1


EXPECTED_LAYOUTS = {
    "convnext_tiny": {"features.1.0.block.2": "nhwc", "features.1.0.block.0": "nchw", "features.1.0": "nchw"},
    "swin_t": {"features.1.0.norm1": "nhwc", "features.0": "nhwc", "permute": "nchw"},
    "timm_swin": {"layers.3.blocks.1.norm1": "nhwc", "layers.1": "nhwc", "layers.2.blocks.1.mlp.fc1": "tokens"},
    "timm_vit": {"blocks.0.norm1": "tokens", "patch_embed.proj": "nchw", "norm": "tokens"},
    "timm_convnext_atto": {"stages.0.blocks.0.norm": "nchw", "stages.0.blocks.0.mlp.fc1": "nchw"},
}


@pytest.mark.parametrize("name", list(EXPECTED_LAYOUTS))
def test_layouts_are_what_the_model_holds(name, built):
    records = trace_layers(built(name), torch.rand(1, 3, *SIZE))
    got = {layer: records[layer].layout.kind if records[layer].layout else None for layer in EXPECTED_LAYOUTS[name]}
    assert got == EXPECTED_LAYOUTS[name]


def test_attention_internals_and_unfolded_patches_are_not_maps(built):
    vit = trace_layers(built("timm_vit"), torch.rand(1, 3, *SIZE))
    assert vit["blocks.0.attn.qkv"].layout is None and vit["blocks.0.attn.q_norm"].layout is None
    swin = trace_layers(built("timm_swin"), torch.rand(1, 3, *SIZE))
    assert swin["layers.0.blocks.1.attn"].layout is None  # window-partitioned (and shifted) tokens
    mobilevit = trace_layers(built("timm_mobilevit_xxs"), torch.rand(1, 3, *SIZE))
    unfolded = [r for n, r in mobilevit.items() if ".transformer." in n]
    assert unfolded and all(r.layout is None for r in unfolded)


class Scaled(nn.Module):
    """Logits x 1e4: pytorch-grad-cam's additive epsilon (1e-7 next to the map maximum) would otherwise matter at
    random init's tiny gradients."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x):
        return self.m(x) * 1e4


def _scale(maps: torch.Tensor) -> torch.Tensor:
    maps = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return maps / (1e-7 + maps.amax(dim=(-2, -1), keepdim=True))


NCHW_MODELS = [n for n in MODELS if n not in ("swin_t", "tv_vit", "timm_vit", "timm_vit_registers", "timm_swin")]


@pytest.mark.parametrize("name", NCHW_MODELS)
def test_grad_cam_at_the_auto_layers_equals_captum(name, built):
    model = built(name)
    torch.manual_seed(1)
    x, targets = torch.rand(2, 3, *SIZE), torch.tensor([0, 2])
    ours = grad_cam(model, x, targets, layers="auto", upsample=False)
    modules = dict(model.named_modules())
    for layer, cam in ours.items():
        reference = captum_attr.LayerGradCam(model, modules[layer]).attribute(x, target=targets, relu_attributions=True)
        assert reference.shape == cam.shape, layer
        scale = reference.abs().amax().clamp_min(1e-30)
        torch.testing.assert_close(cam / scale, reference / scale, atol=1e-4, rtol=1e-3, msg=layer)


def _tokens_to_map(prefix: int, grid: tuple[int, int]):
    def reshape(t):
        return t[:, prefix:].reshape(t.shape[0], *grid, t.shape[-1]).permute(0, 3, 1, 2)

    return reshape


def _channels_last(t):
    return t.permute(0, 3, 1, 2)


# transformers: pytorch-grad-cam with the reshape_transform its docs give for each
TRANSFORMER_CASES = {
    "timm_vit": _tokens_to_map(1, (8, 8)),
    "timm_vit_registers": _tokens_to_map(5, (8, 8)),
    "tv_vit": _tokens_to_map(1, (4, 4)),
    "timm_swin": _channels_last,
    "swin_t": _channels_last,
}


@pytest.mark.parametrize("name", list(TRANSFORMER_CASES))
def test_grad_cam_on_token_and_channels_last_layers_equals_pytorch_grad_cam(name, built):
    model = Scaled(built(name)).eval()
    torch.manual_seed(1)
    x, targets = torch.rand(2, 3, *SIZE), torch.tensor([0, 2])
    layers = ["m." + layer for layer in MODELS[name][1]]
    ours = grad_cam(model, x, targets, layers=layers, upsample=False)
    modules = dict(model.named_modules())
    for layer in layers:
        cam = ours[layer][:, 0]
        with pgc.GradCAM(model, target_layers=[modules[layer]], reshape_transform=TRANSFORMER_CASES[name]) as ref:
            ref.get_target_width_height = lambda _x, cam=cam: (cam.shape[-1], cam.shape[-2])
            reference = torch.from_numpy(ref(x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))
        assert reference.shape == cam.shape, layer
        torch.testing.assert_close(_scale(cam), reference, atol=2e-4, rtol=1e-3, msg=layer)


def test_a_user_reshape_equals_the_recognised_layout(built):
    model = built("timm_vit")
    x = torch.rand(2, 3, *SIZE)
    auto = grad_cam(model, x, layers=["blocks.3.norm1"])
    given = grad_cam(model, x, layers=["blocks.3.norm1"], reshape={"blocks.3.norm1": _tokens_to_map(1, (8, 8))})
    torch.testing.assert_close(auto, given)
    # a wrong grid is the user's to choose, but a reshape that does not make a map is refused with the shapes
    with pytest.raises(ValueError, match=r"must return \[N, C, h, w\]"):
        grad_cam(model, x, layers=["blocks.3.norm1"], reshape=lambda t: t[:, 1:])


def test_swin_maps_are_never_computed_on_the_height_axis(built):
    # the outside tester's case: a channels-last Swin norm read as NCHW gave a (2, 1, 224, 224) map from H as channels
    model = built("timm_swin")
    x = torch.rand(2, 3, *SIZE)
    ours = grad_cam(model, x, layers=["layers.3.blocks.1.norm1"], upsample=False)["layers.3.blocks.1.norm1"]
    assert ours.shape == (2, 1, 2, 2)  # the stage's 2x2 grid, not (2, 1, 2, 192)


def test_deconvnet_and_feature_visualisation_read_channels_of_a_channels_last_layer(built):
    from probelens.methods import deconv_projections, feature_visualization

    model = built("timm_swin")
    x = torch.rand(2, 3, *SIZE)
    layer = "layers.1"
    captured = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: captured.setdefault("o", o))
    with torch.no_grad():
        model(x)
    handle.remove()
    raw = captured["o"]  # [N, h, w, C]
    assert raw.shape[1:3] == (8, 8)
    expected = raw.amax(dim=(1, 2)).topk(3, dim=1).indices  # channels are the last axis, positions the middle two
    projections, channels = deconv_projections(model, x, layer, top_k=3)
    assert torch.equal(channels, expected)
    assert projections.shape == (2, 3, 3, *SIZE) and projections.abs().sum() > 0
    # the feature-visualisation objective is a channel of the map: index 47 exists only on the channel axis (48)
    images = feature_visualization(model, layer, [47], image_shape=(3, *SIZE), steps=1)
    assert images.shape == (1, 3, *SIZE)
    with pytest.raises(ValueError, match="48 channels"):
        feature_visualization(model, layer, [48], image_shape=(3, *SIZE), steps=1)


# the outside tester's wrong-picture cases: refused (or read right), never computed on a wrong axis


def test_a_token_mixing_mlp_is_not_read_as_tokens():
    # MLP-Mixer's token MLP works on [N, C, T]: its output tiles a 64x128 image as "512 tokens" as well
    mixer = timm.create_model("mixer_s16_224", img_size=(64, 128), num_classes=3).eval()
    x = torch.rand(1, 3, 64, 128)
    records = trace_layers(mixer, x)
    assert records["blocks.3.mlp_tokens"].layout is None and records["blocks.3.mlp_tokens.fc1"].layout is None
    assert records["blocks.3.mlp_channels"].layout.grid == (4, 8) and records["blocks.3"].layout.grid == (4, 8)
    picked = list(resolve_layers(mixer, "auto", example_input=x))
    assert picked == ["blocks.1.norm1", "blocks.3.norm1", "blocks.5.norm1", "blocks.7.norm1"]
    with pytest.raises(ValueError, match=r"blocks\.3\.mlp_tokens.*reshape="):
        grad_cam(mixer, x, layers=["blocks.3.mlp_tokens"])


class _Flattened(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 64, 8, 8), nn.Flatten(2))  # [N, 64, 256]: channels first
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        return self.head(self.body(x).mean(2))


class _Transposed(nn.Module):
    def __init__(self, permute: bool) -> None:
        super().__init__()
        self.permute = permute
        self.conv, self.norm, self.head = nn.Conv2d(3, 16, 4, 4), nn.LayerNorm(16), nn.Linear(16, 2)

    def forward(self, x):
        y = self.conv(x)
        y = y.permute(0, 2, 3, 1) if self.permute else y.transpose(1, 3)  # NHWC, or [N, W, H, C]
        return self.head(self.norm(y).mean((1, 2)))


def test_flattened_and_transposed_maps_are_refused_and_a_permute_is_followed():
    flat = trace_layers(_Flattened(), torch.rand(1, 3, 128, 128))
    assert flat["body.1"].layout is None  # [N, C, T] would have put channels on the token axis
    assert trace_layers(_Transposed(permute=False), torch.rand(1, 3, 64, 64))["norm"].layout is None
    assert trace_layers(_Transposed(permute=True), torch.rand(1, 3, 64, 64))["norm"].layout.kind == "nhwc"


def test_a_late_class_token_and_attention_internals_of_any_name():
    cait = timm.create_model("cait_xxs24_224", img_size=64, num_classes=3).eval()
    x = torch.rand(1, 3, 64, 64)
    # its class token joins only in the last blocks: the main blocks hold 4x4 tokens without it
    assert list(resolve_layers(cait, "auto", example_input=x)) == [f"blocks.{k}.norm1" for k in (5, 11, 17, 23)]
    records = trace_layers(cait, x)
    assert records["blocks.23.attn.proj_w"].layout is None  # talking-heads logits [N, T, T, heads]


def test_a_reshape_must_keep_the_batch_and_bad_ones_are_named(built):
    model = built("timm_vit")
    x = torch.rand(4, 3, *SIZE)
    with pytest.raises(ValueError, match="keeping the batch axis"):
        grad_cam(
            model, x, layers=["blocks.3.norm1"], reshape=lambda t: t[:1, 1:].reshape(1, 8, 8, 48).permute(0, 3, 1, 2)
        )
    with pytest.raises(ValueError, match="reshape= must be None, a function"):
        grad_cam(model, x, layers=["blocks.3.norm1"], reshape="tokens")
    with pytest.raises(ValueError, match="must map layer names"):
        grad_cam(model, x, layers=["blocks.3.norm1"], reshape={"blocks.3.norm1": 3})
