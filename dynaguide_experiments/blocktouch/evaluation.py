"""Lockstep rollouts of a chunk sampler in many BlockTouch arenas, and the touch-rate statistics.

All rollouts of one (layout, method) cell run in one :class:`~.env.BlockTouchEnv`: every control
chunk, the sampler is called once for all still-running arenas; the first ``n_action_steps`` actions
of each chunk are executed (finished arenas ignore theirs).  An episode ends on a touch, on leaving
the arena, or after ``horizon`` control steps (400, as the paper).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .env import BlockTouchEnv, BlockTouchEnvConfig
from .layouts import Scenes


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score 95 % interval for a binomial proportion ``successes / n``."""
    if n <= 0:
        raise ValueError(f"need at least one trial, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact bounds, no 1e-18 round-off
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


@dataclass
class RolloutResult:
    """Outcome per rollout: ``touched (N,)`` class or -1, ``out (N,)``, ``steps (N,)``, ``target (N,)``,
    ``trajectories`` list of ``(L, 2)`` agent px positions (one per control step, start included)."""

    touched: np.ndarray
    out: np.ndarray
    steps: np.ndarray
    target: np.ndarray
    trajectories: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0
    sampler_calls: int = 0

    @property
    def success(self) -> np.ndarray:
        return self.touched == self.target

    def summary(self) -> dict:
        n = len(self.touched)
        k = int(self.success.sum())
        lo, hi = wilson_interval(k, n)
        return {"rate": k / n, "ci95": [lo, hi], "n": n, "touched_any": float(np.mean(self.touched >= 0)),
                "left_arena": float(np.mean(self.out)), "mean_steps": float(np.mean(self.steps)),
                "touch_share": [float(np.mean(self.touched == c)) for c in range(4)], "seconds": self.seconds}


def _to_chw_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, -3))).float() / 255.0


def rollout(sampler, scenes: Scenes, env_cfg: BlockTouchEnvConfig, *, n_obs_steps: int = 2, n_action_steps: int = 8,
            horizon: int = 400, seed: int = 0, image_key: str = "rgb", goal_images: torch.Tensor | None = None,
            max_batch: int | None = None) -> RolloutResult:
    """Run ``len(scenes)`` rollouts of ``sampler`` in lockstep (see module docstring).

    ``goal_images (N, 3, S, S)``, when given, is passed to the sampler as ``obs["goal_image"]``.
    ``max_batch`` caps how many arenas share one sampler call (memory); None = all.
    """
    if n_action_steps < 1 or horizon < 1:
        raise ValueError("n_action_steps and horizon must be >= 1")
    t0 = time.perf_counter()
    env = BlockTouchEnv(env_cfg)
    obs = env.reset_to(scenes.agent, scenes.blocks, scenes.yaw)
    n = len(scenes)
    history_img = [_to_chw_float(obs["image"])] * n_obs_steps
    history_pro = [torch.from_numpy(obs["proprio"])] * n_obs_steps
    traj = [[p.copy()] for p in env.agent_pos]
    generator = torch.Generator().manual_seed(seed)
    calls = 0
    while True:
        active = np.flatnonzero(~env.done & (env.steps < horizon))
        if len(active) == 0:
            break
        sel = torch.from_numpy(active)
        chunks = []
        step = max_batch or len(active)
        for i in range(0, len(active), step):
            part = sel[i:i + step]
            batch = {image_key: torch.stack([h[part] for h in history_img], dim=1),
                     "proprio": torch.stack([h[part] for h in history_pro], dim=1)}
            if goal_images is not None:
                batch["goal_image"] = goal_images[part]
            chunks.append(sampler(batch, scenes.target[part.numpy()], generator))
            calls += 1
        actions = torch.cat(chunks).numpy()
        for k in range(min(n_action_steps, actions.shape[1])):
            running = ~env.done & (env.steps < horizon)
            if not running.any():
                break
            full = np.zeros((n, 2))
            full[active] = actions[:, k]
            env.step(full, active=running)
            obs = env.observe()
            history_img = history_img[1:] + [_to_chw_float(obs["image"])]
            history_pro = history_pro[1:] + [torch.from_numpy(obs["proprio"])]
            for i in np.flatnonzero(running):
                traj[i].append(env.agent_pos[i].copy())
    return RolloutResult(touched=env.touched.copy(), out=env.out.copy(), steps=env.steps.copy(),
                         target=np.asarray(scenes.target).copy(), trajectories=[np.array(t) for t in traj],
                         seconds=time.perf_counter() - t0, sampler_calls=calls)
