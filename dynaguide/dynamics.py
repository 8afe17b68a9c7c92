"""Latent dynamics model h(φ(o_t), proprio_t, a_{t:t+T}) → ẑ (predicted embedding of the segment's final frame).

Token layout (paper config): ``N = 256`` patch tokens of the current frame + 1 proprio token + 1 action
token = 258 tokens, a learned positional embedding, a 6-layer 8-head transformer encoder; the first
``N`` outputs (after a linear head) are the prediction, trained with MSE against ``outcome_latent`` of
the final frame's tokens.  The action token concatenates one ``D/T``-wide linear embedding per action
step (``T`` steps, ``D`` = model width).  The CPU config average-pools the patch grid (e.g. 16x16 →
4x4 = 16 tokens) and uses a narrower transformer — same code.

Actions given to the model are **normalised to [-1, 1]** with the same min/max as the policy (stored
here as buffers); proprio is raw and normalised inside.  The chunk starts at the current step and is
padded by repeating the last action (see :mod:`dynaguide.data.datasets`).

The model splits into ``encode_context`` (observation only: fixed while a chunk is denoised, so guidance
computes it once per chunk) and ``predict_from_context`` (the action-dependent part, run at every guided
step); ``forward`` is the two in sequence.

Also: :func:`noise_actions_for_dynamics` (the paper's noise augmentation) and :func:`check_action_space`,
shared with any other outcome model trained on the same chunks (BlockTouch's outcome classifier,
``dynaguide_experiments.blocktouch.classifier``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dynaguide.config import check_ranges
from dynaguide.diffusion import DDIMConfig, make_ddim_scheduler
from dynaguide.distributed import Rows, batch_size_drawn, take_rows
from dynaguide.normalization import ActionProprioNormalizers


# ---------------------------------------------------------------------------- noise augmentation
def sample_geometric_steps(n: int, p: float, max_step: int, generator: torch.Generator | None = None,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` draws of a geometric distribution on {1, 2, …} (P(k) = (1-p)^(k-1) p, mean 1/p), clipped to
    ``max_step``."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"geometric_p must be in (0, 1], got {p}")
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if p == 1.0:
        k = torch.ones(n, dtype=torch.float64, device=device)
    else:
        # inverse CDF: P(K <= k) = 1 - (1-p)^k ; 1 - u is in (0, 1] so the log is finite
        k = torch.ceil(torch.log1p(-u) / math.log1p(-p)).clamp_min(1.0)
    return k.clamp_max(max_step).long()


def noise_actions_for_dynamics(
    actions: torch.Tensor,
    scheduler,
    generator: torch.Generator | None = None,
    noised_fraction: float = 0.5,
    geometric_p: float = 0.05,
    rows: Rows | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise augmentation of dynamics training chunks (paper, Sec. 4).

    ``actions (B, T, A)`` normalised.  Each sample is noised with probability ``noised_fraction`` via
    ``scheduler.add_noise`` (the inference DDIM scheduler) at a step ``k ~ Geometric(p)`` on {1, 2, …}
    (mean ``1/p`` = 20), clipped to the last training step.  Returns ``(noisy (B, T, A), timesteps (B,)
    long)`` where ``timesteps[b] = -1`` marks a sample left clean.  ``rows``: ``actions`` are these rows of a
    larger batch (:class:`dynaguide.distributed.Rows`): the draws are made for the whole batch, these rows kept.
    """
    if actions.ndim != 3:
        raise ValueError(f"actions must be (B, T, A), got {tuple(actions.shape)}")
    if not 0.0 <= noised_fraction <= 1.0:
        raise ValueError(f"noised_fraction must be in [0, 1], got {noised_fraction}")
    b = batch_size_drawn(rows, actions.shape[0])
    device = actions.device
    gen_device = generator.device if generator is not None else device
    last_step = int(scheduler.config.num_train_timesteps) - 1
    noised = take_rows(torch.rand(b, generator=generator, device=gen_device) < noised_fraction, rows).to(device)
    steps = take_rows(sample_geometric_steps(b, geometric_p, last_step, generator, gen_device), rows).to(device)
    noise = take_rows(torch.randn((b, *actions.shape[1:]), generator=generator, device=gen_device,
                                  dtype=actions.dtype), rows).to(device)
    noisy = scheduler.add_noise(actions, noise, steps)
    out = torch.where(noised[:, None, None], noisy, actions)
    timesteps = torch.where(noised, steps, torch.full_like(steps, -1))
    return out, timesteps


