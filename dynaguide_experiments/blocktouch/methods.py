"""The action samplers compared in BlockTouch, all on one frozen base policy.

Every sampler maps a batch of observations and per-rollout target colours to a raw action chunk::

    sampler(obs, targets, generator) -> actions (B, T, 2) in [-1, 1]

with ``obs = {"rgb": (B, To, 3, S, S) float [0, 1], "proprio": (B, To, 2)}`` and ``targets (B,)`` class
ids.  Rollouts with different targets are handled by splitting the batch per target (each split is
still one batched call of the method core).

* ``base``                 — unguided DDIM (the frozen policy alone);
* ``dynaguide_classifier`` — DynaGuide with the toy outcome classifier (a): weighted log-probabilities,
  +1 for the target colour and ``other_weight`` (−0.33) for each other, guided DDIM with scale s, M;
* ``dynaguide_latent``     — DynaGuide with the latent dynamics model (b) and Eq. 2 on goal-image latents;
* ``sampling``             — GPC-rank: N unguided chunks, keep the best under the *same* classifier metric;
* ``goal_conditioned``     — a separately trained goal-conditioned policy given one goal image.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import torch

from dynaguide.baselines import goal_conditioned_sample, sampling_baseline
from dynaguide.diffusion import DDIMConfig
from dynaguide.guidance import ClassifierObjective, DynaGuideObjective, GoalLatents, guided_ddim_sample

METHOD_NAMES: tuple[str, ...] = ("base", "dynaguide_classifier", "dynaguide_latent", "sampling", "goal_conditioned")


def class_weights(target: int, num_classes: int = 4, other_weight: float = -0.33) -> torch.Tensor:
    """``(C,)`` guidance weights: +1 for ``target``, ``other_weight`` for every other class."""
    if not 0 <= target < num_classes:
        raise ValueError(f"target class {target} outside [0, {num_classes})")
    w = torch.full((num_classes,), float(other_weight))
    w[target] = 1.0
    return w


def _split_by_target(obs: dict[str, torch.Tensor], targets: np.ndarray,
                     run: Callable[[dict[str, torch.Tensor], int], torch.Tensor]) -> torch.Tensor:
    """Run ``run(sub_obs, target)`` per distinct target and reassemble ``(B, T, A)`` in input order."""
    targets = np.asarray(targets)
    out: torch.Tensor | None = None
    for t in np.unique(targets):
        sel = torch.from_numpy(np.flatnonzero(targets == t))
        sub = {k: v[sel] for k, v in obs.items()}
        actions = run(sub, int(t))
        if out is None:
            out = torch.empty((len(targets),) + tuple(actions.shape[1:]), dtype=actions.dtype)
        out[sel] = actions
    assert out is not None
    return out


def current_frame(obs: dict[str, torch.Tensor], image_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The latest image ``(B, 3, S, S)`` and proprio ``(B, 2)`` of the observation window."""
    return obs[image_key][:, -1], obs["proprio"][:, -1]


def classifier_objective(classifier: torch.nn.Module, image: torch.Tensor, proprio: torch.Tensor, target: int,
                         other_weight: float) -> ClassifierObjective:
    """The toy metric for one target colour (the objective encodes the image once for the whole chunk)."""
    return ClassifierObjective(classifier, image, proprio, class_weights(target, other_weight=other_weight))


@dataclass
class BaseSampler:
    policy: torch.nn.Module
    ddim: DDIMConfig

    def __call__(self, obs, targets, generator):
        with torch.no_grad():
            cond = self.policy.encode_observation(obs)
        sample = guided_ddim_sample(self.policy, cond, None, scale=0.0, ddim=self.ddim, generator=generator)
        return self.policy.unnormalize_actions(sample.actions)


