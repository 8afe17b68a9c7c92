"""The small set of protocols the method is written against.

Shapes use B = batch, T = prediction horizon (action steps in a chunk), A = action dimension,
N = latent tokens, D = latent width.  Actions handed to/returned by a policy are *normalised*
to [-1, 1]; un-normalising is the policy's own business (``DiffusionPolicy.unnormalize_actions``).

* :class:`NoisePredictionPolicy` — any epsilon-prediction diffusion policy.  Observation conditioning
  is computed once per chunk (``encode_observation``) and then reused by every denoising step
  (``predict_noise``), so an off-the-shelf policy can be steered by wrapping it in these two calls.
* :class:`GuidanceObjective` — a differentiable score of a *noisy* action chunk, one value per sample
  (higher = more desired).  DynaGuide's objective is Eq. 2 of the paper evaluated on the latent
  dynamics model's prediction; the position-guidance (ITPS) baseline and the toy classifier use the
  same protocol, so one sampler serves all of them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

Observation = dict[str, torch.Tensor]
"""Batched observation: camera images ``(B, To, 3, H, W)`` float in [0, 1], ``proprio (B, To, P)``,
or precomputed embeddings; keys are named in the policy's config."""


@runtime_checkable
class NoisePredictionPolicy(Protocol):
    """Epsilon-prediction diffusion policy, split so conditioning is computed once per chunk."""

    horizon: int
    """T, number of action steps predicted per chunk."""
    action_dim: int
    """A, dimension of one action (normalised to [-1, 1])."""

    def encode_observation(self, obs: Observation) -> Any:
        """Compute the conditioning for a batch of observations (anything ``predict_noise`` accepts)."""

    def predict_noise(self, noisy_actions: torch.Tensor, timesteps: torch.Tensor, cond: Any) -> torch.Tensor:
        """``noisy_actions (B, T, A)``, ``timesteps (B,)`` long → predicted noise ``(B, T, A)``.

        Must be differentiable w.r.t. ``noisy_actions`` is *not* required: guidance differentiates the
        objective only, never the policy (classifier guidance).
        """


@runtime_checkable
class GuidanceObjective(Protocol):
    """Differentiable score of noisy action chunks: ``actions (B, T, A)`` → ``(B,)``; higher is better.

    Implementations must treat every sample independently (sample b's score depends only on
    ``actions[b]``), so a batched gradient equals the per-sample gradients.
    """

    def __call__(self, noisy_actions: torch.Tensor) -> torch.Tensor: ...