def check_action_space(model, policy, atol: float = 1e-6) -> None:
    """``model`` (dynamics/classifier) and ``policy`` must share horizon, action dim and action min/max."""
    name = type(model).__name__
    if (model.horizon, model.action_dim) != (policy.horizon, policy.action_dim):
        raise ValueError(f"{name} expects chunks (T={model.horizon}, A={model.action_dim}) but the policy makes "
                         f"(T={policy.horizon}, A={policy.action_dim})")
    mine, theirs = model.action_normalizer, getattr(policy, "action_normalizer", None)
    if theirs is None:
        return
    if not (mine.is_fitted and theirs.is_fitted):
        raise ValueError(f"action normaliser stats are not set on the {name} or the policy")
    if not (torch.allclose(mine.min, theirs.min.to(mine.min), atol=atol)
            and torch.allclose(mine.max, theirs.max.to(mine.max), atol=atol)):
        raise ValueError(f"{name} and the policy normalise actions differently (min/max differ): guidance would "
                         "feed the model actions in the wrong units; train both from the same data/stats")


# ---------------------------------------------------------------------------- dynamics model
@dataclass
class LatentDynamicsConfig:
    """``embed_tokens``/``embed_dim`` describe the embedder (N, D); ``pool`` average-pools the square token
    grid by that factor per side; ``model_dim`` is the transformer width (must be divisible by ``horizon``
    and ``n_heads``).

    ``embedder``: the :func:`dynaguide.embedders.identity.embedder_identity` of the embedder whose tokens the model
    was trained on (saved with the checkpoint's JSON config), or ``None`` (older checkpoints: unknown, no
    check possible).  When set, its grid and dim must equal ``embed_tokens``/``embed_dim``, and
    :attr:`embedder_id` lets the runtime refuse tokens of another embedder.
    """

    embed_tokens: int = 256
    embed_dim: int = 384
    pool: int = 1
    model_dim: int = 384
    n_layers: int = 6
    n_heads: int = 8
    ff_mult: int = 4
    dropout: float = 0.0
    proprio_dim: int = 15
    action_dim: int = 7
    horizon: int = 16
    noised_fraction: float = 0.5
    geometric_p: float = 0.05
    ddim: DDIMConfig = field(default_factory=DDIMConfig)
    embedder: dict | None = None

    def __post_init__(self) -> None:
        check_ranges(self, {"embed_tokens": (1, 65536), "embed_dim": (1, 16384), "pool": (1, 256),
                            "model_dim": (1, 16384), "n_layers": (1, 128), "n_heads": (1, 256), "ff_mult": (1, 64),
                            "dropout": (0.0, 1.0), "proprio_dim": (0, 65536), "action_dim": (1, 4096),
                            "horizon": (1, 4096), "noised_fraction": (0.0, 1.0), "geometric_p": (0.0, 1.0)})
        if self.dropout >= 1.0 or self.geometric_p <= 0.0:
            raise ValueError(f"dropout must be in [0, 1) and geometric_p in (0, 1], got {self.dropout}, "
                             f"{self.geometric_p}")
        if self.embedder is not None:
            from dynaguide.embedders.identity import embedder_id_from_identity

            embedder_id_from_identity(self.embedder)  # ValueError unless it looks like an identity
            grid, dim = self.embedder.get("grid"), self.embedder.get("dim")
            if not (isinstance(grid, (list, tuple)) and len(grid) == 2) or grid[0] * grid[1] != self.embed_tokens \
                    or dim != self.embed_dim:
                raise ValueError(f"embedder identity (grid {grid}, dim {dim}) does not match embed_tokens "
                                 f"{self.embed_tokens} / embed_dim {self.embed_dim}")
        side = math.isqrt(self.embed_tokens)
        if side * side != self.embed_tokens:
            raise ValueError(f"embed_tokens must be a square number (a patch grid), got {self.embed_tokens}")
        if self.pool <= 0 or side % self.pool:
            raise ValueError(f"pool {self.pool} must divide the grid side {side}")
        if self.model_dim % self.horizon:
            raise ValueError(f"model_dim {self.model_dim} must be divisible by horizon {self.horizon} (action token)")
        if self.model_dim % self.n_heads:
            raise ValueError(f"model_dim {self.model_dim} must be divisible by n_heads {self.n_heads}")
        for name in ("embed_dim", "n_layers", "action_dim", "horizon", "ff_mult"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.proprio_dim < 0:
            raise ValueError("proprio_dim must be >= 0")

    @property
    def embedder_id(self) -> str | None:
        """Short id of the recorded embedder (:func:`dynaguide.embedders.identity.embedder_id`), ``None`` if
        unrecorded."""
        if self.embedder is None:
            return None
        from dynaguide.embedders.identity import embedder_id_from_identity

        return embedder_id_from_identity(self.embedder)

    @classmethod
    def for_embedder(cls, embedder, preset: str = "cpu", **overrides) -> LatentDynamicsConfig:
        """Preset ``"cpu"``/``"paper"`` sized for ``embedder``'s tokens (``embed_tokens``/``embed_dim``) and
        recording its identity.  The cpu preset pools the grid to 4x4 tokens when the side is a multiple
        of 4 (16x16 → pool 4, 8x8 → pool 2), else keeps it unpooled."""
        from dynaguide.embedders.identity import embedder_identity

        if preset not in ("cpu", "paper"):
            raise ValueError(f"preset must be 'cpu' or 'paper', got {preset!r}")
        side = math.isqrt(int(embedder.num_tokens))
        base: dict = {"embed_tokens": int(embedder.num_tokens), "embed_dim": int(embedder.dim),
                      "embedder": embedder_identity(embedder)}
        if preset == "cpu":
            base["pool"] = side // 4 if side % 4 == 0 else 1
        base.update(overrides)
        return getattr(cls, preset)(**base)

    @property
    def out_tokens(self) -> int:
        return self.embed_tokens // (self.pool * self.pool)

    @property
    def in_tokens(self) -> int:
        return self.out_tokens + (1 if self.proprio_dim > 0 else 0) + 1

    @classmethod
    def paper(cls, **overrides) -> LatentDynamicsConfig:
        """DINOv2 ViT-S/14 tokens (256 x 384), no pooling, width 384, 6 layers, 8 heads: 258 tokens in."""
        return cls(**overrides)

    @classmethod
    def cpu(cls, **overrides) -> LatentDynamicsConfig:
        """16x16 grid pooled 4x4 → 16 tokens, width 128, 4 layers, 4 heads."""
        base = dict(pool=4, model_dim=128, n_layers=4, n_heads=4, ff_mult=2)
        base.update(overrides)
        return cls(**base)


class LatentDynamicsModel(ActionProprioNormalizers, nn.Module):
    """See module docstring.  ``forward(obs_tokens (B, N, D), proprio (B, P), actions (B, T, A)) → (B, N_out, D)``."""

    checkpoint_kind = "latent_dynamics"
    #: in eval mode, run the encoder through :meth:`_encode_inference` (same result, faster); False = the module
    inference_fast_path: bool = True

    def __init__(self, cfg: LatentDynamicsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.horizon = cfg.horizon
        self.action_dim = cfg.action_dim
        d = cfg.model_dim
        self.token_in = nn.Linear(cfg.embed_dim, d) if cfg.embed_dim != d else nn.Identity()
        self.proprio_in = nn.Linear(cfg.proprio_dim, d) if cfg.proprio_dim > 0 else None
        self.action_step_in = nn.Linear(cfg.action_dim, d // cfg.horizon)
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.in_tokens, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, cfg.n_heads, cfg.ff_mult * d, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.embed_dim)
        self._init_normalizers(cfg.action_dim, cfg.proprio_dim)  # set_normalizer_stats: use the policy's action stats
        self.noise_scheduler = make_ddim_scheduler(cfg.ddim)

    def check_compatible_with(self, policy, atol: float = 1e-6) -> None:
        """Raise ``ValueError`` unless ``policy`` produces chunks this model understands: same horizon,
        action dimension and action min/max (the normalised action space must be the same)."""
        check_action_space(self, policy, atol)

    def outcome_latent(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embedder tokens ``(B, N, D)`` → outcome space ``(B, N_out, D)``: average pooling of the patch grid
        (identity when ``pool == 1``).  Used for training targets and for goal latents alike."""
        cfg = self.cfg
        if tokens.ndim != 3 or tokens.shape[1:] != (cfg.embed_tokens, cfg.embed_dim):
            raise ValueError(f"tokens must be (B, {cfg.embed_tokens}, {cfg.embed_dim}), got {tuple(tokens.shape)}")
        if cfg.pool == 1:
            return tokens
        b = tokens.shape[0]
        side = math.isqrt(cfg.embed_tokens)
        grid = tokens.transpose(1, 2).reshape(b, cfg.embed_dim, side, side)
        pooled = F.avg_pool2d(grid, cfg.pool)
        return pooled.reshape(b, cfg.embed_dim, -1).transpose(1, 2)

    def encode_context(self, obs_tokens: torch.Tensor, proprio: torch.Tensor | None) -> torch.Tensor:
        """The action-independent input tokens ``(B, N_out [+ 1], d)``: pooled, projected observation tokens
        and the proprio token.  Fixed while a chunk is denoised, so guidance computes it once per chunk
        (see :meth:`predict_from_context`); ``obs_tokens (B, N, D)``, ``proprio (B, P)`` raw units."""
        cfg = self.cfg
        parts = [self.token_in(self.outcome_latent(obs_tokens))]
        if self.proprio_normalizer is not None:
            if proprio is None or proprio.ndim != 2 or proprio.shape[1] != cfg.proprio_dim:
                shape = None if proprio is None else tuple(proprio.shape)
                raise ValueError(f"proprio must be (B, {cfg.proprio_dim}), got {shape}")
            if proprio.shape[0] != parts[0].shape[0] and 1 not in (proprio.shape[0], parts[0].shape[0]):
                raise ValueError(f"proprio batch {proprio.shape[0]} does not match tokens batch {parts[0].shape[0]}")
            parts.append(self.proprio_in(self.proprio_normalizer.normalize(proprio.float())).unsqueeze(1))
        batch = max(p.shape[0] for p in parts)
        return torch.cat([p.expand(batch, -1, -1) for p in parts], dim=1)

    def predict_from_context(self, context: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """``context`` from :meth:`encode_context` ``(B or 1, N_out [+ 1], d)``, ``actions (B, T, A)``
        normalised → predicted final-frame latent ``(B, N_out, D)``."""
        cfg = self.cfg
        if actions.ndim != 3 or actions.shape[1:] != (cfg.horizon, cfg.action_dim):
            raise ValueError(f"actions must be (B, {cfg.horizon}, {cfg.action_dim}), got {tuple(actions.shape)}")
        if context.ndim != 3 or context.shape[1:] != (cfg.in_tokens - 1, cfg.model_dim):
            raise ValueError(f"context must be (B, {cfg.in_tokens - 1}, {cfg.model_dim}), got {tuple(context.shape)}")
        b = context.shape[0]
        if actions.shape[0] != b and 1 not in (actions.shape[0], b):
            raise ValueError(f"actions batch {actions.shape[0]} does not match tokens batch {b}")
        action_token = self.action_step_in(actions).reshape(actions.shape[0], 1, cfg.model_dim)
        batch = max(b, actions.shape[0])
        x = torch.cat([context.expand(batch, -1, -1), action_token.expand(batch, -1, -1)], dim=1) + self.pos_embedding
        fast = not self.training and self.inference_fast_path
        x = self.final_norm(self._encode_inference(x) if fast else self.encoder(x))
        return self.head(x[:, : cfg.out_tokens])

    def _encode_inference(self, x: torch.Tensor) -> torch.Tensor:
        """``self.encoder(x)`` in eval mode written out op by op (pre-norm layers, GELU, no dropout): the same
        operations on the same weights — equal to the ``nn.TransformerEncoder`` call (tested) — without
        ``nn.MultiheadAttention``'s Python argument handling, which dominated a guided step's dynamics
        forward + backward for these small models (``dynaguide bench realtime``).  ``x (B, n, d)``."""
        b, n, d = x.shape
        for layer in self.encoder.layers:
            attn = layer.self_attn
            heads = attn.num_heads
            qkv = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias)
            q, k, v = qkv.view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            mixed = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
            x = x + attn.out_proj(mixed)
            x = x + layer.linear2(F.gelu(layer.linear1(layer.norm2(x))))
        return x

    def forward(self, obs_tokens: torch.Tensor, proprio: torch.Tensor | None, actions: torch.Tensor) -> torch.Tensor:
        """``obs_tokens (B, N, D)`` embedder output, ``proprio (B, P)`` raw, ``actions (B, T, A)`` normalised
        → predicted final-frame latent ``(B, N_out, D)``."""
        return self.predict_from_context(self.encode_context(obs_tokens, proprio), actions)

    def compute_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
                     augment: bool = True, rows: Rows | None = None) -> torch.Tensor:
        """MSE between the prediction and ``outcome_latent(target_tokens)``.

        ``batch``: ``obs_tokens (B, N, D)``, ``target_tokens (B, N, D)``, ``proprio (B, P)`` raw,
        ``actions (B, T, A)`` raw (normalised here, then noise-augmented when ``augment``).
        """
        if not self.normalizers_fitted:
            raise ValueError("normaliser stats are not set: call set_normalizer_stats (training does it from the data)")
        actions = self.action_normalizer.normalize(batch["actions"].float())
        if augment:
            actions, _ = noise_actions_for_dynamics(
                actions, self.noise_scheduler, generator, self.cfg.noised_fraction, self.cfg.geometric_p, rows
            )
        pred = self(batch["obs_tokens"].float(), batch.get("proprio"), actions)
        target = self.outcome_latent(batch["target_tokens"].float())
        return F.mse_loss(pred, target)
