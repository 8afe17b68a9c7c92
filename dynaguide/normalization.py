"""Min/max normalisation of actions and proprioception to [-1, 1], stored as module buffers.

The statistics are registered buffers, so they travel inside ``model.safetensors`` with the weights
(a checkpoint is self-contained: no separate stats file to lose or mismatch).
"""

from __future__ import annotations

import torch
from torch import nn


class MinMaxNormalizer(nn.Module):
    """Affine map of each feature from ``[min, max]`` (raw units) to ``[-1, 1]``.

    Buffers: ``min (F,)``, ``max (F,)``, ``fitted ()`` uint8.  A feature whose range is narrower
    than ``eps`` (constant in the data) is mapped to 0 and un-normalised back to its constant value.
    """

    def __init__(self, num_features: int, eps: float = 1e-6) -> None:
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"num_features must be positive, got {num_features}")
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("min", -torch.ones(num_features))
        self.register_buffer("max", torch.ones(num_features))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.uint8))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted.item())

    @torch.no_grad()
    def set_stats(self, minimum: torch.Tensor, maximum: torch.Tensor) -> None:
        """Set ``min``/``max`` (each ``(F,)``, raw units)."""
        minimum = torch.as_tensor(minimum, dtype=torch.float32).reshape(-1)
        maximum = torch.as_tensor(maximum, dtype=torch.float32).reshape(-1)
        if minimum.numel() != self.num_features or maximum.numel() != self.num_features:
            raise ValueError(
                f"normaliser stats must have {self.num_features} features, got {minimum.numel()} and {maximum.numel()}"
            )
        if not torch.isfinite(minimum).all() or not torch.isfinite(maximum).all():
            raise ValueError("normaliser stats must be finite")
        if (maximum < minimum).any():
            raise ValueError("normaliser stats: max < min for some feature")
        self.min.copy_(minimum)
        self.max.copy_(maximum)
        self.fitted.fill_(1)

    @torch.no_grad()
    def fit(self, data: torch.Tensor) -> None:
        """Fit from raw samples ``(..., F)``."""
        data = torch.as_tensor(data, dtype=torch.float32).reshape(-1, self.num_features)
        if data.shape[0] == 0:
            raise ValueError("cannot fit a normaliser on zero samples")
        self.set_stats(data.min(dim=0).values, data.max(dim=0).values)

    def _scale_offset(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        span = self.max - self.min
        degenerate = span < self.eps
        scale = torch.where(degenerate, torch.ones_like(span), 2.0 / span.clamp_min(self.eps))
        offset = torch.where(degenerate, -self.min, -1.0 - self.min * scale)
        return scale, offset, degenerate

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw ``(..., F)`` → normalised ``(..., F)`` in [-1, 1] for in-range data."""
        self._check(x)
        scale, offset, degenerate = self._scale_offset()
        y = x * scale + offset
        return torch.where(degenerate, torch.zeros_like(y), y)

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., F)`` → raw units ``(..., F)``."""
        self._check(y)
        scale, offset, degenerate = self._scale_offset()
        x = (y - offset) / scale
        return torch.where(degenerate, self.min.expand_as(x), x)

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.num_features:
            raise ValueError(f"expected last dimension {self.num_features}, got shape {tuple(x.shape)}")


class ActionProprioNormalizers:
    """Mixin for an ``nn.Module`` that normalises actions ``(..., A)`` and proprio ``(..., P)`` with min/max stats.

    The policy, the latent dynamics model and outcome classifiers share it.  :meth:`_init_normalizers`
    registers the submodules ``action_normalizer`` (``A`` features) and ``proprio_normalizer`` (``P`` features,
    ``None`` when ``P == 0``); their buffers are saved in the checkpoint under those names
    (``action_normalizer.min`` …).  A model that scores a policy's chunks must use the policy's action stats
    (:func:`dynaguide.dynamics.check_action_space`).
    """

    action_normalizer: MinMaxNormalizer
    proprio_normalizer: MinMaxNormalizer | None

    def _init_normalizers(self, action_dim: int, proprio_dim: int) -> None:
        """Register ``action_normalizer`` then ``proprio_normalizer`` (unfitted); call from ``__init__``."""
        self.action_normalizer = MinMaxNormalizer(action_dim)
        self.proprio_normalizer = MinMaxNormalizer(proprio_dim) if proprio_dim > 0 else None

    def set_normalizer_stats(self, action_min, action_max, proprio_min=None, proprio_max=None) -> None:
        """Store raw-unit min/max of actions ``(A,)`` and proprio ``(P,)`` (saved in the checkpoint); the proprio
        stats are required when ``P > 0``."""
        self.action_normalizer.set_stats(action_min, action_max)
        if self.proprio_normalizer is not None:
            if proprio_min is None or proprio_max is None:
                raise ValueError("proprio_min/proprio_max are required when proprio_dim > 0")
            self.proprio_normalizer.set_stats(proprio_min, proprio_max)

    @property
    def normalizers_fitted(self) -> bool:
        """Whether the action stats (and the proprio stats, when there is proprio) have been set."""
        proprio_ok = self.proprio_normalizer is None or self.proprio_normalizer.is_fitted
        return self.action_normalizer.is_fitted and proprio_ok
