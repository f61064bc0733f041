"""Measure what docs/concepts.md reports: how TCAV statistics separate shortcut from clean models on the snow/desert
generator, and how many concept pictures a stable CAV needs.

    python docs/measure_concepts.py separation 0.95 3   # p, epochs: per epoch and layer, TCAV score, p-values, cosine
    python docs/measure_concepts.py separation 0.5 4
    python docs/measure_concepts.py counts              # CAV accuracy / stability / cosine against the picture count

The demo CNN (examples/snow_vs_desert.py, width 8) at 48 px on 1280 (p=0.95) or 2000 (p=0.5) images, AdamW 3e-3,
batch 64; the probe: 32 images at the run's p; the concept pictures: plain snow and plain desert backgrounds from the
generator (``with_backgrounds=True``), 30 of each; ground truth: accuracy on 128 cue-conflicting images (p=0).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from probelens.data import MEAN, STD, generate_snow_desert
from probelens.methods import auto_layers, forward_backward
from probelens.methods.tcav import concept_activation_vector, cosine_alignment, tcav

SIZE = 48
_spec = importlib.util.spec_from_file_location("demo", Path(__file__).parents[1] / "examples" / "snow_vs_desert.py")
demo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo)
_m, _s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - _m) / _s


def backgrounds(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain snow and plain desert pictures (the generator's backgrounds without the animal)."""
    s = generate_snow_desert(n, size=SIZE, p=0.5, seed=seed, with_backgrounds=True)
    bg = normalise(s.background_images)
    return bg[s.backgrounds == 0], bg[s.backgrounds == 1]


def train_epochs(p: float, epochs: int, n: int):
    """Yield (epoch, model, conflict accuracy, probe images, probe labels) after each epoch."""
    torch.manual_seed(0)
    train = generate_snow_desert(n, size=SIZE, p=p, seed=0)
    x, y = normalise(train.images), train.labels
    probe = generate_snow_desert(32, size=SIZE, p=p, seed=1)
    conflict = generate_snow_desert(128, size=SIZE, p=0.0, seed=7)
    net = demo.build_cnn(width=8)
    opt = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-4)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            b = perm[i : i + 64]
            loss = F.cross_entropy(net(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = float((net(normalise(conflict.images)).argmax(1) == conflict.labels).float().mean())
        yield epoch, net, acc, normalise(probe.images), probe.labels


def separation(p: float, epochs: int) -> None:
    snow, sand = backgrounds(80, seed=5)
    snow, sand = snow[:30], sand[:30]
    for epoch, net, acc, px, py in train_epochs(p, epochs, 1280 if p > 0.9 else 2000):
        layers = auto_layers(net, px[:1])
        grads = forward_backward(net, px, py, layers, input_gradient=False).gradients["target"]
        a_snow = forward_backward(net, snow, None, layers, gradients=False, input_gradient=False).activations
        a_sand = forward_backward(net, sand, None, layers, gradients=False, input_gradient=False).activations
        print(f"p={p} epoch {epoch}: conflict accuracy {acc:.2f}")
        for layer in layers:
            for name, pos, neg in (("snow", a_snow, a_sand), ("sand", a_sand, a_snow)):
                r = tcav(pos[layer], neg[layer], grads[layer], py, 2, runs=10)
                cells = " ".join(
                    f"| class {k}: score {r.score(k):.2f} p {r.p_values[k]:.0e} cos {r.cosine(k):+.2f} "
                    f"(random {float(r.random_cosines[:, k].mean()):+.2f}) p {r.cosine_p_values[k]:.0e}"
                    for k in (0, 1)
                )
                print(f"  {layer:5s} {name:5s} {cells}")


def scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Leopards of either class on snow and on desert: a concept picture that also shows other things."""
    s = generate_snow_desert(n, size=SIZE, p=0.5, seed=seed)
    x = normalise(s.images)
    return x[s.backgrounds == 0], x[s.backgrounds == 1]


def counts() -> None:
    """CAV quality against the number of concept pictures per concept (the negatives: as many of the other concept),
    on a shortcut model (p=0.95, 1 epoch) and a clean one (p=0.5, 2 epochs), at the first and the deepest stage, for
    plain backgrounds and for scenes (leopards on snow / on desert). 10 draws per count; the reference CAV uses 200."""
    kinds = {"backgrounds": backgrounds(600, seed=5), "scenes": scenes(600, seed=6)}
    models = {}
    for p, epochs in ((0.95, 1), (0.5, 2)):
        for _epoch, net, acc, px, py in train_epochs(p, epochs, 1280 if p > 0.9 else 2000):
            models[p] = (net, acc, px, py)
    g = torch.Generator().manual_seed(0)
    print(
        "model | concept pictures | layer | count: held-out accuracy (min), cos to the 200-picture CAV (min), "
        "gradient cosine of the aligned class (mean +- sd)"
    )
    for p, (net, acc, px, py) in models.items():
        layers = auto_layers(net, px[:1])
        for kind, (snow, sand) in kinds.items():
            for layer in (next(iter(layers)), list(layers)[-1]):
                module = {layer: layers[layer]}
                grads = forward_backward(net, px, py, module, input_gradient=False).gradients["target"][layer]
                a_snow, a_sand, t_snow, t_sand = (
                    forward_backward(net, x, None, module, gradients=False, input_gradient=False).activations[layer]
                    for x in (snow[:200], sand[:200], snow[200:260], sand[200:260])
                )
                reference = concept_activation_vector(a_snow, a_sand).weights
                cells = []
                for count in (3, 5, 10, 20, 40):
                    accs, stab, align = [], [], []
                    for _ in range(10):
                        i, j = torch.randperm(200, generator=g)[:count], torch.randperm(200, generator=g)[:count]
                        cav = concept_activation_vector(a_snow[i], a_sand[j])
                        w, b = cav.weights, cav.bias
                        right = torch.cat([(t_snow.flatten(1) @ w + b) > 0, (t_sand.flatten(1) @ w + b) <= 0])
                        accs.append(float(right.float().mean()))
                        stab.append(float(F.cosine_similarity(w, reference, 0)))
                        align.append(max(float(cosine_alignment(grads[py == k], w).mean()) for k in (0, 1)))
                    a, s, c = torch.tensor(accs), torch.tensor(stab), torch.tensor(align)
                    cells.append(
                        f"{count}: {a.mean():.2f} ({a.min():.2f}), {s.mean():.2f} ({s.min():.2f}), "
                        f"{c.mean():+.2f}+-{c.std():.2f}"
                    )
                print(f"p={p} (conflict acc {acc:.2f}) | {kind} | {layer} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    start = time.time()
    if sys.argv[1] == "separation":
        separation(float(sys.argv[2]), int(sys.argv[3]))
    else:
        counts()
    print(f"({time.time() - start:.0f} s)")
