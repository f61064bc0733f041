"""The CAM family against pytorch-grad-cam and torchcam, against hand derivations where a reference deviates from its
paper, and the pass count of the gradient variants.

Both references min-max scale each map (pytorch-grad-cam: ``(m - min) / (max + 1e-7)``, torchcam: ``... + 1e-8``), so
the comparisons are at the layer's resolution after that scaling. The models' logits are multiplied by 1e4: at random
init the gradients are ~1e-3, so pytorch-grad-cam's additive epsilons (1e-6 next to ``G^2`` in Grad-CAM++, 1e-7 next
to the map maximum) would otherwise dominate what is compared.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import resnet18, small_cnn
from probelens.methods import cam, cam_map, grad_cam
from probelens.methods.cam import CAM_METHODS, GRADIENT_CAMS

pgc = pytest.importorskip("pytorch_grad_cam")
torchcam_methods = pytest.importorskip("torchcam.methods")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402

PGC = {
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "xgradcam": pgc.XGradCAM,
    "layercam": pgc.LayerCAM,
    "hirescam": pgc.HiResCAM,
    "eigencam": pgc.EigenCAM,
    "eigengradcam": pgc.EigenGradCAM,
    "scorecam": pgc.ScoreCAM,
}
TORCHCAM = {"gradcam": "GradCAM", "xgradcam": "XGradCAM", "layercam": "LayerCAM"}


class Scaled(nn.Module):
    def __init__(self, model: nn.Module, factor: float = 1e4) -> None:
        super().__init__()
        self.m, self.factor = model, factor

    def forward(self, x):
        return self.m(x) * self.factor


def _scale(maps: torch.Tensor, eps: float) -> torch.Tensor:
    maps = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return maps / (eps + maps.amax(dim=(-2, -1), keepdim=True))


# (name, model, input, our layer, the reference's model and layer): small_cnn has in-place ReLUs; its layer "8" is a
# conv followed by one, where pytorch-grad-cam records the post-ReLU values (its forward hook keeps the output
# tensor, which the ReLU then overwrites), so the reference there runs on the twin without in-place ReLUs.
def _cases():
    torch.manual_seed(0)
    x16 = torch.randn(4, 3, 16, 16)
    inplace, twin = Scaled(small_cnn(inplace=True, seed=0)).eval(), Scaled(small_cnn(inplace=False, seed=0)).eval()
    resnet = Scaled(resnet18(num_classes=5, seed=0)).eval()
    x_wide = torch.randn(3, 3, 48, 64)  # non-square
    return [
        ("small_cnn conv+bn", inplace, x16, "m.4", inplace),
        ("small_cnn in-place relu", inplace, x16, "m.6", inplace),
        ("small_cnn conv before in-place relu", inplace, x16, "m.8", twin),
        ("resnet18 48x64 layer2", resnet, x_wide, "m.layer2", resnet),
        ("resnet18 48x64 layer4", resnet, x_wide, "m.layer4", resnet),
    ]


CASES = _cases()


def _pgc_reference(method, model, layer, x, targets, shape):
    module = dict(model.named_modules())[layer]
    with PGC[method](model=model, target_layers=[module]) as extractor:
        extractor.batch_size = 64  # Score-CAM's forward batch
        extractor.get_target_width_height = lambda _x: (shape[-1], shape[-2])  # stay at the layer's resolution
        return torch.from_numpy(extractor(x, targets=[ClassifierOutputTarget(int(t)) for t in targets]))


class _UpsampleAlignCornersFalse(nn.Module):
    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, x):
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("method", CAM_METHODS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_variant_matches_pytorch_grad_cam(case, method, monkeypatch):
    name, model, x, layer, reference_model = case
    if method == "scorecam":  # no epsilon to outweigh, and a softmax over logits x 1e4 would be one-hot: unscaled
        model, reference_model = Scaled(model.m, 1.0), Scaled(reference_model.m, 1.0)
    targets = model(x).argmax(1)
    ours = cam(model, x, targets, layers=[layer], method=method, upsample=False)[layer][:, 0]
    if method == "scorecam":
        # pytorch-grad-cam upsamples Score-CAM's masks with align_corners=True; probelens (like every other map it
        # draws, and torchcam) with align_corners=False. The rest of its Score-CAM is the paper's: compare with that
        # one setting aligned.
        monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", _UpsampleAlignCornersFalse)
    reference = _pgc_reference(method, reference_model, layer, x, targets, ours.shape)
    scaled = _scale(ours, 1e-7)
    if method in ("eigencam", "eigengradcam"):  # the reference keeps the SVD's arbitrary sign: compare per image
        flipped = _pgc_flipped(method, reference_model, layer, x, targets)
        for i in range(len(x)):
            options = (reference[i], flipped[i])
            assert min(float((scaled[i] - o).abs().max()) for o in options) < 1e-4, (name, method, i)
        return
    torch.testing.assert_close(scaled, reference, rtol=0, atol=1e-4)


def _pgc_flipped(method, model, layer, x, targets):
    """pytorch-grad-cam's Eigen projection with the other sign, ReLU'd and scaled as it scales its own."""
    module = dict(model.named_modules())[layer]
    captured = {}
    handle = module.register_forward_hook(lambda _m, _i, out: captured.__setitem__("a", out))
    try:
        x_grad = x.clone().requires_grad_(True)
        out = model(x_grad)
        activation = captured["a"]
        if method == "eigengradcam":
            score = out.gather(1, targets[:, None]).sum()
            (gradient,) = torch.autograd.grad(score, activation)
            matrix = (gradient * activation).detach().numpy()
        else:
            matrix = activation.detach().numpy()
    finally:
        handle.remove()
    projection = torch.from_numpy(get_2d_projection(matrix))
    return _scale(F.relu(-projection), 1e-7)


@pytest.mark.parametrize("method", sorted(TORCHCAM))
@pytest.mark.parametrize("case", [c for c in CASES if c[4] is c[1]], ids=[c[0] for c in CASES if c[4] is c[1]])
def test_gradient_variants_match_torchcam(case, method):
    _, model, x, layer, _ = case
    targets = model(x).argmax(1)
    ours = cam(model, x, targets, layers=[layer], method=method, upsample=False)[layer][:, 0]
    extractor_type = getattr(torchcam_methods, TORCHCAM[method])
    with extractor_type(model, target_layer=layer, input_shape=tuple(x.shape[1:])) as extractor:
        reference = extractor(class_idx=targets.tolist(), scores=model(x))[0]
    torch.testing.assert_close(_scale(ours, 1e-8), reference, rtol=0, atol=1e-5)


def test_grad_cam_plus_plus_is_equation_19_of_its_paper():
    """torchcam's GradCAMpp sums ``A * G^3`` over the positions in the denominator; eq. 19 of Chattopadhyay et al.
    multiplies the sum of ``A`` by ``G_ij^3`` (as pytorch-grad-cam does, checked above). Checked here by the formula,
    element by element, in float64."""
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64)
    grad = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    grad[0, 0, 0, 0] = 0.0
    expected = torch.zeros(2, 1, 4, 5, dtype=torch.float64)
    for n in range(2):
        weights = []
        for k in range(3):
            s = a[n, k].sum()
            w = 0.0
            for i in range(4):
                for j in range(5):
                    gij = grad[n, k, i, j]
                    alpha = 0.0 if gij == 0 else gij**2 / (2 * gij**2 + s * gij**3)
                    w += alpha * max(float(gij), 0.0)
            weights.append(w)
        expected[n, 0] = F.relu(sum(w * a[n, k] for k, w in enumerate(weights)))
    torch.testing.assert_close(cam_map(a, grad, "gradcam++").double(), expected, rtol=1e-5, atol=1e-7)


def test_eigen_cam_orientation_is_fixed():
    """The first component is oriented to correlate positively with the per-position channel sums, so negating the
    SVD's vector cannot flip the map."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 6, 5, 7, generator=g)
    ours = cam_map(a, None, "eigencam")[:, 0]
    projection = torch.from_numpy(get_2d_projection(a.numpy()))
    centred = a.flatten(2).transpose(1, 2)
    centred = centred - centred.mean(1, keepdim=True)
    sign = torch.sign((projection.flatten(1) * centred.sum(2)).sum(1))[:, None, None]
    torch.testing.assert_close(ours, F.relu(sign * projection), rtol=1e-4, atol=1e-5)


