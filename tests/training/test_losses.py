"""BDoU loss against a direct transcription of the official formula (docs/official_code.md §4) on hand-made cases."""

import numpy as np
import pytest
import torch

from bundle.training.losses import BoundaryDoULoss, bdou_class_terms, make_loss


def _direct_term(p, t):
    """Official BoundaryDoULoss._adaptive_size, in numpy, for one class over the whole batch."""
    padded = np.pad(t, ((0, 0), (1, 1), (1, 1)))
    cross = (
        padded[:, 1:-1, 1:-1] + padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    )
    y = cross * t
    y[y == 5] = 0
    c, s, eps = np.count_nonzero(y), np.count_nonzero(t), 1e-5
    alpha = min(2 * (1 - (c + eps) / (s + eps)) - 1, 0.8)
    inter, y_sum, z_sum = (p * t).sum(), (t * t).sum(), (p * p).sum()
    return (z_sum + y_sum - 2 * inter + eps) / (z_sum + y_sum - (1 + alpha) * inter + eps)


def _direct_loss(logits, labels, k):
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    return np.mean([_direct_term(p[:, c], (labels == c).astype(np.float64)) for c in range(k)])


def test_hand_square_boundary_and_alpha_cap():
    # a 4×4 square: 12 boundary pixels of 16 → α = 1 − 24/16 < 0; a 10×10 square: 36/100 → α = 0.28
    t = np.zeros((1, 12, 12))
    t[0, 1:11, 1:11] = 1
    p = np.full_like(t, 0.5)
    got = bdou_class_terms(torch.tensor(p)[:, None], torch.tensor(t)[:, None])[0].item()
    assert got == pytest.approx(_direct_term(p, t), rel=1e-9)
    alpha = 1 - 2 * 36 / 100
    inter, z, y = 50.0, 0.25 * 144, 100.0
    assert got == pytest.approx((z + y - 2 * inter) / (z + y - (1 + alpha) * inter), rel=1e-5)


def test_alpha_capped_at_point_eight():
    # a full 30×30 image: zero padding makes the rim the only boundary: C = 116, S = 900 → 1 − 2C/S = 0.742;
    # a 60×60 image: C = 236, S = 3600 → 0.869 → capped to 0.8
    t = np.ones((1, 60, 60))
    p = np.full_like(t, 0.7)
    got = bdou_class_terms(torch.tensor(p)[:, None], torch.tensor(t)[:, None])[0].item()
    inter, z, y = 0.7 * 3600, 0.49 * 3600, 3600.0
    assert got == pytest.approx((z + y - 2 * inter) / (z + y - 1.8 * inter), rel=1e-5)
    assert got == pytest.approx(_direct_term(p, t), rel=1e-9)


def test_absent_class_contributes_one_and_batch_pooling():
    t = np.zeros((2, 8, 8))
    p = np.random.default_rng(0).random((2, 8, 8))
    assert bdou_class_terms(torch.tensor(p)[:, None], torch.tensor(t)[:, None])[0].item() == pytest.approx(1.0)
    # pooled over the batch, not the mean of per-image losses
    t[0, 2:6, 2:6] = 1
    pooled = bdou_class_terms(torch.tensor(p)[:, None], torch.tensor(t)[:, None])[0].item()
    assert pooled == pytest.approx(_direct_term(p, t), rel=1e-9)
    per_image = np.mean([_direct_term(p[i : i + 1], t[i : i + 1]) for i in range(2)])
    assert abs(pooled - per_image) > 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_matches_direct_formula(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(3, 9, 16, 16))
    labels = np.zeros((3, 16, 16), np.int64)
    labels[:, 3:9, 4:12] = 5
    labels[1, 10:14, 2:6] = 1
    labels[2, 0:16, 12:16] = 8  # touches the image border
    loss = BoundaryDoULoss()(torch.tensor(logits), torch.tensor(labels)[:, None].float())
    assert loss.item() == pytest.approx(_direct_loss(logits, labels, 9), rel=1e-7)


def test_binary_sigmoid_form_and_gradient():
    rng = np.random.default_rng(3)
    logits = torch.tensor(rng.normal(size=(2, 1, 12, 12)), requires_grad=True)
    mask = np.zeros((2, 12, 12))
    mask[:, 3:9, 3:9] = 1
    loss = BoundaryDoULoss(sigmoid=True)(logits, torch.tensor(mask)[:, None])
    p = 1 / (1 + np.exp(-logits.detach().numpy()[:, 0]))
    assert loss.item() == pytest.approx(_direct_term(p, mask), rel=1e-7)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_errors_and_options():
    with pytest.raises(ValueError, match="1 logit"):
        BoundaryDoULoss(sigmoid=True)(torch.zeros(1, 2, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="loss name"):
        make_loss("focal")
    x, y = torch.randn(2, 9, 8, 8), torch.randint(0, 9, (2, 1, 8, 8)).float()
    for name in ("bdou", "dice_ce", "dice", "ce"):
        assert torch.isfinite(make_loss(name)(x, y))
