"""An oracle probelens does not compute: timm's ``feature_info`` (stage modules, reductions) and
``forward_intermediates()`` (each stage's output as NCHW, made by timm's own permutes, reshapes, prefix-token drops and
Hiera's reroll) over a zoo of tiny timm models, one per family that has ``feature_info``.

For each model (random init, the classifier head given random weights: timm zero-initialises some, and a zero map
agrees with everything):

1. **timm's NCHW view of each stage**, as an index map: a forward hook makes the stage module output ``0, 1, 2, ...``
   and ``forward_intermediates(indices=[i], stop_early=True)`` carries those numbers through timm's own code to the
   NCHW intermediate, which then holds the raw position of every map entry. The map is checked against the values of a
   clean ``forward_intermediates`` run, so the index map is timm's, not a guess.
2. **Grad-CAM by hand** on that NCHW intermediate: ``ReLU(sum_c mean_hw(dY/dA_c) * A_c)``, bilinearly upsampled
   (``align_corners=False``), with ``dY/dA`` the raw gradient of the stage output moved by the same index map.
   probelens' ``grad_cam`` at every stage module must equal it.
3. **``layers="auto"``**: every auto layer's map is one of timm's stage maps (the same values), or sits where the
   docs say timm has no stage (a stem stage finer than timm's first; a block's normalised input in an isotropic
   transformer, see :func:`probelens.methods.layers.auto_layers`); its Grad-CAM equals the hand map of that stage;
   and every stage grid timm names has an auto layer (isotropic models: evenly spaced blocks on the one grid).

Slow tier (marked ``integration`` and ``slow``), run by CI; about 2-3 minutes on two CPU cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probelens.methods import grad_cam
from probelens.methods.hooks import probe_context
from probelens.methods.layers import resolve_layers
from probelens.methods.layout import trace_layers

timm = pytest.importorskip("timm")
from timm.models.davit import DaVit  # noqa: E402
from timm.models.efficientformer import EfficientFormer  # noqa: E402
from timm.models.focalnet import FocalNet  # noqa: E402
from timm.models.gcvit import GlobalContextVit  # noqa: E402
from timm.models.mlp_mixer import MlpMixer  # noqa: E402
from timm.models.nest import Nest  # noqa: E402
from timm.models.tiny_vit import TinyVit  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# family -> (timm model name or class, constructor overrides that make it tiny, image size): one per family with
# feature_info (a class where the model's factory fixes the argument that makes it tiny)
ZOO: dict[str, tuple[str | Callable[..., nn.Module], dict, int]] = {
    "resnet": ("test_resnet", {}, 64),
    "efficientnet": ("test_efficientnet", {}, 64),
    "mobilenetv3": ("mobilenetv3_small_050", {}, 64),
    "regnet": ("regnetx_002", {}, 64),
    "byobnet": ("test_byobnet", {}, 64),
    "nfnet": ("test_nfnet", {}, 64),
    "convnext": ("test_convnext", {}, 64),
    "densenet": ("densenet121", {"growth_rate": 8, "block_config": (1, 1, 1, 1)}, 64),
    "vit": ("test_vit", {"img_size": 64}, 64),
    "vit_relpos": ("test_vit_relpos", {"img_size": 64}, 64),
    "deit_distilled": (
        "deit_tiny_distilled_patch16_224",
        {"img_size": 64, "depth": 3, "embed_dim": 48, "num_heads": 2},
        64,
    ),
    "eva": ("eva02_tiny_patch14_224", {"img_size": 56, "depth": 3}, 56),
    "mixer": (MlpMixer, {"img_size": 64, "patch_size": 16, "num_blocks": 3, "embed_dim": 64}, 64),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"img_size": 64, "window_size": 4, "embed_dim": 24, "depths": (1, 1, 2, 1), "num_heads": (1, 1, 2, 2)},
        64,
    ),
    "pvt_v2": ("pvt_v2_b0", {}, 128),  # C == H == W == 32 at stage 0 (the outside tester's case)
    "hiera": (
        "hiera_tiny_224",
        {"img_size": (128, 128), "embed_dim": 32, "num_heads": 1, "stages": (1, 1, 2, 1)},
        128,
    ),
    "levit": ("levit_128s", {"img_size": 128}, 128),
    "gcvit": (GlobalContextVit, {"img_size": 224, "depths": (1, 1, 1, 1), "embed_dim": 32}, 224),
    "maxvit": ("test_maxvit", {"img_size": 64}, 64),
    "coatnet": ("test_coatnet", {"img_size": 64}, 64),
    "mobilevit": ("mobilevit_xxs", {}, 64),
    "edgenext": ("edgenext_xx_small", {}, 64),
    "efficientformer": (EfficientFormer, {"depths": (1, 1, 1, 1), "num_vit": 1}, 224),  # attention fixed at 7x7
    "poolformer": ("poolformer_s12", {}, 64),
    "xcit": ("xcit_nano_12_p16_224", {"img_size": 64, "depth": 3}, 64),
    "mambaout": ("test_mambaout", {}, 64),
    "lcnet": ("lcnet_050", {}, 64),
    "ghostnet": ("ghostnet_050", {}, 64),
    "rexnet": ("rexnet_100", {}, 64),
    "dla": ("dla46_c", {}, 64),
    "vovnet": ("ese_vovnet19b_slim_dw", {}, 64),
    "cspnet": ("cs3darknet_focus_s", {}, 64),
    "hgnet": ("hgnetv2_b0", {}, 64),  # F.pad before its stem convolutions
    "starnet": ("starnet_s050", {}, 64),
    "mobilenetv4": ("mobilenetv4_conv_small", {}, 64),
    "inception_next": ("inception_next_atto", {}, 64),
    "fastvit": ("fastvit_t8", {}, 64),
    "repvit": ("repvit_m0_9", {}, 64),
    "efficientvit_mit": ("efficientvit_b0", {}, 64),
    "efficientvit_msra": ("efficientvit_m0", {}, 224),
    "mobileone": ("mobileone_s0", {}, 64),
    "davit": (DaVit, {"depths": (1, 1, 1, 1), "embed_dims": (16, 32, 64, 128), "num_heads": (1, 2, 4, 8)}, 64),
    "focalnet": (FocalNet, {"depths": (1, 1, 1, 1), "embed_dim": 24}, 64),
    "tiny_vit": (
        TinyVit,
        {
            "embed_dims": (16, 32, 64, 128),
            "depths": (1, 1, 1, 1),
            "num_heads": (1, 2, 4, 8),
            "window_sizes": (4, 4, 4, 2),
        },
        64,
    ),
    "nest": (Nest, {"img_size": 64, "embed_dims": (16, 32, 64), "num_heads": (1, 2, 4), "depths": (1, 1, 1)}, 64),
}


def _randomize_head(model: nn.Module) -> None:
    """Random weights for the classifier (timm zero-initialises Hiera's and Mixer's)."""
    heads = model.get_classifier()
    heads = heads if isinstance(heads, tuple) else (heads,)  # distilled models: (head, head_dist)
    modules = [m for head in heads for m in head.modules()]
    generator = torch.Generator().manual_seed(1)
    for module in modules:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in))
                if module.bias is not None:
                    module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))


def _build(family: str) -> tuple[nn.Module, Tensor, Tensor]:
    name, overrides, size = ZOO[family]
    torch.manual_seed(0)
    if callable(name):
        model = name(num_classes=3, **overrides).eval()
    else:
        model = timm.create_model(name, pretrained=False, num_classes=3, **overrides).eval()
    _randomize_head(model)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    return model, x, torch.tensor([0, 2])


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def _timm_index_map(model: nn.Module, x: Tensor, stage: int, module: nn.Module) -> Tensor | None:
    """timm's NCHW view of stage ``stage``'s raw output, as raw flat indices (``None`` where forward_intermediates
    does more than move entries, e.g. a norm)."""

    def numbered(_m: nn.Module, _i: object, out: Tensor) -> Tensor:
        return torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape)

    handle = module.register_forward_hook(numbered)
    try:
        with torch.no_grad():
            (nchw,) = model.forward_intermediates(x, indices=[stage], stop_early=True, intermediates_only=True)
    finally:
        handle.remove()
    index = nchw.round().long()
    if not torch.equal(index.to(nchw.dtype), nchw) or index.unique().numel() != index.numel():
        return None
    return index


def _raw_outputs_and_gradients(
    model: nn.Module, x: Tensor, targets: Tensor, modules: dict[str, nn.Module]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Each module's raw output and the gradient of the summed target scores with respect to it."""
    raw: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(_m: nn.Module, _i: object, out: Tensor) -> None:
            raw.setdefault(name, out)

        return hook

    handles = [m.register_forward_hook(keep(name)) for name, m in modules.items()]
    try:
        with probe_context(model):
            logits = model(x)
            score = logits.gather(1, targets[:, None]).sum()
            grads = torch.autograd.grad(score, [raw[n] for n in modules], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    return (
        {n: t.detach() for n, t in raw.items()},
        {n: (torch.zeros_like(raw[n]) if g is None else g) for n, g in zip(modules, grads)},
    )


def _hand_grad_cam(activation: Tensor, gradient: Tensor, size: tuple[int, int]) -> Tensor:
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)


