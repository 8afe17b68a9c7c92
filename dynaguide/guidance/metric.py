"""The DynaGuide guidance metric (Eq. 2 of the paper).

For a predicted outcome latent ẑ and goal latents z⁺_i (desired) and z⁻_j (undesired)::

    d(ẑ) = logsumexp_i(−dist(ẑ, z⁺_i) / σ) − logsumexp_j(−dist(ẑ, z⁻_j) / σ)

``dist`` is the Euclidean norm of the difference over the *whole* flattened ``N·D`` latent (the
paper's choice), or its square (``squared=True``).  Higher d = closer to the positives and further
from the negatives.  Either set may be omitted: positives only gives the first term, negatives only
the second (with its minus sign).  The logsumexp is a soft maximum over goals, so the gradient pulls
towards the *nearest* positive and pushes away from the *nearest* negatives.
"""

from __future__ import annotations

import torch


def goal_distances(pred: torch.Tensor, goals: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Distances between every prediction and every goal.

    Args:
        pred: ``(B, N, D)`` predicted outcome latents.
        goals: ``(K, N, D)`` goal latents in the same space.
        squared: return squared Euclidean distances instead of Euclidean ones.

    Returns:
        ``(B, K)`` distances over the flattened ``N·D`` latent.

    The differences are formed explicitly (``(B, K, N·D)``) rather than through the
    ``‖x‖² + ‖y‖² − 2x·y`` expansion, which loses precision exactly where guidance matters (a
    prediction close to a goal).  The gradient of the Euclidean norm at zero distance is 0.
    """
    diff = pred.flatten(1).unsqueeze(1) - goals.flatten(1).unsqueeze(0)
    if squared:
        return diff.square().sum(dim=-1)
    return torch.linalg.vector_norm(diff, dim=-1)


def _check_goals(name: str, goals: torch.Tensor, pred: torch.Tensor) -> None:
    if goals.dim() != 3:
        raise ValueError(f"{name} must have shape (K, N, D), got {tuple(goals.shape)}")
    if goals.shape[0] == 0:
        raise ValueError(f"{name} is empty (K = 0); pass None to leave that term out")
    if goals.shape[1:] != pred.shape[1:]:
        raise ValueError(
            f"{name} latents have shape (N, D) = {tuple(goals.shape[1:])} but predictions have "
            f"{tuple(pred.shape[1:])}; both must live in the dynamics model's outcome space"
        )


def latent_guidance_metric(
    pred: torch.Tensor,
    positives: torch.Tensor | None,
    negatives: torch.Tensor | None,
    sigma: float,
    squared: bool = False,
    positive_groups: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Eq. 2: soft nearness to the positive goals minus soft nearness to the negative goals.

    Args:
        pred: ``(B, N, D)`` outcome latents predicted by the dynamics model.
        positives: ``(K, N, D)`` desired outcome latents, or None.
        negatives: ``(K', N, D)`` undesired outcome latents, or None.
        sigma: temperature σ > 0, in latent distance units (squared units when ``squared``).
        squared: use squared Euclidean distance (default: plain Euclidean, as the paper).
        positive_groups: None (the paper: one logsumexp over all positives, a soft *or* of the goals), or the
            sizes of consecutive groups of ``positives`` (one per desired behaviour) whose logsumexp terms
            are *summed* — the product of per-behaviour likelihoods, a soft *and* the paper's appendix
            reports failing for multiple objectives; kept for that ablation.

    Returns:
        ``(B,)`` metric d, differentiable w.r.t. ``pred``; higher is more desired.
    """
    if pred.dim() != 3:
        raise ValueError(f"pred must have shape (B, N, D), got {tuple(pred.shape)}")
    if positives is None and negatives is None:
        raise ValueError("the metric needs positive goals, negative goals, or both (got neither)")
    if not (sigma > 0):
        raise ValueError(f"sigma must be positive, got {sigma}")
    d = pred.new_zeros(pred.shape[0])
    if positives is not None:
        _check_goals("positives", positives, pred)
        logits = -goal_distances(pred, positives.to(pred), squared) / sigma
        if positive_groups is None:
            d = d + torch.logsumexp(logits, dim=1)
        else:
            if sum(positive_groups) != positives.shape[0] or min(positive_groups) < 1:
                raise ValueError(f"positive_groups {tuple(positive_groups)} must be positive sizes summing to the "
                                 f"{positives.shape[0]} positives")
            for group in torch.split(logits, list(positive_groups), dim=1):
                d = d + torch.logsumexp(group, dim=1)
    if negatives is not None:
        _check_goals("negatives", negatives, pred)
        d = d - torch.logsumexp(-goal_distances(pred, negatives.to(pred), squared) / sigma, dim=1)
    return d
