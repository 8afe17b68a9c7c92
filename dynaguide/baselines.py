"""Baselines the paper compares DynaGuide against, on the same policy/objective interfaces.

* :func:`sampling_baseline` — GPC-style ranking: draw N unguided chunks per observation and keep the
  one the objective scores best.  With a :class:`~dynaguide.guidance.DynaGuideObjective` this is the
  same metric d as DynaGuide, *negative goals included* (the official baseline ignored them).
* :func:`position_guidance_sample` — ITPS position guidance: the guided sampler with a
  :class:`~dynaguide.guidance.PositionGuidanceObjective` pulling the end-effector path to a point.
* :func:`goal_conditioned_sample` — sample a goal-conditioned ``DiffusionPolicy``
  (``goal_conditioned=True``) given a goal image; no guidance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Sequence

import torch

from dynaguide.diffusion import DDIMConfig
from dynaguide.guidance.objectives import PositionGuidanceObjective
from dynaguide.guidance.sampler import (
    GeneratorArg,
    GuidedSample,
    StochasticMode,
    _infer_batch_size,
    _policy_device_dtype,
    guided_ddim_sample,
    sample_noise,
)
from dynaguide.interfaces import GuidanceObjective, NoisePredictionPolicy, Observation


def repeat_condition(cond: Any, repeats: int) -> Any:
    """Repeat every tensor in ``cond`` ``repeats`` times along the batch (``repeat_interleave``, dim 0).

    Sample b of the input becomes samples ``b·repeats … b·repeats + repeats − 1``.  Tensors, dicts,
    lists, tuples (nested) and None are supported; 0-d tensors and non-tensors are passed through.
    """
    if isinstance(cond, torch.Tensor):
        return cond.repeat_interleave(repeats, dim=0) if cond.dim() > 0 else cond
    if isinstance(cond, dict):
        return {key: repeat_condition(value, repeats) for key, value in cond.items()}
    if isinstance(cond, tuple):
        return tuple(repeat_condition(value, repeats) for value in cond)
    if isinstance(cond, list):
        return [repeat_condition(value, repeats) for value in cond]
    return cond


@dataclass
class SamplingBaselineResult:
    """Result of :func:`sampling_baseline`.

    Attributes:
        actions: ``(B, T, A)`` the best candidate per observation (normalised).
        scores: ``(B, N)`` objective of every candidate.
        best_index: ``(B,)`` index of the chosen candidate.
        candidates: ``(B, N, T, A)`` all candidates.
    """

    actions: torch.Tensor
    scores: torch.Tensor
    best_index: torch.Tensor
    candidates: torch.Tensor


def sampling_baseline(
    policy: NoisePredictionPolicy,
    cond: Any,
    objective: GuidanceObjective,
    *,
    num_samples: int,
    ddim: DDIMConfig | None = None,
    initial_noise: torch.Tensor | None = None,
    generator: GeneratorArg = None,
    batch_size: int | None = None,
) -> SamplingBaselineResult:
    """GPC-rank: N unguided samples per observation, keep the best by ``objective``.

    Args:
        policy, cond: the base policy and its conditioning for B observations.
        objective: scores ``(B, T, A)`` → ``(B,)`` for those B observations (e.g. DynaGuide's d with
            positives and negatives); candidates are scored one slice ``[:, n]`` at a time so the
            same objective object serves all N.
        num_samples: N ≥ 1.
        initial_noise: ``(B, N, T, A)`` starting noise, or None to draw it from ``generator``.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    horizon, action_dim = policy.horizon, policy.action_dim
    if initial_noise is None:
        batch = batch_size if batch_size is not None else _infer_batch_size(cond)
        if batch is None:
            raise ValueError("cannot tell the batch size from cond; pass batch_size or initial_noise")
        device, dtype = _policy_device_dtype(policy)
        initial_noise = sample_noise((batch, num_samples, horizon, action_dim), generator, device, dtype)
    expected = (initial_noise.shape[0], num_samples, horizon, action_dim)
    if tuple(initial_noise.shape) != expected:
        raise ValueError(f"initial_noise must have shape (B, N, T, A) = {expected}, got {tuple(initial_noise.shape)}")
    batch = initial_noise.shape[0]
    flat_noise = initial_noise.reshape(batch * num_samples, horizon, action_dim)
    sample = guided_ddim_sample(
        policy, repeat_condition(cond, num_samples), None, scale=0.0, ddim=ddim, initial_noise=flat_noise
    )
    candidates = sample.actions.reshape(batch, num_samples, horizon, action_dim)
    with torch.no_grad():
        scores = torch.stack([objective(candidates[:, n]) for n in range(num_samples)], dim=1)
    if scores.shape != (batch, num_samples):
        raise ValueError(f"objective must return (B,) = ({batch},) per candidate slice, "
                         f"got scores {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("objective returned NaN/inf scores for some candidates")
    best = scores.argmax(dim=1)
    actions = candidates[torch.arange(batch, device=candidates.device), best]
    return SamplingBaselineResult(actions=actions, scores=scores.detach(), best_index=best, candidates=candidates)


def position_guidance_sample(
    policy: NoisePredictionPolicy,
    cond: Any,
    *,
    target: torch.Tensor | Sequence[float],
    start_position: torch.Tensor | Sequence[float],
    scale: float,
    unnormalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ddim: DDIMConfig | None = None,
    stochastic_steps: int = 1,
    stochastic_mode: StochasticMode = "repeat",
    initial_noise: torch.Tensor | None = None,
    generator: GeneratorArg = None,
    **objective_kwargs: Any,
) -> GuidedSample:
    """ITPS baseline: guided DDIM towards a target end-effector position.

    ``unnormalize`` defaults to ``policy.unnormalize_actions`` when the policy has one; extra keyword
    arguments (``position_dims``, ``step_scale``, ``actions_are_deltas``, ``reduction``) go to
    :class:`~dynaguide.guidance.PositionGuidanceObjective`.
    """
    if unnormalize is None:
        unnormalize = getattr(policy, "unnormalize_actions", None)
    objective = PositionGuidanceObjective(target, start_position, unnormalize, **objective_kwargs)
    return guided_ddim_sample(
        policy,
        cond,
        objective,
        scale=scale,
        ddim=ddim,
        stochastic_steps=stochastic_steps,
        stochastic_mode=stochastic_mode,
        initial_noise=initial_noise,
        generator=generator,
    )


def goal_conditioned_sample(
    policy: Any,
    obs: Observation,
    goal_image: torch.Tensor,
    *,
    ddim: DDIMConfig | None = None,
    initial_noise: torch.Tensor | None = None,
    generator: GeneratorArg = None,
) -> GuidedSample:
    """Sample a goal-conditioned ``DiffusionPolicy`` (no guidance).

    Args:
        policy: a ``DiffusionPolicy`` built with ``goal_conditioned=True``.
        obs: the usual observation dict (cameras ``(B, To, 3, H, W)``, ``proprio (B, To, P)``).
        goal_image: ``(B, 3, H, W)`` float in [0, 1] (or ``(1, 3, H, W)``, broadcast).
    """
    cfg = getattr(policy, "cfg", None) or getattr(policy, "config", None)
    goal_conditioned = getattr(policy, "goal_conditioned", None)
    if goal_conditioned is None and cfg is not None:
        goal_conditioned = getattr(cfg, "goal_conditioned", None)
    if not goal_conditioned:
        raise ValueError("goal_conditioned_sample needs a policy built with goal_conditioned=True")
    if goal_image.dim() != 4 or goal_image.shape[1] != 3:
        raise ValueError(f"goal_image must be (B, 3, H, W), got {tuple(goal_image.shape)}")
    batch = _infer_batch_size(dict(obs))
    if batch is not None and goal_image.shape[0] == 1 and batch > 1:
        goal_image = goal_image.expand(batch, -1, -1, -1)
    with torch.no_grad():
        cond = policy.encode_observation({**obs, "goal_image": goal_image})
    return guided_ddim_sample(
        policy, cond, None, scale=0.0, ddim=ddim, initial_noise=initial_noise, generator=generator, batch_size=batch
    )
