"""The guidance signal of one chunk: where the dynamics model predicts it ends, measured against the goals.

For every chunk the policy publishes, the Eq. 2 quantities (:mod:`dynaguide.guidance.metric`) of two action
chunks of the same sampling call:

* the **proposal**: the base policy's denoised estimate at the first guided DDIM step, before any guidance
  gradient (:attr:`dynaguide.guidance.sampler.GuidedSample.proposal`), and
* the **chunk**: the chunk actually returned (guided, or unguided with scale 0),

each as its predicted outcome's distance to the nearest positive and to the nearest negative goal (the
metric's ``dist``: Euclidean over the flattened latent, or its square with ``squared``), the index of those
goals, and the metric d itself (higher = more desired).  "Guidance pulls the prediction towards the goals"
reads off directly: ``chunk.positive_distance < proposal.positive_distance`` and ``chunk.metric >
proposal.metric``.

Cost: one dynamics-model forward pass of batch 2 without gradient, per chunk (the sampler runs
``M × steps`` forward *and* backward passes).  No ROS here; the policy node publishes :meth:`GuidanceSignal.as_pairs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dynaguide.guidance.metric import goal_distances

STAGES: tuple[str, ...] = ("proposal", "chunk")


@dataclass(frozen=True)
class OutcomeScore:
    """One chunk's predicted outcome against the goals (latent distance units of the metric).

    Attributes:
        metric: d of Eq. 2.
        positive_distance: distance to the nearest positive goal (NaN: no positives).
        nearest_positive: its index among the positives (-1: none).
        negative_distance: distance to the nearest negative goal (NaN: no negatives).
        nearest_negative: its index among the negatives (-1: none).
    """

    metric: float
    positive_distance: float
    nearest_positive: int
    negative_distance: float
    nearest_negative: int

    @property
    def nearest_goal(self) -> str:
        """The nearest goal of either kind: ``"positive 3"``, ``"negative 0"`` (``""`` without goals)."""
        pos, neg = self.positive_distance, self.negative_distance
        if math.isnan(pos) and math.isnan(neg):
            return ""
        if math.isnan(neg) or (not math.isnan(pos) and pos <= neg):
            return f"positive {self.nearest_positive}"
        return f"negative {self.nearest_negative}"


@dataclass(frozen=True)
class GuidanceSignal:
    """:class:`OutcomeScore` of the unguided proposal and of the returned chunk, and the guidance's s and σ."""

    proposal: OutcomeScore
    chunk: OutcomeScore
    scale: float
    sigma: float
    squared: bool = False

    def as_pairs(self) -> list[tuple[str, str]]:
        """Flat ``(key, value)`` strings, ``"<stage>.<field>"`` (e.g. ``chunk.positive_distance``), plus
        ``scale``, ``sigma`` and ``distance`` (``euclidean`` / ``squared``); :func:`signal_from_pairs` inverts it."""
        pairs: list[tuple[str, str]] = []
        for stage in STAGES:
            score: OutcomeScore = getattr(self, stage)
            pairs += [(f"{stage}.metric", repr(score.metric)),
                      (f"{stage}.positive_distance", repr(score.positive_distance)),
                      (f"{stage}.nearest_positive", str(score.nearest_positive)),
                      (f"{stage}.negative_distance", repr(score.negative_distance)),
                      (f"{stage}.nearest_negative", str(score.nearest_negative)),
                      (f"{stage}.nearest_goal", score.nearest_goal)]
        return pairs + [("scale", repr(self.scale)), ("sigma", repr(self.sigma)),
                        ("distance", "squared" if self.squared else "euclidean")]


def signal_from_pairs(pairs: dict[str, str]) -> GuidanceSignal | None:
    """The inverse of :meth:`GuidanceSignal.as_pairs` (None when the pairs hold no signal or a malformed one)."""
    try:
        scores = [OutcomeScore(float(pairs[f"{s}.metric"]), float(pairs[f"{s}.positive_distance"]),
                               int(pairs[f"{s}.nearest_positive"]), float(pairs[f"{s}.negative_distance"]),
                               int(pairs[f"{s}.nearest_negative"])) for s in STAGES]
        return GuidanceSignal(scores[0], scores[1], float(pairs["scale"]), float(pairs["sigma"]),
                              pairs.get("distance") == "squared")
    except (KeyError, ValueError):
        return None


def _nearest(pred: torch.Tensor, goals: torch.Tensor | None, squared: bool) -> tuple[list[float], list[int]]:
    if goals is None:
        return [math.nan] * pred.shape[0], [-1] * pred.shape[0]
    dist = goal_distances(pred, goals.to(pred), squared)   # (B, K)
    value, index = dist.min(dim=1)
    return [float(v) for v in value], [int(i) for i in index]


def guidance_signal(objective, proposal: torch.Tensor, chunk: torch.Tensor) -> GuidanceSignal:
    """Score the first sample of ``proposal`` and ``chunk`` (``(B, T, A)`` normalised, as the sampler returns
    them) with ``objective`` (a :class:`~dynaguide.guidance.objectives.DynaGuideObjective`: its dynamics model
    and goals).  One forward pass of batch 2, no gradient.  Raises ``ValueError`` if the result is not finite."""
    pair = torch.cat([proposal[:1], chunk[:1]]).to(chunk)
    goals = objective.guidance_set
    with torch.no_grad():
        pred = objective.predict_outcome(pair)
        metric = goals.metric(pred)
        pos_d, pos_i = _nearest(pred, goals.positives, goals.config.squared)
        neg_d, neg_i = _nearest(pred, goals.negatives, goals.config.squared)
    if not torch.isfinite(metric).all():
        raise ValueError("the guidance signal is not finite")
    scores = [OutcomeScore(float(metric[b]), pos_d[b], pos_i[b], neg_d[b], neg_i[b]) for b in range(2)]
    return GuidanceSignal(scores[0], scores[1], float(goals.config.scale), float(goals.config.sigma),
                          bool(goals.config.squared))
