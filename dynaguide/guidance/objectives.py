"""Guidance objectives: differentiable scores of noisy action chunks, ``(B, T, A)`` → ``(B,)``.

All of them implement :class:`dynaguide.interfaces.GuidanceObjective` (higher = more desired) and
score every sample independently, so the batched sampler's gradients are per-sample gradients.
The observation-dependent inputs (tokens, proprio, images) are fixed when the objective is built —
once per chunk — and may have batch 1 (broadcast to every sample) or batch B.

* :class:`DynaGuideObjective` — Eq. 2 on the latent dynamics model's predicted outcome.
* :class:`ClassifierObjective` — toy-experiment variant: weighted log-probabilities of outcome classes.
* :class:`PositionGuidanceObjective` — ITPS baseline: pull the integrated end-effector path to a point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from dynaguide.guidance.goals import GoalLatents


def broadcast_batch(name: str, tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """Return ``tensor`` with leading dimension ``batch`` (expanding a leading 1)."""
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    raise ValueError(f"{name} has batch {tensor.shape[0]} but the actions have batch {batch} (expected {batch} or 1)")


def action_transform_for(policy, dynamics) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """How the policy's chunks enter the dynamics model for guidance.

    None when both normalise actions alike (the same min/max).  Otherwise — a policy and a dynamics model fitted
    on different data (e.g. a LeRobot policy, or the shipped play policy and a dynamics model trained on a subset
    of its data) — the map policy-normalised → raw (``policy.unnormalize_actions``) → the dynamics model's
    normalised space, ``(B, T, A)`` → ``(B, T, A)``, differentiable (guidance takes its gradient through it).
    Raises ``ValueError`` when the horizon or action dimension differ or a normaliser is not fitted: those cannot
    be mapped.
    """
    from dynaguide.dynamics import check_action_space

    check_action_space(dynamics, _ChunkShape(policy.horizon, policy.action_dim))   # never mapped: raises
    try:
        check_action_space(dynamics, policy)    # the same min/max too
        return None
    except ValueError:
        theirs = getattr(policy, "action_normalizer", None)
        if not (dynamics.action_normalizer.is_fitted and theirs is not None and theirs.is_fitted):
            raise
    normalizer = dynamics.action_normalizer

    def transform(actions: torch.Tensor) -> torch.Tensor:
        return normalizer.normalize(policy.unnormalize_actions(actions))

    return transform


class _ChunkShape:
    """A policy's chunk shape without its normaliser (a shape-only :func:`check_action_space`)."""

    def __init__(self, horizon: int, action_dim: int) -> None:
        self.horizon, self.action_dim = horizon, action_dim


def chunk_for_dynamics(actions: torch.Tensor, offset: int, length: int) -> torch.Tensor:
    """The part of a policy chunk the dynamics model sees: ``actions[:, offset:offset+length]``.

    ``offset`` is the index of the *current* step in the policy's chunk: the policy's
    ``action_offset``.  This project's :class:`~dynaguide.policy.DiffusionPolicy` predicts chunks that
    start at the current step, so its ``action_offset`` is 0 (the whole chunk, no shift; that is what
    :class:`~dynaguide.guided_runner.GuidedPolicyRunner` passes).  Only a diffusion_policy-style model whose
    chunk starts To − 1 steps in the past needs ``offset = To − 1``.  Missing steps at the end are
    padded by repeating the last action — the same rule as dynamics-model training.

    Args:
        actions: ``(B, T, A)``; offset: first step to keep (0 ≤ offset < T); length: output steps.

    Returns:
        ``(B, length, A)``, differentiable w.r.t. ``actions``.
    """
    if not 0 <= offset < actions.shape[1]:
        raise ValueError(f"action offset {offset} outside the chunk of {actions.shape[1]} steps")
    chunk = actions[:, offset : offset + length]
    missing = length - chunk.shape[1]
    if missing > 0:
        chunk = torch.cat([chunk, chunk[:, -1:].expand(-1, missing, -1)], dim=1)
    return chunk