@dataclass
class ClassifierGuidedSampler:
    """DynaGuide (a): guided DDIM with :class:`ClassifierObjective` (weights per target)."""

    policy: torch.nn.Module
    classifier: torch.nn.Module
    ddim: DDIMConfig
    scale: float = 0.5
    stochastic_steps: int = 4
    stochastic_mode: str = "repeat"
    other_weight: float = -0.33
    image_key: str = "rgb"

    def __call__(self, obs, targets, generator):
        def run(sub, target):
            with torch.no_grad():
                cond = self.policy.encode_observation(sub)
            image, proprio = current_frame(sub, self.image_key)
            objective = classifier_objective(self.classifier, image, proprio, target, self.other_weight)
            sample = guided_ddim_sample(self.policy, cond, objective, scale=self.scale, ddim=self.ddim,
                                        stochastic_steps=self.stochastic_steps,
                                        stochastic_mode=self.stochastic_mode, generator=generator)
            return self.policy.unnormalize_actions(sample.actions)
        return _split_by_target(obs, targets, run)


@dataclass
class LatentGuidedSampler:
    """DynaGuide (b): guided DDIM with Eq. 2 on the latent dynamics model's predicted final-frame latent."""

    policy: torch.nn.Module
    dynamics: torch.nn.Module
    embedder: Callable[[torch.Tensor], torch.Tensor]
    goal_sets: dict[int, GoalLatents]
    ddim: DDIMConfig
    image_key: str = "rgb"

    def __call__(self, obs, targets, generator):
        def run(sub, target):
            if target not in self.goal_sets:
                raise ValueError(f"no goal set for target class {target} (have {sorted(self.goal_sets)})")
            gs = self.goal_sets[target]
            with torch.no_grad():
                cond = self.policy.encode_observation(sub)
                image, proprio = current_frame(sub, self.image_key)
                tokens = self.embedder(image)
            # the policy's chunk starts at the current step, so the dynamics chunk starts at offset 0
            objective = DynaGuideObjective(self.dynamics, tokens, proprio, gs, action_offset=0,
                                           dynamics_horizon=self.dynamics.horizon)
            sample = guided_ddim_sample(self.policy, cond, objective, scale=gs.config.scale, ddim=self.ddim,
                                        stochastic_steps=gs.config.stochastic_steps,
                                        stochastic_mode=gs.config.stochastic_mode, generator=generator)
            return self.policy.unnormalize_actions(sample.actions)
        return _split_by_target(obs, targets, run)


@dataclass
class SamplingBaselineSampler:
    """GPC-rank with N candidates, ranked by the classifier metric of DynaGuide (a)."""

    policy: torch.nn.Module
    classifier: torch.nn.Module
    ddim: DDIMConfig
    num_samples: int = 10
    other_weight: float = -0.33
    image_key: str = "rgb"

    def __call__(self, obs, targets, generator):
        def run(sub, target):
            with torch.no_grad():
                cond = self.policy.encode_observation(sub)
            image, proprio = current_frame(sub, self.image_key)
            objective = classifier_objective(self.classifier, image, proprio, target, self.other_weight)
            result = sampling_baseline(self.policy, cond, objective, num_samples=self.num_samples, ddim=self.ddim,
                                       generator=generator)
            return self.policy.unnormalize_actions(result.actions)
        return _split_by_target(obs, targets, run)


@dataclass
class GoalConditionedSampler:
    """Goal-conditioned policy: the evaluator puts each rollout's goal image in ``obs["goal_image"] (B, 3, S, S)``."""

    policy: torch.nn.Module
    ddim: DDIMConfig
    needs_goal_images = True

    def __call__(self, obs, targets, generator):
        if "goal_image" not in obs:
            raise ValueError("the goal-conditioned sampler needs obs['goal_image'] (B, 3, S, S)")
        policy_obs = {k: v for k, v in obs.items() if k != "goal_image"}
        sample = goal_conditioned_sample(self.policy, policy_obs, obs["goal_image"], ddim=self.ddim,
                                         generator=generator)
        return self.policy.unnormalize_actions(sample.actions)
