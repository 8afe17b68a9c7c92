"""BlockTouch's outcome classifier: the categorical outcome of a chunk from the current image, proprio and actions.

DynaGuide variant (a) of the toy experiment guides with its log-probabilities
(:class:`dynaguide.guidance.objectives.ClassifierObjective`).  Like the latent dynamics model
(:mod:`dynaguide.dynamics`) it takes normalised actions with the policy's min/max stats, is trained with the
same noise augmentation (:func:`dynaguide.dynamics.noise_actions_for_dynamics`) and splits into
``encode_context`` / ``predict_from_context``.  Checkpoint kind ``outcome_classifier``, registered when this
module is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dynaguide.checkpoint import register_checkpoint_kind
from dynaguide.config import check_ranges
from dynaguide.diffusion import DDIMConfig, make_ddim_scheduler
from dynaguide.distributed import Rows
from dynaguide.dynamics import check_action_space, noise_actions_for_dynamics
from dynaguide.normalization import ActionProprioNormalizers
from dynaguide.policy.vision import ImageEncoder


@dataclass
class OutcomeClassifierConfig:
    """Categorical outcome predictor from the current image, proprio and (noisy) action chunk."""

    num_classes: int = 4
    image_size: int = 64
    backbone: str = "small_cnn"
    num_keypoints: int = 16
    cnn_width: int = 32
    hidden_dim: int = 256
    proprio_dim: int = 2
    action_dim: int = 2
    horizon: int = 16
    noised_fraction: float = 0.5
    geometric_p: float = 0.05
    path_features: int = 0
    """When > 0: the actions are image-plane positions ``(x, y)`` in [-1, 1] (raw units, as in BlockTouch),
    and this many image-feature channels are sampled (bilinearly, differentiably in the actions) at every
    point of the chunk and fed to the head besides the flattened actions — "what lies along this path".
    0: the generic head (image keypoints + flattened actions), for actions in any space."""
    ddim: DDIMConfig = field(default_factory=DDIMConfig)

    def __post_init__(self) -> None:
        check_ranges(self, {"num_classes": (2, 65536), "image_size": (1, 4096), "num_keypoints": (1, 4096),
                            "cnn_width": (1, 4096), "hidden_dim": (1, 65536), "proprio_dim": (0, 65536),
                            "action_dim": (1, 4096), "horizon": (1, 4096), "noised_fraction": (0.0, 1.0),
                            "geometric_p": (0.0, 1.0), "path_features": (0, 4096)})
        if self.geometric_p <= 0.0:
            raise ValueError(f"geometric_p must be in (0, 1], got {self.geometric_p}")
        if self.path_features < 0:
            raise ValueError(f"path_features must be >= 0, got {self.path_features}")
        if self.path_features and self.action_dim != 2:
            raise ValueError("path_features needs 2-D image-plane actions (action_dim 2)")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        for name in ("image_size", "hidden_dim", "action_dim", "horizon", "num_keypoints"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.proprio_dim < 0:
            raise ValueError("proprio_dim must be >= 0")


def sample_along_path(feature_map: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``feature_map (B, C, h, w)`` at ``points (B, T, 2)`` → ``(B, T, C)``.

    ``points`` are image-plane ``(x, y)`` in [-1, 1]: x = −1 is the left edge of the image, y = −1 the top
    (``grid_sample`` with ``align_corners=False``; outside points read the border).  Differentiable in
    ``points``, so a guidance gradient can move the path towards or away from what the map shows.
    """
    if feature_map.ndim != 4 or points.ndim != 3 or points.shape[-1] != 2 or points.shape[0] != feature_map.shape[0]:
        raise ValueError(f"need feature_map (B, C, h, w) and points (B, T, 2), got {tuple(feature_map.shape)} "
                         f"and {tuple(points.shape)}")
    sampled = F.grid_sample(feature_map, points.unsqueeze(1), mode="bilinear", padding_mode="border",
                            align_corners=False)  # (B, C, 1, T)
    return sampled.squeeze(2).transpose(1, 2)