def test_gradcam_variant_is_grad_cam():
    model = small_cnn(seed=1).eval()
    x = torch.randn(3, 3, 16, 16)
    ours = cam(model, x, layers="all", method="gradcam")
    reference = grad_cam(model, x, layers="all")
    for name, value in reference.items():
        torch.testing.assert_close(ours[name], value)


def test_the_gradient_variants_share_one_forward_and_one_backward(monkeypatch):
    """All gradient and activation variants at every conv layer read off one pass: one forward, one autograd.grad."""
    from probelens.methods import engine

    model = small_cnn(seed=1).eval()
    x = torch.randn(3, 3, 16, 16)
    grads = []
    real_grad = torch.autograd.grad
    monkeypatch.setattr(engine.torch.autograd, "grad", lambda *a, **k: grads.append(1) or real_grad(*a, **k))
    forwards = []
    handle = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        from probelens.methods import cams_from_pass, forward_backward, resolve_layers

        layers = resolve_layers(model, "all")
        result = forward_backward(model, x, {"pred": None}, layers, gradients=True, input_gradient=False)
        maps = {method: cams_from_pass(result, "pred", method) for method in (*GRADIENT_CAMS, "eigencam")}
    finally:
        handle.remove()
    assert (len(forwards), len(grads)) == (1, 1)
    for method, per_layer in maps.items():
        direct = cam(model, x, result.targets["pred"], layers=list(layers), method=method)
        for name, value in per_layer.items():
            torch.testing.assert_close(value, direct[name], msg=f"{method} {name}")