class DynaGuideObjective:
    """d(ẑ) of Eq. 2 with ẑ = h(φ(o_t), proprio, a) predicted by the latent dynamics model.

    Args:
        dynamics: ``LatentDynamicsModel``: ``(tokens (B, N, D), proprio (B, P), actions (B, T, A))``
            → ``(B, N_out, D_out)`` in the same space as ``guidance_set``'s latents.
        obs_tokens: ``(1 or B, N, D)`` embedder tokens of the current observation (computed once).
        proprio: ``(1 or B, P)`` current proprioception, raw units.
        guidance_set: goals and σ / distance kind.
        action_offset: first chunk step fed to the dynamics model: the policy's ``action_offset``
            (0 for this project's DiffusionPolicy; see :func:`chunk_for_dynamics`).
        dynamics_horizon: chunk length the dynamics model takes (default: the policy's T).
        action_transform: optional map applied to the (normalised) chunk before the dynamics model,
            e.g. ``policy.unnormalize_actions`` if the dynamics model was trained on raw actions.
    """

    def __init__(
        self,
        dynamics: Callable[..., torch.Tensor],
        obs_tokens: torch.Tensor,
        proprio: torch.Tensor,
        guidance_set: GoalLatents,
        *,
        action_offset: int = 0,
        dynamics_horizon: int | None = None,
        action_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if obs_tokens.dim() != 3:
            raise ValueError(f"obs_tokens must be (B, N, D), got {tuple(obs_tokens.shape)}")
        if proprio.dim() != 2:
            raise ValueError(f"proprio must be (B, P), got {tuple(proprio.shape)}")
        if obs_tokens.shape[0] != proprio.shape[0] and 1 not in (obs_tokens.shape[0], proprio.shape[0]):
            raise ValueError(f"obs_tokens batch {obs_tokens.shape[0]} and proprio batch {proprio.shape[0]} differ")
        if not (torch.isfinite(obs_tokens).all() and torch.isfinite(proprio).all()):
            raise ValueError("obs_tokens/proprio contain NaN or inf")
        if action_offset < 0:
            raise ValueError(f"action_offset must be >= 0, got {action_offset}")
        self.dynamics = dynamics
        self.obs_tokens = obs_tokens.detach()
        self.proprio = proprio.detach()
        self.guidance_set = guidance_set
        self.action_offset = action_offset
        self.dynamics_horizon = dynamics_horizon
        self.action_transform = action_transform
        # A LatentDynamicsModel splits off the action-independent part: computed once here, not at every
        # guided step (it is fixed while the chunk is denoised).
        self.context: torch.Tensor | None = None
        if hasattr(dynamics, "encode_context") and hasattr(dynamics, "predict_from_context"):
            with torch.no_grad():
                self.context = dynamics.encode_context(self.obs_tokens, self.proprio).detach()

    @classmethod
    def from_observation(
        cls,
        dynamics: Callable[..., torch.Tensor],
        embedder: Callable[[torch.Tensor], torch.Tensor],
        image: torch.Tensor,
        proprio: torch.Tensor,
        guidance_set: GoalLatents,
        **kwargs: Any,
    ) -> DynaGuideObjective:
        """Embed the current frame once (``image (B, 3, H, W)`` in [0, 1], no gradient) and build the objective.

        ``proprio (B, P)`` is the current proprioception; keyword arguments as in the constructor.
        """
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
        with torch.no_grad():
            tokens = embedder(image)
        return cls(dynamics, tokens, proprio, guidance_set, **kwargs)

    def predict_outcome(self, noisy_actions: torch.Tensor) -> torch.Tensor:
        """ẑ ``(B, N_out, D_out)`` for ``noisy_actions (B, T, A)``."""
        batch = noisy_actions.shape[0]
        actions = noisy_actions if self.action_transform is None else self.action_transform(noisy_actions)
        length = self.dynamics_horizon or actions.shape[1]
        actions = chunk_for_dynamics(actions, self.action_offset, length)
        if self.context is not None:
            return self.dynamics.predict_from_context(broadcast_batch("context", self.context, batch), actions)
        tokens = broadcast_batch("obs_tokens", self.obs_tokens, batch)
        proprio = broadcast_batch("proprio", self.proprio, batch)
        return self.dynamics(tokens, proprio, actions)

    def __call__(self, noisy_actions: torch.Tensor) -> torch.Tensor:
        """``(B, T, A)`` → ``(B,)`` metric d."""
        return self.guidance_set.metric(self.predict_outcome(noisy_actions))


class ClassifierObjective:
    """Weighted log-probabilities of outcome classes: ``Σ_c w_c · log p(c | o, a)``.

    Positive weights seek a class, negative weights avoid it (the toy experiment's ``target_list``,
    e.g. ``[1, -0.33, -0.33, -0.33]``).

    Args:
        classifier: ``OutcomeClassifier``: ``(image (B,3,H,W), proprio (B,P), actions (B,T,A))`` → logits ``(B, C)``.
        image: ``(1 or B, 3, H, W)`` current image in [0, 1].
        proprio: ``(1 or B, P)``.
        class_weights: ``(C,)`` weights.
    """

    def __init__(
        self,
        classifier: Callable[..., torch.Tensor],
        image: torch.Tensor,
        proprio: torch.Tensor,
        class_weights: torch.Tensor | Sequence[float],
    ) -> None:
        weights = torch.as_tensor(class_weights, dtype=torch.float32)
        if weights.dim() != 1 or weights.numel() == 0:
            raise ValueError(f"class_weights must be a non-empty (C,) vector, got shape {tuple(weights.shape)}")
        if not torch.isfinite(weights).all() or not weights.abs().sum() > 0:
            raise ValueError("class_weights must be finite and not all zero")
        if image.dim() != 4:
            raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
        if proprio.dim() != 2:
            raise ValueError(f"proprio must be (B, P), got {tuple(proprio.shape)}")
        self.classifier = classifier
        self.image = image.detach()
        self.proprio = proprio.detach()
        self.class_weights = weights
        # An OutcomeClassifier encodes the image once per chunk, not at every guided step.
        self.context: dict[str, torch.Tensor] | None = None
        if hasattr(classifier, "encode_context") and hasattr(classifier, "predict_from_context"):
            with torch.no_grad():
                self.context = {k: v.detach() for k, v in classifier.encode_context(self.image, self.proprio).items()}

    def __call__(self, noisy_actions: torch.Tensor) -> torch.Tensor:
        batch = noisy_actions.shape[0]
        if self.context is not None:
            context = {k: broadcast_batch(f"context[{k!r}]", v, batch) for k, v in self.context.items()}
            logits = self.classifier.predict_from_context(context, noisy_actions)
        else:
            logits = self.classifier(broadcast_batch("image", self.image, batch),
                                     broadcast_batch("proprio", self.proprio, batch), noisy_actions)
        if logits.dim() != 2 or logits.shape[1] != self.class_weights.numel():
            raise ValueError(
                f"classifier returned logits {tuple(logits.shape)}, expected (B, {self.class_weights.numel()})"
            )
        weights = self.class_weights.to(device=logits.device, dtype=logits.dtype)
        return (torch.log_softmax(logits, dim=-1) * weights).sum(dim=-1)


class PositionGuidanceObjective:
    """ITPS-style position guidance: minus the distance of the end-effector path to a target point.

    The chunk is un-normalised, its position components (``position_dims``) are read as per-step
    displacements (× ``step_scale``, e.g. CALVIN's relative-action scaling) and integrated from the
    current end-effector position, giving a path ``p_1..p_T``; the score is ``−reduce_t ‖p_t − target‖``
    with ``reduce`` = mean (default), min, or final.  With ``actions_are_deltas=False`` the position
    components are taken as absolute positions.

    Args:
        target: ``(3,)`` or ``(1 or B, 3)`` target point (same frame/units as the path).
        start_position: ``(1 or B, 3)`` current end-effector position.
        unnormalize: map from the policy's normalised actions to raw actions (``policy.unnormalize_actions``), or None.
    """

    REDUCTIONS = ("mean", "min", "final")

    def __init__(
        self,
        target: torch.Tensor | Sequence[float],
        start_position: torch.Tensor | Sequence[float],
        unnormalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        position_dims: Sequence[int] = (0, 1, 2),
        step_scale: float = 1.0,
        actions_are_deltas: bool = True,
        reduction: str = "mean",
    ) -> None:
        target = torch.as_tensor(target, dtype=torch.float32)
        start = torch.as_tensor(start_position, dtype=torch.float32)
        target = target.unsqueeze(0) if target.dim() == 1 else target
        start = start.unsqueeze(0) if start.dim() == 1 else start
        dims = list(position_dims)
        for name, t in (("target", target), ("start_position", start)):
            if t.dim() != 2 or t.shape[1] != len(dims):
                raise ValueError(f"{name} must be ({len(dims)},) or (B, {len(dims)}), got {tuple(t.shape)}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} contains NaN or inf")
        if reduction not in self.REDUCTIONS:
            raise ValueError(f"reduction must be one of {self.REDUCTIONS}, got {reduction!r}")
        self.target = target
        self.start_position = start
        self.unnormalize = unnormalize
        self.position_dims = dims
        self.step_scale = float(step_scale)
        self.actions_are_deltas = actions_are_deltas
        self.reduction = reduction

    def path(self, noisy_actions: torch.Tensor) -> torch.Tensor:
        """End-effector positions ``(B, T, len(position_dims))`` implied by the chunk."""
        raw = noisy_actions if self.unnormalize is None else self.unnormalize(noisy_actions)
        if max(self.position_dims) >= raw.shape[-1]:
            raise ValueError(f"position_dims {self.position_dims} exceed the action dimension {raw.shape[-1]}")
        pos = raw[..., self.position_dims] * self.step_scale
        if not self.actions_are_deltas:
            return pos
        start = broadcast_batch("start_position", self.start_position.to(pos), pos.shape[0])
        return start.unsqueeze(1) + torch.cumsum(pos, dim=1)

    def __call__(self, noisy_actions: torch.Tensor) -> torch.Tensor:
        path = self.path(noisy_actions)
        target = broadcast_batch("target", self.target.to(path), path.shape[0])
        dist = torch.linalg.vector_norm(path - target.unsqueeze(1), dim=-1)
        if self.reduction == "mean":
            return -dist.mean(dim=1)
        if self.reduction == "min":
            return -dist.min(dim=1).values
        return -dist[:, -1]