class _Truth:
    """timm's stages of one model: NCHW activation, gradient and hand Grad-CAM per verified stage."""

    def __init__(self, model: nn.Module, x: Tensor, targets: Tensor) -> None:
        info = model.feature_info
        self.stages = [
            (f["module"], int(f["reduction"])) for f in (info.get_dicts() if hasattr(info, "get_dicts") else info)
        ]
        modules = _modules(model)
        with torch.no_grad():
            clean = model.forward_intermediates(x, intermediates_only=True)
        assert len(clean) == len(self.stages), (len(clean), self.stages)
        raw, grads = _raw_outputs_and_gradients(model, x, targets, {n: modules[n] for n, _ in self.stages})
        self.acts: dict[str, Tensor] = {}
        self.cams: dict[str, Tensor] = {}
        self.unverified: list[str] = []
        size = (x.shape[-2], x.shape[-1])
        for i, (name, _) in enumerate(self.stages):
            index = _timm_index_map(model, x, i, modules[name])
            if index is None:
                self.unverified.append(name)
                continue
            act = raw[name].flatten()[index]
            # the index map is timm's: the raw values moved by it are timm's intermediate
            torch.testing.assert_close(act, clean[i], msg=f"{name}: index map does not reproduce timm's map")
            grad = grads[name].flatten()[index]
            self.acts[name] = act
            self.cams[name] = _hand_grad_cam(act, grad, size)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and far faster than on two when the machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cases():
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            model, x, targets = _build(family)
            cache[family] = (model, x, targets, _Truth(model, x, targets))
        return cache[family]

    return get