def test_score_cam_runs_its_masked_copies_in_chunks():
    model = small_cnn(seed=1).eval()
    x = torch.randn(3, 3, 16, 16)
    sizes = []
    handle = model.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    try:
        chunked = cam(model, x, layers=["8"], method="scorecam", chunk_size=5)["8"]
    finally:
        handle.remove()
    # the pass, the layout trace (two copies of the first image), then the masked copies in chunks (16 channels)
    assert sizes[:2] == [3, 2] and max(sizes[2:]) == 5 and sum(sizes[2:]) == 3 * 16
    torch.testing.assert_close(chunked, cam(model, x, layers=["8"], method="scorecam")["8"])


def test_unknown_method_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown CAM method 'gradcampp'; valid: gradcam, gradcam\\+\\+"):
        cam(small_cnn(), torch.randn(1, 3, 16, 16), method="gradcampp")


def test_a_non_finite_image_does_not_stop_the_eigen_variants():
    """Like pytorch-grad-cam, NaN/Inf become 0 before the SVD: the other images' maps are unchanged."""
    model = small_cnn(seed=1).eval()
    x = torch.randn(3, 3, 16, 16)
    clean = {m: cam(model, x, layers=["8"], method=m)["8"] for m in ("eigencam", "eigengradcam")}
    x_bad = x.clone()
    x_bad[1, 0, 2, 2] = float("nan")
    targets = model(x).argmax(1)
    for method, reference in clean.items():
        maps = cam(model, x_bad, targets, layers=["8"], method=method)["8"]
        torch.testing.assert_close(maps[[0, 2]], reference[[0, 2]])


def test_targets_may_be_a_list_or_an_int():
    model = small_cnn(seed=1).eval()
    x = torch.randn(2, 3, 16, 16)
    expected = cam(model, x, torch.tensor([0, 1]), layers=["8"])["8"]
    torch.testing.assert_close(cam(model, x, [0, 1], layers=["8"])["8"], expected)
    torch.testing.assert_close(cam(model, x, 1, layers=["8"])["8"][1], expected[1])
