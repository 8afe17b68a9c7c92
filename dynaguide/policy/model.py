"""The base diffusion policy: per-camera image encoders + proprioception → FiLM-conditioned 1-D U-Net.

Time convention: at control step ``t`` the policy sees observations ``o_{t-To+1} … o_t`` and predicts
the chunk ``a_t … a_{t+T-1}`` — the chunk **starts at the current step**, so the same chunk is
executed (its first ``n_action_steps``) and fed to the latent dynamics model without any shift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dynaguide.config import check_ranges
from dynaguide.diffusion import DDIMConfig, make_ddim_scheduler
from dynaguide.distributed import Rows, batch_size_drawn, take_rows
from dynaguide.normalization import ActionProprioNormalizers
from dynaguide.policy.unet import ConditionalUnet1D
from dynaguide.policy.vision import ImageEncoder


@dataclass
class DiffusionPolicyConfig:
    """Architecture and I/O of :class:`DiffusionPolicy` (defaults = the paper's CALVIN policy)."""

    image_keys: tuple[str, ...] = ("rgb_static", "rgb_gripper")
    image_size: int = 84
    proprio_dim: int = 15
    action_dim: int = 7
    horizon: int = 16
    n_obs_steps: int = 2
    n_action_steps: int = 8
    backbone: str = "resnet18"
    num_keypoints: int = 32
    cnn_width: int = 32
    down_dims: tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    step_embed_dim: int = 256
    goal_conditioned: bool = False
    goal_key: str = "goal_image"
    random_shift: int = 4  # training-only augmentation: shift images by up to ±n pixels (edge-padded)
    ddim: DDIMConfig = field(default_factory=DDIMConfig)

    def __post_init__(self) -> None:
        self.image_keys = tuple(self.image_keys)
        self.down_dims = tuple(self.down_dims)
        check_ranges(self, {"image_size": (1, 4096), "proprio_dim": (0, 65536), "action_dim": (1, 4096),
                            "horizon": (1, 4096), "n_obs_steps": (1, 1024), "n_action_steps": (1, 4096),
                            "num_keypoints": (1, 4096), "cnn_width": (1, 4096), "down_dims": (1, 16384),
                            "kernel_size": (1, 63), "n_groups": (1, 1024), "step_embed_dim": (1, 16384),
                            "random_shift": (0, 1024)})
        if not 1 <= len(self.down_dims) <= 8:
            raise ValueError(f"down_dims must have 1 to 8 levels, got {len(self.down_dims)}")
        if not self.image_keys:
            raise ValueError("image_keys must name at least one camera")
        if "proprio" in self.image_keys or self.goal_key in self.image_keys:
            raise ValueError("image_keys may not contain 'proprio' or the goal key")
        for name in ("image_size", "action_dim", "horizon", "n_obs_steps", "n_action_steps", "num_keypoints"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.proprio_dim < 0:
            raise ValueError("proprio_dim must be >= 0")
        if self.random_shift < 0:
            raise ValueError("random_shift must be >= 0")
        if self.n_action_steps > self.horizon:
            raise ValueError(f"n_action_steps ({self.n_action_steps}) cannot exceed horizon ({self.horizon})")
        factor = 2 ** (len(self.down_dims) - 1)
        if self.horizon % factor:
            raise ValueError(f"horizon {self.horizon} must be divisible by 2**(len(down_dims)-1) = {factor}")
        if self.backbone not in ("resnet18", "small_cnn"):
            raise ValueError(f"backbone must be 'resnet18' or 'small_cnn', got {self.backbone!r}")

    @classmethod
    def paper(cls, **overrides) -> DiffusionPolicyConfig:
        """ResNet-18 (GroupNorm) + 32 keypoints per camera, U-Net 256/512/1024, kernel 5, To=2, T=16, ±4 px shifts."""
        return cls(**overrides)

    @classmethod
    def cpu(cls, **overrides) -> DiffusionPolicyConfig:
        """Small CNN + 16 keypoints, U-Net 64/128, 64x64 images, no shift augmentation: trains in minutes on a CPU."""
        base = dict(
            image_keys=("rgb",), image_size=64, backbone="small_cnn", num_keypoints=16, cnn_width=32,
            down_dims=(64, 128), kernel_size=5, n_groups=8, step_embed_dim=64, random_shift=0,
        )
        base.update(overrides)
        return cls(**base)


class DiffusionPolicy(ActionProprioNormalizers, nn.Module):
    """Epsilon-prediction diffusion policy implementing :class:`dynaguide.interfaces.NoisePredictionPolicy`.

    Observation dict: every key in ``cfg.image_keys`` → ``(B, To, 3, H, W)`` float in [0, 1];
    ``"proprio"`` → ``(B, To, P)`` raw units (normalised inside with stored min/max);
    ``cfg.goal_key`` → ``(B, 3, H, W)`` when ``cfg.goal_conditioned``.  Extra time steps (more than
    ``To``) are allowed: the last ``To`` are used.  Actions in/out of ``predict_noise`` are normalised to
    [-1, 1]; ``unnormalize_actions`` maps them to raw units with the stats saved in the checkpoint.
    """

    checkpoint_kind = "diffusion_policy"
    action_offset = 0
    """Index in the predicted chunk of the current step: 0, the chunk starts at ``t`` (unlike
    diffusion_policy's ``To - 1``).  Execute ``chunk[:n_action_steps]``; feed the dynamics model
    ``chunk[action_offset:]`` — i.e. the whole chunk, no shift."""

    def __init__(self, cfg: DiffusionPolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.horizon = cfg.horizon
        self.action_dim = cfg.action_dim
        self.n_obs_steps = cfg.n_obs_steps
        self.n_action_steps = cfg.n_action_steps
        self.encoders = nn.ModuleDict({
            key: ImageEncoder(cfg.backbone, cfg.num_keypoints, cfg.image_size, cfg.cnn_width) for key in cfg.image_keys
        })
        feat = 2 * cfg.num_keypoints
        self.goal_encoder = None
        if cfg.goal_conditioned:
            self.goal_encoder = ImageEncoder(cfg.backbone, cfg.num_keypoints, cfg.image_size, cfg.cnn_width)
        self.obs_feature_dim = len(cfg.image_keys) * feat + cfg.proprio_dim
        self.cond_dim = cfg.n_obs_steps * self.obs_feature_dim + (feat if cfg.goal_conditioned else 0)
        self.noise_net = ConditionalUnet1D(
            cfg.action_dim, self.cond_dim, cfg.down_dims, cfg.kernel_size, cfg.n_groups, cfg.step_embed_dim
        )
        self._init_normalizers(cfg.action_dim, cfg.proprio_dim)
        self._train_scheduler = make_ddim_scheduler(cfg.ddim)

    # ---------------------------------------------------------------- normalisation (stats: ActionProprioNormalizers)
    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Raw ``(..., A)`` → ``(..., A)`` in [-1, 1]."""
        return self.action_normalizer.normalize(actions)

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., A)`` → raw units ``(..., A)``."""
        return self.action_normalizer.unnormalize(actions)

    # ---------------------------------------------------------------- conditioning
    def encode_observation(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Observation dict (see class docstring) → global conditioning ``(B, cond_dim)``."""
        if not isinstance(obs, dict):
            raise ValueError(f"obs must be a dict of tensors, got {type(obs).__name__}")
        to = self.n_obs_steps
        parts = []
        batch = None
        for key in self.cfg.image_keys:
            if key not in obs:
                raise ValueError(f"observation is missing camera {key!r} (have {sorted(obs)})")
            images = obs[key]
            if images.ndim != 5 or images.shape[2] != 3:
                raise ValueError(f"obs[{key!r}] must be (B, To, 3, H, W), got {tuple(images.shape)}")
            if images.shape[1] < to:
                raise ValueError(f"obs[{key!r}] has {images.shape[1]} time steps, the policy needs {to}")
            images = images[:, -to:]
            b = images.shape[0]
            if batch is not None and b != batch:
                raise ValueError("all observation entries must share the batch size")
            batch = b
            feats = self.encoders[key](images.reshape(b * to, *images.shape[2:]).float())
            parts.append(feats.reshape(b, to, -1))
        if self.proprio_normalizer is not None:
            if "proprio" not in obs:
                raise ValueError("observation is missing 'proprio'")
            proprio = obs["proprio"]
            if proprio.ndim != 3 or proprio.shape[1] < to or proprio.shape[2] != self.cfg.proprio_dim:
                raise ValueError(
                    f"obs['proprio'] must be (B, >= {to}, {self.cfg.proprio_dim}), got {tuple(proprio.shape)}"
                )
            if proprio.shape[0] != batch:
                raise ValueError("proprio batch size differs from the images'")
            parts.append(self.proprio_normalizer.normalize(proprio[:, -to:].float()))
        cond = torch.cat(parts, dim=-1).reshape(batch, -1)
        if self.goal_encoder is not None:
            goal = obs.get(self.cfg.goal_key)
            if goal is None:
                raise ValueError(f"goal-conditioned policy needs obs[{self.cfg.goal_key!r}] (B, 3, H, W)")
            if goal.ndim != 4 or goal.shape[0] != batch:
                raise ValueError(f"obs[{self.cfg.goal_key!r}] must be (B, 3, H, W), got {tuple(goal.shape)}")
            cond = torch.cat([cond, self.goal_encoder(goal.float())], dim=-1)
        return cond

    def predict_noise(self, noisy_actions: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``noisy_actions (B, T, A)`` normalised, ``timesteps (B,)`` long (or a scalar), ``cond (B or 1, C)``
        → predicted noise ``(B, T, A)``.  A single conditioning row is shared by all B chunks."""
        if noisy_actions.ndim != 3 or noisy_actions.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(
                f"noisy_actions must be (B, {self.horizon}, {self.action_dim}), got {tuple(noisy_actions.shape)}"
            )
        if cond.ndim != 2 or cond.shape[1] != self.cond_dim:
            raise ValueError(f"cond must be (B, {self.cond_dim}), got {tuple(cond.shape)}")
        if cond.shape[0] == 1 and noisy_actions.shape[0] > 1:
            cond = cond.expand(noisy_actions.shape[0], -1)
        if cond.shape[0] != noisy_actions.shape[0]:
            raise ValueError(f"cond batch {cond.shape[0]} != actions batch {noisy_actions.shape[0]}")
        return self.noise_net(noisy_actions, timesteps, cond)

    # ---------------------------------------------------------------- training
    def compute_loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None,
                     rows: Rows | None = None) -> torch.Tensor:
        """Epsilon-prediction MSE.  ``batch``: observation entries + ``"actions" (B, T, A)`` raw units.
        ``rows``: the batch is these rows of a larger one (:class:`dynaguide.distributed.Rows`; random shifts,
        noise and timesteps are drawn for the whole batch, these rows kept)."""
        if not self.normalizers_fitted:
            raise ValueError("normaliser stats are not set: call set_normalizer_stats (training does it from the data)")
        actions = batch["actions"].float()
        if actions.ndim != 3 or actions.shape[1:] != (self.horizon, self.action_dim):
            raise ValueError(
                f"batch['actions'] must be (B, {self.horizon}, {self.action_dim}), got {tuple(actions.shape)}"
            )
        if self.training and self.cfg.random_shift > 0:
            batch = self._shift_images(batch, generator, rows)
        cond = self.encode_observation(batch)
        clean = self.normalize_actions(actions)
        b = batch_size_drawn(rows, clean.shape[0])
        gen_device = generator.device if generator is not None else clean.device
        noise = take_rows(torch.randn((b, *clean.shape[1:]), generator=generator, device=gen_device),
                          rows).to(clean.device)
        steps = take_rows(torch.randint(0, self.cfg.ddim.num_train_timesteps, (b,), generator=generator,
                                        device=gen_device), rows).to(clean.device)
        noisy = self._train_scheduler.add_noise(clean, noise, steps)
        return F.mse_loss(self.predict_noise(noisy, steps, cond), noise)

    def _shift_images(self, batch: dict[str, torch.Tensor],
                      generator: torch.Generator | None, rows: Rows | None = None) -> dict[str, torch.Tensor]:
        """Random translation by up to ±``random_shift`` px per sample and camera (same shift for all To frames)."""
        pad = self.cfg.random_shift
        out = dict(batch)
        keys = list(self.cfg.image_keys) + ([self.cfg.goal_key] if self.cfg.goal_conditioned else [])
        for key in keys:
            images = batch.get(key)
            if images is None:
                continue
            h, w = images.shape[-2:]
            flat = images.reshape(-1, images.shape[-3], h, w) if images.ndim == 5 else images
            padded = F.pad(flat.float(), (pad, pad, pad, pad), mode="replicate")
            padded = padded.reshape(*images.shape[:-2], h + 2 * pad, w + 2 * pad)
            offsets = take_rows(torch.randint(0, 2 * pad + 1, (batch_size_drawn(rows, images.shape[0]), 2),
                                              generator=generator,
                                              device=generator.device if generator is not None else "cpu"),
                                rows).tolist()
            out[key] = torch.stack([padded[b, ..., dy:dy + h, dx:dx + w] for b, (dy, dx) in enumerate(offsets)])
        return out

    @torch.no_grad()
    def sample_actions(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """Unguided DDIM sampling → raw-unit actions ``(B, T, A)``: the one sampling loop
        (:func:`dynaguide.guidance.sampler.guided_ddim_sample`) without an objective."""
        from dynaguide.guidance.sampler import guided_ddim_sample

        sample = guided_ddim_sample(self, self.encode_observation(obs), None, scale=0.0, ddim=self.cfg.ddim,
                                    generator=generator)
        return self.unnormalize_actions(sample.actions)
