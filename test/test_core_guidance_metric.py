"""Eq. 2 metric: known answers by hand, finite-difference gradients, and bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch

from dynaguide.guidance.metric import goal_distances, latent_guidance_metric


def hand_metric(pred, pos, neg, sigma, squared):
    """Eq. 2 with Python floats and explicit loops, per sample."""
    def dist(a, b):
        sq = sum((x - y) ** 2 for x, y in zip(a.flatten().tolist(), b.flatten().tolist()))
        return sq if squared else math.sqrt(sq)

    def lse(values):
        m = max(values)
        return m + math.log(sum(math.exp(v - m) for v in values))

    out = []
    for b in range(pred.shape[0]):
        d = 0.0
        if pos is not None:
            d += lse([-dist(pred[b], p) / sigma for p in pos])
        if neg is not None:
            d -= lse([-dist(pred[b], n) / sigma for n in neg])
        out.append(d)
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture
def small():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    pos = torch.randn(5, 2, 4, generator=g, dtype=torch.float64)
    neg = torch.randn(2, 2, 4, generator=g, dtype=torch.float64)
    return pred, pos, neg


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("which", ["pos", "neg", "both"])
def test_metric_matches_hand_computation(small, squared, which):
    pred, pos, neg = small
    pos = pos if which in ("pos", "both") else None
    neg = neg if which in ("neg", "both") else None
    sigma = 0.7
    got = latent_guidance_metric(pred, pos, neg, sigma, squared=squared)
    assert got.shape == (3,)
    torch.testing.assert_close(got, hand_metric(pred, pos, neg, sigma, squared), rtol=1e-12, atol=1e-12)


def test_metric_tiny_exact_values():
    # one 1x2 latent at the origin; positive at distance 3 (3,0)... and 4; negative at distance 5.
    pred = torch.zeros(1, 1, 2, dtype=torch.float64)
    pos = torch.tensor([[[3.0, 0.0]], [[0.0, 4.0]]], dtype=torch.float64)
    neg = torch.tensor([[[3.0, 4.0]]], dtype=torch.float64)
    expected = math.log(math.exp(-3 / 2) + math.exp(-4 / 2)) - (-5 / 2)
    assert latent_guidance_metric(pred, pos, neg, sigma=2.0).item() == pytest.approx(expected, abs=1e-12)
    expected_sq = math.log(math.exp(-9 / 2) + math.exp(-16 / 2)) - (-25 / 2)
    got_sq = latent_guidance_metric(pred, pos, neg, sigma=2.0, squared=True).item()
    assert got_sq == pytest.approx(expected_sq, abs=1e-12)
    assert goal_distances(pred, pos).tolist() == [[3.0, 4.0]]


def test_norm_is_over_flattened_tokens_not_per_token():
    pred = torch.zeros(1, 2, 1, dtype=torch.float64)
    goal = torch.tensor([[[3.0], [4.0]]], dtype=torch.float64)  # two tokens, joint distance 5 (not 3 + 4)
    assert latent_guidance_metric(pred, goal, None, sigma=1.0).item() == pytest.approx(-5.0)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("which", ["pos", "neg", "both"])
def test_metric_gradient_matches_finite_differences(small, squared, which):
    pred, pos, neg = small
    pos = pos if which in ("pos", "both") else None
    neg = neg if which in ("neg", "both") else None
    pred = pred.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: latent_guidance_metric(p, pos, neg, 0.9, squared=squared), (pred,))


def test_batched_equals_per_sample(small):
    pred, pos, neg = small
    full = latent_guidance_metric(pred, pos, neg, 1.3)
    singles = torch.cat([latent_guidance_metric(pred[b : b + 1], pos, neg, 1.3) for b in range(3)])
    torch.testing.assert_close(full, singles, rtol=0, atol=1e-14)


def test_gradient_points_towards_positive_and_away_from_negative():
    pred = torch.zeros(1, 1, 2, requires_grad=True)
    pos = torch.tensor([[[1.0, 0.0]]])
    neg = torch.tensor([[[0.0, 1.0]]])
    latent_guidance_metric(pred, pos, neg, 1.0).sum().backward()
    assert pred.grad[0, 0, 0] > 0 and pred.grad[0, 0, 1] < 0


def test_bad_inputs_raise_clear_errors(small):
    pred, pos, neg = small
    with pytest.raises(ValueError, match="neither"):
        latent_guidance_metric(pred, None, None, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        latent_guidance_metric(pred, pos, None, 0.0)
    with pytest.raises(ValueError, match="outcome space"):
        latent_guidance_metric(pred, torch.zeros(2, 3, 4, dtype=torch.float64), None, 1.0)
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        latent_guidance_metric(pred[0], pos, None, 1.0)
    with pytest.raises(ValueError, match="empty"):
        latent_guidance_metric(pred, pos[:0], None, 1.0)


def test_positive_groups_sum_one_logsumexp_per_group(small):
    pred, pos, _ = small
    a, b = pos[:1], pos[1:]
    summed = latent_guidance_metric(pred, pos, None, 2.0, positive_groups=(1, pos.shape[0] - 1))
    expected = latent_guidance_metric(pred, a, None, 2.0) + latent_guidance_metric(pred, b, None, 2.0)
    torch.testing.assert_close(summed, expected)
    assert not torch.allclose(summed, latent_guidance_metric(pred, pos, None, 2.0))   # not the paper's soft "or"
    with pytest.raises(ValueError, match="positive_groups"):
        latent_guidance_metric(pred, pos, None, 2.0, positive_groups=(1, 1, 5))


def test_guidance_set_checks_its_positive_groups(small):
    from dynaguide.guidance.goals import GoalLatents

    _, pos, neg = small
    with pytest.raises(ValueError, match="positive_groups"):
        GoalLatents(pos, neg, positive_groups=(pos.shape[0] + 1,))
    with pytest.raises(ValueError, match="positive_groups"):
        GoalLatents(None, neg, positive_groups=(1,))
    assert GoalLatents(pos, None, positive_groups=(1, pos.shape[0] - 1)).positive_groups == (1, pos.shape[0] - 1)