def _close(ours: Tensor, reference: Tensor, what: str) -> None:
    scale = reference.abs().amax().clamp_min(1e-30)
    torch.testing.assert_close(ours / scale, reference / scale, atol=2e-4, rtol=1e-3, msg=what)


@pytest.mark.parametrize("family", list(ZOO))
def test_grad_cam_at_every_timm_stage_equals_grad_cam_on_timms_own_nchw_map(family, cases):
    model, x, targets, truth = cases(family)
    assert len(truth.cams) >= max(1, len(truth.stages) - 1), f"timm stages not verifiable: {truth.unverified}"
    ours = grad_cam(model, x, targets, layers=list(truth.cams))
    nonzero = 0
    for name, reference in truth.cams.items():
        _close(ours[name], reference, f"{family} {name}")
        nonzero += int(reference.amax() > 0)
    assert nonzero >= max(1, len(truth.cams) // 2), f"{family}: most maps are zero, the comparison says nothing"


@pytest.mark.parametrize("family", list(ZOO))
def test_auto_layers_sit_at_timms_stages_and_cover_them(family, cases):
    model, x, targets, truth = cases(family)
    picked = list(resolve_layers(model, "auto", example_input=x[:1]))
    records = trace_layers(model, x[:1])
    raw, _ = _raw_outputs_and_gradients(model, x, targets, {n: _modules(model)[n] for n in picked})
    maps = grad_cam(model, x, targets, layers=picked)
    first_stage = min(reduction for _, reduction in truth.stages)
    stage_names = {name for name, _ in truth.stages}
    stage_grids = {tuple(a.shape[-2:]) for a in truth.acts.values()}
    covered: set[tuple[int, ...]] = set()
    for layer in picked:
        layout = records[layer].layout
        assert layout is not None and layout.grid is not None, layer
        act = layout.to_nchw(raw[layer])
        same = [s for s, a in truth.acts.items() if a.shape == act.shape and torch.allclose(a, act)]
        if same:  # timm's own stage map: the same Grad-CAM as by hand
            _close(maps[layer], truth.cams[same[0]], f"{family}: auto layer {layer} at timm stage {same[0]}")
        elif layout.grid not in stage_grids:
            # not on any grid timm names: only a stem stage finer than timm's first stage is allowed
            reduction = round(x.shape[-1] / layout.grid[1])
            assert reduction < first_stage, (
                f"{family}: auto layer {layer!r} ({layout.describe()}) is on a grid timm has no stage on "
                f"(stages {sorted(stage_names)}, grids {sorted(stage_grids)}) and not a stem stage finer than timm's "
                f"first (reduction {first_stage})"
            )
        else:
            # on a timm stage's grid and after that stage's module in the forward pass: the final map after a head
            # conv or norm, the activation after the stage's last conv, a block's normalised input in an isotropic
            # transformer; never a side branch that runs inside an earlier stage (GC-ViT's global_block pools
            # stage 0 to the grids of stages 1-3)
            after = [
                s
                for s, a in truth.acts.items()
                if a.shape[-2:] == act.shape[-2:] and records[s].order < records[layer].order
            ]
            # an isotropic transformer's auto layer is a block's normalised input (its first token output, see
            # auto_layers): for block 0 that is before timm's first stage, on its grid
            block_input = layer.endswith(".norm1") and layer.removesuffix(".norm1") in stage_names
            assert after or block_input, (
                f"{family}: auto layer {layer!r} ({layout.describe()}) is on the grid of timm's stages "
                f"{[s for s, a in truth.acts.items() if a.shape[-2:] == act.shape[-2:]]} but runs before them"
            )
        covered.add(tuple(layout.grid))
    assert stage_grids <= covered, f"{family}: timm stages on grids {stage_grids - covered} have no auto layer"


def test_the_zoo_holds_the_families_the_outside_tester_found_wrong():
    assert {"pvt_v2", "hiera", "levit", "gcvit"} <= set(ZOO)


def test_the_oracle_tells_a_wrong_axis_from_the_right_one(cases):
    # the outside tester's PVT-v2 case: stage 0 is [N, 32, 32, 32]; read as channels-last it is a different map,
    # and the comparison the zoo runs must see it
    model, x, targets, truth = cases("pvt_v2")
    act = truth.acts["stages.0"]
    assert act.shape[1:] == (32, 32, 32)
    wrong = act.permute(0, 2, 3, 1)  # the NHWC reading of the same tensor
    raw, grads = _raw_outputs_and_gradients(model, x, targets, {"stages.0": _modules(model)["stages.0"]})
    misread = _hand_grad_cam(raw["stages.0"].permute(0, 3, 1, 2), grads["stages.0"].permute(0, 3, 1, 2), x.shape[-2:])
    assert not torch.equal(wrong, act)
    with pytest.raises(AssertionError):
        _close(misread, truth.cams["stages.0"], "misread")
    # and Hiera: its unrolled tokens read row-major are not timm's map
    model, x, targets, truth = cases("hiera")
    raw, grads = _raw_outputs_and_gradients(model, x, targets, {"blocks.0": _modules(model)["blocks.0"]})
    grid = truth.acts["blocks.0"].shape[-2:]
    row_major = raw["blocks.0"].reshape(2, *grid, -1).permute(0, 3, 1, 2)
    row_major_grad = grads["blocks.0"].reshape(2, *grid, -1).permute(0, 3, 1, 2)
    with pytest.raises(AssertionError):
        _close(_hand_grad_cam(row_major, row_major_grad, x.shape[-2:]), truth.cams["blocks.0"], "row-major Hiera")
