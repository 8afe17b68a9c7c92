"""Goal conditions for DynaGuide: positive/negative outcome latents plus the guidance settings.

A :class:`GoalLatents` is built once per task (embedding goal images is the expensive part) and then
reused by every denoising step of every chunk.  Latents live in the dynamics model's *outcome space*,
i.e. what ``LatentDynamicsModel.forward`` predicts and ``LatentDynamicsModel.outcome_latent`` maps
embedder tokens into: ``(K, N_out, D_out)``.

Two ways to get them:

* :meth:`GoalLatents.from_images` — the paper's text: embed the goal images (φ) and map the tokens
  into the outcome space.
* :meth:`GoalLatents.from_final_frames_through_dynamics` — what the official code does: push the
  final frame of each goal demonstration through the dynamics model with that demonstration's last
  action repeated over the whole chunk (a "stay here" chunk), and use the prediction as the goal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from dynaguide.guidance.metric import latent_guidance_metric
from dynaguide.guidance.sampler import GUIDANCE_INPUTS, STOCHASTIC_MODES

MIN_SIGMA = 1e-3
"""Smallest usable σ: below it ``dist / σ`` can overflow float32 and the guidance gradient is not finite
(σ = 1e-45 made the policy refuse every chunk).  Latent distances here are O(1)-O(1000)."""


@dataclass
class GuidanceConfig:
    """Guidance hyper-parameters (YAML section ``guidance``) — the one place their defaults are set.

    The guidance manager (``default_*`` parameters), the policy node (``runner.guidance``), ``dynaguide
    demo`` and ``dynaguide bench guidance`` take their defaults from here.  σ and M follow the official
    CALVIN runs (``--ss 4 --alpha 30``; we read ``alpha`` as the temperature σ of Eq. 2).  The scale is
    s = 4, not the official 1.5: chosen on CALVIN validation scenes for the shipped models (EfficientNet-Lite0
    latents; ``results/calvin/validation/``): s = 1.5 / 4 / 10 at σ = 30 brought 3/24, 8/24, 7/24 trials of
    three targets to their target (base policy: 0/30).  With these latents the metric's gradient norm is
    ~0.3–0.4 against a unit-Gaussian noise estimate of norm ≈ 10.6 (``dynaguide calvin guidance-effect``),
    so s = 1.5 barely moves the chunk.
    σ is in latent distance units, so it must be re-tuned when the embedder or the outcome space changes
    (here nearest-goal distances are ~53 to the true goal set and ~104 to the others).
    ``stochastic_mode`` is ``renoise``: the official ``repeat`` (M DDIM steps at the same noise level)
    drove clipped chunks to the ±1 limits even without guidance (``results/blocktouch/README.md``).
    ``scale = 0`` is allowed and gives the unguided sampler.
    ``guided_steps = k > 0`` guides (with the M repeats) only the last k DDIM steps — cheaper, but a different
    computation whose effect on steering must be measured (``dynaguide bench realtime``, the CALVIN harness);
    0 = every step, as the paper.  ``guidance_input``: ``"noisy"`` (the paper: the dynamics model scores the
    noisy chunk) or ``"denoised"`` (it scores the policy's denoised estimate; see
    :data:`dynaguide.guidance.sampler.GUIDANCE_INPUTS`).
    """

    sigma: float = 30.0
    scale: float = 4.0
    stochastic_steps: int = 4
    stochastic_mode: str = "renoise"
    squared: bool = False
    guided_steps: int = 0
    guidance_input: str = "noisy"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sigma) and self.sigma >= MIN_SIGMA):
            raise ValueError(f"guidance sigma must be a finite number >= {MIN_SIGMA:g} (the smallest usable value: "
                             f"below it the guidance gradient is not finite), got {self.sigma}")
        if not (math.isfinite(self.scale) and self.scale >= 0):
            raise ValueError(f"guidance scale must be finite and >= 0, got {self.scale}")
        if not isinstance(self.stochastic_steps, int) or self.stochastic_steps < 1:
            raise ValueError(f"stochastic_steps must be an integer >= 1, got {self.stochastic_steps!r}")
        if self.stochastic_mode not in STOCHASTIC_MODES:
            raise ValueError(f"stochastic_mode must be one of {STOCHASTIC_MODES}, got {self.stochastic_mode!r}")
        if self.guidance_input not in GUIDANCE_INPUTS:
            raise ValueError(f"guidance_input must be one of {GUIDANCE_INPUTS}, got {self.guidance_input!r}")
        if not isinstance(self.guided_steps, int) or self.guided_steps < 0:
            raise ValueError(f"guided_steps must be an integer >= 0 (0 = every DDIM step), got {self.guided_steps!r}")

    def retuned(self, scale: float | None = None, sigma: float | None = None,
                stochastic_steps: int | None = None) -> GuidanceConfig:
        """These settings with s, σ and M replaced where a value is given: ``None`` keeps the current value (the one
        meaning of "keep"; ``scale = 0`` is a value: the unguided sampler).  Raises ``ValueError`` as the
        constructor does (the one validator)."""
        def given(value, current):
            return current if value is None else value

        if stochastic_steps is not None and float(stochastic_steps).is_integer():
            stochastic_steps = int(stochastic_steps)
        return replace(self, scale=float(given(scale, self.scale)), sigma=float(given(sigma, self.sigma)),
                       stochastic_steps=given(stochastic_steps, self.stochastic_steps))

    def sampler_kwargs(self) -> dict[str, Any]:
        """s, M, the stochastic mode and ``guided_steps`` as keyword arguments of
        :func:`~dynaguide.guidance.sampler.guided_ddim_sample` (the one sampling loop)."""
        return {"scale": self.scale, "stochastic_steps": self.stochastic_steps,
                "stochastic_mode": self.stochastic_mode, "guided_steps": self.guided_steps or None,
                "guidance_input": self.guidance_input}


@dataclass
class FinalFrames:
    """Final observations of goal demonstrations, for the official-code goal construction.

    Attributes:
        images: ``(K, 3, H, W)`` float in [0, 1] (or uint8 0..255), the last camera frame.
        proprio: ``(K, P)`` proprioception at that frame, raw units as the dynamics model expects.
        last_actions: ``(K, A)`` the demonstration's last action, in the space the dynamics model
            was trained on (normalised actions for our models).
    """

    images: torch.Tensor
    proprio: torch.Tensor
    last_actions: torch.Tensor


def _as_unit_images(name: str, images: torch.Tensor) -> torch.Tensor:
    """Validate ``(K, 3, H, W)`` images and return them as float in [0, 1]."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a (K, 3, H, W) image tensor, got {shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{name} is empty; pass None to leave that goal set out")
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise ValueError(f"{name} must be float in [0, 1] or uint8, got dtype {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} contains NaN or inf")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"{name} must be in [0, 1] (got range [{float(images.min()):.3g}, {float(images.max()):.3g}])")
    return images


