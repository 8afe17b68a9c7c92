"""1-D temporal U-Net over action chunks with FiLM conditioning (diffusion policy's noise network).

``ConditionalUnet1D(action_dim, global_cond_dim, down_dims, kernel_size, n_groups, step_embed_dim)``
maps ``noisy_actions (B, T, A)``, ``timesteps (B,)`` and ``global_cond (B, C)`` to predicted noise
``(B, T, A)``.  Every residual block modulates its features with a per-channel scale and bias computed
from ``[step embedding, global_cond]`` (FiLM).  T must be divisible by ``2 ** (len(down_dims) - 1)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SinusoidalStepEmbedding(nn.Module):
    """Diffusion step ``(B,)`` → ``(B, dim)`` sin/cos features with geometric frequencies."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"step embedding dim must be even, got {dim}")
        self.dim = dim

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        exponents = torch.arange(half, device=steps.device, dtype=torch.float32) / (half - 1)
        freqs = torch.exp(-math.log(10000.0) * exponents)
        angles = steps.float()[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class _ConvNormMish(nn.Sequential):
    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, n_groups: int) -> None:
        super().__init__(
            nn.Conv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2), nn.GroupNorm(n_groups, out_ch), nn.Mish()
        )


class FiLMResidualBlock1D(nn.Module):
    """Two conv blocks; the first one's output is FiLM-modulated by the conditioning vector."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, kernel_size: int, n_groups: int) -> None:
        super().__init__()
        self.block1 = _ConvNormMish(in_ch, out_ch, kernel_size, n_groups)
        self.block2 = _ConvNormMish(out_ch, out_ch, kernel_size, n_groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_ch))
        self.residual = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def modulation(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The FiLM ``(scale, bias)``, each ``(B, out_ch, 1)``, of the conditioning vector ``cond (B, C)``."""
        scale, bias = self.film(cond).unsqueeze(-1).chunk(2, dim=1)
        return scale, bias

    def forward(self, x: torch.Tensor, cond: torch.Tensor,
                modulation: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        h = self.block1(x)
        scale, bias = self.modulation(cond) if modulation is None else modulation
        h = self.block2(scale * h + bias)
        return h + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """See module docstring.  Shapes: ``(B, T, A)``, ``(B,)``, ``(B, C)`` → ``(B, T, A)``.

    Conditioning reuse (``reuse_conditioning``, on): the step embedding and every block's FiLM scale and bias
    depend only on ``timesteps`` and ``global_cond``, not on the noisy actions.  A guided sampler with M
    stochastic steps calls the network M times in a row with the same two tensors (the same objects); in eval
    mode, when no gradient can reach the weights, the modulations of the last call are then reused — the same
    operations on the same inputs, so the output is bit for bit the recomputed one (tested), minus the
    conditioning MLPs' time.  The cache is keyed on the identity and version counter of both tensors (one
    cache inside ``torch.inference_mode``, one outside).
    """

    reuse_conditioning: bool = True

    def __init__(
        self,
        action_dim: int,
        global_cond_dim: int,
        down_dims: tuple[int, ...] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        step_embed_dim: int = 256,
    ) -> None:
        super().__init__()
        if not down_dims:
            raise ValueError("down_dims must not be empty")
        for d in down_dims:
            if d % n_groups:
                raise ValueError(f"every down dim must be divisible by n_groups={n_groups}, got {d}")
        self.down_factor = 2 ** (len(down_dims) - 1)
        self.step_encoder = nn.Sequential(
            SinusoidalStepEmbedding(step_embed_dim),
            nn.Linear(step_embed_dim, 4 * step_embed_dim),
            nn.Mish(),
            nn.Linear(4 * step_embed_dim, step_embed_dim),
        )
        cond_dim = step_embed_dim + global_cond_dim
        dims = [action_dim, *down_dims]
        block = lambda i, o: FiLMResidualBlock1D(i, o, cond_dim, kernel_size, n_groups)  # noqa: E731
        self.down = nn.ModuleList()
        for level, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = level == len(down_dims) - 1
            self.down.append(nn.ModuleList([
                block(d_in, d_out), block(d_out, d_out),
                nn.Conv1d(d_out, d_out, 3, 2, 1) if not last else nn.Identity(),
            ]))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        reversed_pairs = list(zip(dims[1:-1], dims[2:]))[::-1]  # (lower-res dim_in, dim_out)
        for d_in, d_out in reversed_pairs:
            self.up.append(nn.ModuleList([
                block(2 * d_out, d_in), block(d_in, d_in), nn.ConvTranspose1d(d_in, d_in, 4, 2, 1),
            ]))
        self.final = nn.Sequential(
            _ConvNormMish(down_dims[0], down_dims[0], kernel_size, n_groups), nn.Conv1d(down_dims[0], action_dim, 1)
        )

    def forward(self, noisy_actions: torch.Tensor, timesteps: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        if noisy_actions.ndim != 3:
            raise ValueError(f"noisy_actions must be (B, T, A), got {tuple(noisy_actions.shape)}")
        if noisy_actions.shape[1] % self.down_factor:
            raise ValueError(f"horizon {noisy_actions.shape[1]} must be divisible by {self.down_factor}")
        mods = iter(self._modulations(noisy_actions, timesteps, global_cond))
        x = noisy_actions.transpose(1, 2)
        skips = []
        for block1, block2, downsample in self.down:
            x = block2(block1(x, None, next(mods)), None, next(mods))
            skips.append(x)
            x = downsample(x)
        for block in self.mid:
            x = block(x, None, next(mods))
        for block1, block2, upsample in self.up:
            x = torch.cat([x, skips.pop()], dim=1)
            x = upsample(block2(block1(x, None, next(mods)), None, next(mods)))
        return self.final(x).transpose(1, 2)

    def _blocks(self) -> list[FiLMResidualBlock1D]:
        """The FiLM blocks in the order :meth:`forward` runs them."""
        return ([b for level in self.down for b in level[:2]] + list(self.mid)
                + [b for level in self.up for b in level[:2]])

    def _modulations(self, noisy_actions: torch.Tensor, timesteps, global_cond: torch.Tensor) -> list:
        """Every block's FiLM ``(scale, bias)``, reused from the previous call when allowed (class docstring)."""
        tensors = [t for t in (timesteps, global_cond) if isinstance(t, torch.Tensor)]
        # inference tensors keep no version counter: an in-place change could not be seen, so they are not reused
        reuse = self.reuse_conditioning and not self.training and not any(t.is_inference() for t in tensors) and not (
            torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()))
        key = (timesteps, timesteps._version if reuse and isinstance(timesteps, torch.Tensor) else None,
               global_cond, global_cond._version if reuse else None, noisy_actions.shape[0], noisy_actions.device)
        # one cache per mode: inference-mode tensors cannot enter a graph (RTC's Jacobian pass alternates the two)
        slot = "_cached_modulations_inference" if torch.is_inference_mode_enabled() else "_cached_modulations"
        cached = getattr(self, slot, None)
        if reuse and cached is not None and len(cached[0]) == len(key) and all(
                a is b if isinstance(a, torch.Tensor) else a == b for a, b in zip(cached[0], key)):
            return cached[1]
        b = noisy_actions.shape[0]
        steps = torch.as_tensor(timesteps, device=noisy_actions.device)
        if steps.ndim == 0:
            steps = steps.expand(b)
        cond = torch.cat([self.step_encoder(steps), global_cond], dim=-1)
        mods = [block.modulation(cond) for block in self._blocks()]
        # kept only when reusable (holding the key tensors also keeps their ids from being recycled)
        setattr(self, slot, (key, mods) if reuse else None)
        return mods
