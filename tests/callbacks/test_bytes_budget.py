"""max_bytes_per_firing: the pictures of a firing shrink until the PNG bytes fit the budget."""

import pytest
import torch

from lit import LitClassifier, loaders, read_events, trainer
from probelens import GradCAMMonitor, ProbeSet

PROBE = ProbeSet(torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1] * 4))


def bytes_per_step(log_dir) -> dict[int, int]:
    acc = read_events(log_dir)
    out: dict[int, int] = {}
    for tag in acc.Tags()["images"]:
        for e in acc.Images(tag):
            out[e.step] = out.get(e.step, 0) + len(e.encoded_image_string)
    return dict(sorted(out.items()))


def run(tmp_path, **kw):
    train, val = loaders(n=192, batch_size=16)  # 12 firings
    tr = trainer(tmp_path, [GradCAMMonitor(PROBE, layers="all", every_n_steps=1, filmstrip=False, **kw)], max_epochs=1)
    tr.fit(LitClassifier(), train, val)
    return bytes_per_step(tr.logger.log_dir)


def test_a_byte_budget_shrinks_the_pictures_until_they_fit(tmp_path):
    free = run(tmp_path / "free")
    budget = int(0.4 * min(free.values()))
    capped = run(tmp_path / "capped", max_bytes_per_firing=budget)
    assert list(capped) == list(free)  # every firing still writes
    later = list(capped.values())[-4:]  # settled: halving the side until a firing fits
    assert max(later) <= 1.25 * budget and max(later) < 0.5 * min(free.values()), (budget, capped)
    assert next(iter(capped.values())) == free[0]  # the first firing is drawn as usual, then measured


def test_the_budget_is_checked_at_construction():
    with pytest.raises(ValueError, match="max_bytes_per_firing"):
        GradCAMMonitor(PROBE, max_bytes_per_firing=10)