def _batched(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Apply ``fn`` over the leading dimension in chunks of ``batch_size`` under ``no_grad``."""
    outs = []
    with torch.no_grad():
        for i in range(0, tensors[0].shape[0], batch_size):
            outs.append(fn(*(t[i : i + batch_size] for t in tensors)))
    return torch.cat(outs, dim=0)


def _module_device(module: Any) -> torch.device | None:
    if isinstance(module, torch.nn.Module):
        for p in module.parameters():
            return p.device
    return None


@dataclass
class GoalLatents:
    """Positive/negative goal latents and how strongly to steer towards/away from them.

    Attributes:
        positives: ``(K, N, D)`` desired outcome latents, or None.
        negatives: ``(K', N, D)`` undesired outcome latents, or None.
        config: σ, scale s, stochastic steps M and mode, distance kind.
        positive_groups: None (one logsumexp over all positives, the paper), or sizes of consecutive
            groups of positives whose logsumexp terms are summed (see :func:`latent_guidance_metric`).
    """

    positives: torch.Tensor | None
    negatives: torch.Tensor | None
    config: GuidanceConfig = field(default_factory=GuidanceConfig)
    positive_groups: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.positives is None and self.negatives is None:
            raise ValueError("a GoalLatents needs positive goals, negative goals, or both (got neither)")
        shape = None
        for name in ("positives", "negatives"):
            latents = getattr(self, name)
            if latents is None:
                continue
            if not isinstance(latents, torch.Tensor) or latents.dim() != 3:
                got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
                raise ValueError(f"{name} must be a (K, N, D) tensor of outcome latents, got {got}")
            if latents.shape[0] == 0:
                raise ValueError(f"{name} is empty (K = 0); pass None to leave it out")
            if not latents.is_floating_point():
                raise ValueError(f"{name} must be floating point, got {latents.dtype}")
            if not torch.isfinite(latents).all():
                raise ValueError(f"{name} contains NaN or inf")
            if shape is not None and latents.shape[1:] != shape:
                raise ValueError(
                    f"positives have latent shape {tuple(shape)} but negatives {tuple(latents.shape[1:])}; "
                    "both must be in the same outcome space"
                )
            shape = latents.shape[1:]
            setattr(self, name, latents.detach())
        if self.positive_groups is not None:
            groups = tuple(int(g) for g in self.positive_groups)
            if self.positives is None or not groups or min(groups) < 1 or sum(groups) != self.num_positives:
                raise ValueError(f"positive_groups {groups} must be positive sizes summing to the "
                                 f"{self.num_positives} positives")
            self.positive_groups = groups

    # ----------------------------------------------------------------------------------- builders
    @classmethod
    def from_latents(
        cls,
        positives: torch.Tensor | None,
        negatives: torch.Tensor | None = None,
        config: GuidanceConfig | None = None,
    ) -> GoalLatents:
        """Use already-computed outcome latents ``(K, N, D)`` directly."""
        return cls(positives, negatives, config or GuidanceConfig())

    @classmethod
    def from_images(
        cls,
        embedder: Callable[[torch.Tensor], torch.Tensor],
        dynamics: Any,
        pos_images: torch.Tensor | None,
        neg_images: torch.Tensor | None = None,
        config: GuidanceConfig | None = None,
        batch_size: int = 32,
    ) -> GoalLatents:
        """Embed goal images and map them into the dynamics model's outcome space (paper text).

        Args:
            embedder: ``PatchEmbedder``: ``(K, 3, H, W)`` in [0, 1] → ``(K, N, D)`` tokens.
            dynamics: ``LatentDynamicsModel`` providing ``outcome_latent(tokens) -> (K, N_out, D_out)``.
            pos_images, neg_images: ``(K, 3, H, W)`` goal images (float [0, 1] or uint8), or None.
            batch_size: images embedded per forward pass.
        """
        device = _module_device(dynamics) or _module_device(embedder) or torch.device("cpu")

        def latents(name: str, images: torch.Tensor | None) -> torch.Tensor | None:
            if images is None:
                return None
            images = _as_unit_images(name, images).to(device)
            return _batched(lambda x: dynamics.outcome_latent(embedder(x)), images, batch_size=batch_size)

        return cls(latents("pos_images", pos_images), latents("neg_images", neg_images), config or GuidanceConfig())

    @classmethod
    def from_final_frames_through_dynamics(
        cls,
        embedder: Callable[[torch.Tensor], torch.Tensor],
        dynamics: Any,
        positives: FinalFrames | None,
        negatives: FinalFrames | None = None,
        horizon: int = 16,
        config: GuidanceConfig | None = None,
        batch_size: int = 32,
    ) -> GoalLatents:
        """Official-code variant: goal = dynamics(φ(final frame), proprio, last action repeated T times).

        Args:
            embedder: ``PatchEmbedder`` for the final frames.
            dynamics: ``LatentDynamicsModel``: ``forward(tokens, proprio, actions (K, T, A))``.
            positives, negatives: :class:`FinalFrames` of the goal demonstrations, or None.
            horizon: T, the action chunk length the dynamics model takes.
        """
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        device = _module_device(dynamics) or _module_device(embedder) or torch.device("cpu")

        def latents(name: str, frames: FinalFrames | None) -> torch.Tensor | None:
            if frames is None:
                return None
            images = _as_unit_images(f"{name}.images", frames.images).to(device)
            k = images.shape[0]
            if frames.proprio.dim() != 2 or frames.proprio.shape[0] != k:
                raise ValueError(f"{name}.proprio must be (K, P) with K = {k}, got {tuple(frames.proprio.shape)}")
            if frames.last_actions.dim() != 2 or frames.last_actions.shape[0] != k:
                raise ValueError(f"{name}.last_actions must be (K, A) with K = {k}, "
                                 f"got {tuple(frames.last_actions.shape)}")
            proprio = frames.proprio.to(device=device, dtype=images.dtype)
            actions = frames.last_actions.to(device=device, dtype=images.dtype).unsqueeze(1).expand(-1, horizon, -1)

            def predict(img: torch.Tensor, pro: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
                return dynamics(embedder(img), pro, act.contiguous())

            return _batched(predict, images, proprio, actions, batch_size=batch_size)

        return cls(latents("positives", positives), latents("negatives", negatives), config or GuidanceConfig())

    # ----------------------------------------------------------------------------------- use
    @property
    def latent_shape(self) -> tuple[int, int]:
        """``(N, D)`` of the outcome latents."""
        ref = self.positives if self.positives is not None else self.negatives
        return (int(ref.shape[1]), int(ref.shape[2]))

    @property
    def sigma(self) -> float:
        return self.config.sigma

    @property
    def scale(self) -> float:
        return self.config.scale

    @property
    def stochastic_steps(self) -> int:
        return self.config.stochastic_steps

    @property
    def num_positives(self) -> int:
        return 0 if self.positives is None else int(self.positives.shape[0])

    @property
    def num_negatives(self) -> int:
        return 0 if self.negatives is None else int(self.negatives.shape[0])

    def metric(self, pred: torch.Tensor) -> torch.Tensor:
        """Eq. 2 for predicted outcome latents ``pred (B, N, D)`` → ``(B,)``."""
        return latent_guidance_metric(pred, self.positives, self.negatives, self.config.sigma, self.config.squared,
                                      self.positive_groups)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> GoalLatents:
        """A copy with the latents moved/cast (the config is shared)."""
        move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return replace(self, positives=move(self.positives), negatives=move(self.negatives))
