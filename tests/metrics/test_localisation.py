import numpy as np
import pytest
import torch

from probelens.metrics import mask_area, pointing_game, relevance_mass, relevance_rank_accuracy


def masks_and_maps(n=5, h=9, w=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(n, 1, h, w, generator=g)
    masks = torch.rand(n, 1, h, w, generator=g) > 0.7
    return maps, masks


def test_relevance_mass_matches_a_hand_loop():
    maps, masks = masks_and_maps()
    ours = relevance_mass(maps, masks)
    for i in range(maps.shape[0]):
        r = np.maximum(maps[i, 0].numpy(), 0)
        m = masks[i, 0].numpy()
        assert ours[i].item() == pytest.approx(r[m].sum() / r.sum(), rel=1e-5)


def test_uniform_map_scores_the_mask_area_and_zero_map_scores_zero():
    _, masks = masks_and_maps()
    uniform = torch.ones(masks.shape)
    torch.testing.assert_close(relevance_mass(uniform, masks), mask_area(masks))
    assert relevance_mass(torch.zeros(masks.shape), masks).abs().sum() == 0


def test_relevance_mass_resizes_low_resolution_maps():
    masks = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    masks[..., :4, :] = True
    low = torch.tensor([[[[1.0], [0.0]]]]).expand(1, 1, 2, 1).reshape(1, 1, 2, 1)
    assert relevance_mass(low, masks).item() > 0.8


def test_rank_accuracy_matches_a_hand_loop():
    maps, masks = masks_and_maps(seed=3)
    ours = relevance_rank_accuracy(maps, masks)
    for i in range(maps.shape[0]):
        r = maps[i, 0].flatten().numpy()
        m = masks[i, 0].flatten().numpy()
        k = int(m.sum())
        top = np.argsort(-r, kind="stable")[:k]
        assert ours[i].item() == pytest.approx(m[top].mean())


def test_pointing_game():
    masks = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    masks[:, :, 0, 0] = True
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, 0, 0] = 5
    maps[1, 0, 3, 3] = 5
    assert pointing_game(maps, masks).tolist() == [1.0, 0.0]


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[N,1,H,W\]"):
        relevance_mass(torch.rand(2, 3, 4, 4), torch.ones(2, 1, 4, 4, dtype=torch.bool))