class OutcomeClassifier(ActionProprioNormalizers, nn.Module):
    """``forward(image (B, 3, H, W) in [0, 1], proprio (B, P) raw, actions (B, T, A) normalised) → logits (B, C)``.

    Split like :class:`dynaguide.dynamics.LatentDynamicsModel`: :meth:`encode_context` (image and proprio, fixed
    while a chunk is denoised) and :meth:`predict_from_context` (the part that depends on the actions).
    """

    checkpoint_kind = "outcome_classifier"

    def __init__(self, cfg: OutcomeClassifierConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.horizon = cfg.horizon
        self.action_dim = cfg.action_dim
        self.image_encoder = ImageEncoder(cfg.backbone, cfg.num_keypoints, cfg.image_size, cfg.cnn_width)
        in_dim = self.image_encoder.out_dim + cfg.proprio_dim + cfg.horizon * cfg.action_dim
        self.path_head: nn.Module | None = None
        if cfg.path_features:
            self.path_head = nn.Conv2d(self.image_encoder.backbone.out_channels, cfg.path_features, 1)
            in_dim += cfg.horizon * cfg.path_features
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, cfg.hidden_dim), nn.Mish(),
            nn.Linear(cfg.hidden_dim, cfg.hidden_dim), nn.Mish(),
            nn.Linear(cfg.hidden_dim, cfg.num_classes),
        )
        self._init_normalizers(cfg.action_dim, cfg.proprio_dim)
        self.noise_scheduler = make_ddim_scheduler(cfg.ddim)

    def check_compatible_with(self, policy, atol: float = 1e-6) -> None:
        """Raise ``ValueError`` unless ``policy`` produces chunks this model understands: same horizon,
        action dimension and action min/max (the normalised action space must be the same)."""
        check_action_space(self, policy, atol)

    def encode_context(self, image: torch.Tensor, proprio: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """``{"features": (B, F)}`` (image keypoints [+ normalised proprio]) and, with ``path_features``,
        ``"path_map": (B, C_p, h, w)``; ``image (B, 3, H, W)`` in [0, 1], ``proprio (B, P)`` raw."""
        cfg = self.cfg
        fmap = self.image_encoder.feature_map(image.float())
        parts = [self.image_encoder.keypoints(fmap)]
        if self.proprio_normalizer is not None:
            if proprio is None or proprio.ndim != 2 or proprio.shape[1] != cfg.proprio_dim:
                shape = None if proprio is None else tuple(proprio.shape)
                raise ValueError(f"proprio must be (B, {cfg.proprio_dim}), got {shape}")
            if proprio.shape[0] != image.shape[0] and 1 not in (proprio.shape[0], image.shape[0]):
                raise ValueError(f"proprio batch {proprio.shape[0]} does not match image batch {image.shape[0]}")
            proprio_n = self.proprio_normalizer.normalize(proprio.float())
            b = max(parts[0].shape[0], proprio_n.shape[0])
            parts = [parts[0].expand(b, -1), proprio_n.expand(b, -1)]
        context = {"features": torch.cat(parts, dim=-1)}
        if self.path_head is not None:
            context["path_map"] = self.path_head(fmap)
        return context

    def predict_from_context(self, context: dict[str, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` from :meth:`encode_context`'s output (batch B or 1) and ``actions (B, T, A)``
        normalised."""
        cfg = self.cfg
        if actions.ndim != 3 or actions.shape[1:] != (cfg.horizon, cfg.action_dim):
            raise ValueError(f"actions must be (B, {cfg.horizon}, {cfg.action_dim}), got {tuple(actions.shape)}")
        feats = context["features"]
        b = max(feats.shape[0], actions.shape[0])
        if feats.shape[0] != actions.shape[0] and 1 not in (feats.shape[0], actions.shape[0]):
            raise ValueError(f"actions batch {actions.shape[0]} does not match context batch {feats.shape[0]}")
        parts = [feats.expand(b, -1), actions.reshape(actions.shape[0], -1).expand(b, -1)]
        if self.path_head is not None:
            points = self.action_normalizer.unnormalize(actions).expand(b, -1, -1)
            parts.append(sample_along_path(context["path_map"].expand(b, -1, -1, -1), points).reshape(b, -1))
        return self.mlp(torch.cat(parts, dim=-1))

    def forward(self, image: torch.Tensor, proprio: torch.Tensor | None, actions: torch.Tensor) -> torch.Tensor:
        return self.predict_from_context(self.encode_context(image, proprio), actions)

    def compute_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
                     augment: bool = True, rows: Rows | None = None) -> torch.Tensor:
        """Cross-entropy.  ``batch``: ``image (B, 3, H, W)``, ``proprio (B, P)``, ``actions (B, T, A)`` raw,
        ``label (B,)`` long."""
        if not self.normalizers_fitted:
            raise ValueError("normaliser stats are not set: call set_normalizer_stats (training does it from the data)")
        actions = self.action_normalizer.normalize(batch["actions"].float())
        if augment:
            actions, _ = noise_actions_for_dynamics(
                actions, self.noise_scheduler, generator, self.cfg.noised_fraction, self.cfg.geometric_p, rows
            )
        logits = self(batch["image"], batch.get("proprio"), actions)
        return F.cross_entropy(logits, batch["label"].long())


register_checkpoint_kind("outcome_classifier", OutcomeClassifierConfig, OutcomeClassifier)
