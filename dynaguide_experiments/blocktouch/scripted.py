"""Scripted demonstrations: Bezier paths from the agent to a chosen block, written as HDF5.

For each episode a target colour is chosen (cycling, so every colour is equally often *kept*), a
quadratic Bezier curve is drawn from the agent to the target block's centre through 0 or 1
intermediate control waypoints placed uniformly anywhere in the arena (inside the walls), the curve
is resampled at equal arc length (``step_px`` per control step, drawn per episode), and the targets
are fed to the PD controller with small Gaussian action noise; after the path ends the last point is
held.  An episode is kept only if it touches the *intended* block after at least ``min_steps`` control
steps (paths that clip another block or a wall are discarded from the demonstrations).

The outcome models (classifier, latent dynamics) should also learn what happens when a path clips the
wrong block, which the demonstrations never show: :func:`collect_demos` can write the rejected episodes
that touched *another* block after ``min_steps`` to a second file (same layout, ``touched != target``),
the "failures".  The policy never trains on them.

HDF5 layout: the shared one of :mod:`dynaguide.data.schema` (robomimic / official DynaGuide compatible; written by
:func:`dynaguide.data.writer.write_demo`) with camera ``image``, plus BlockTouch's ``final_obs/*``, ``plan_tail`` and
attrs ``touched``/``target``::

    data/demo_<i>/actions           (T, 2)        float32, absolute targets in [-1, 1]
    data/demo_<i>/obs/image         (T, S, S, 3)  uint8 RGB, the observation *before* action t
    data/demo_<i>/obs/proprio       (T, 2)        float32, agent position in [-1, 1]
    data/demo_<i>/obs/states        (T, 16)       float32, see env.STATE_DIM
    data/demo_<i>/final_obs/image   (1, S, S, 3)  uint8, the frame at the touch (episode outcome)
    data/demo_<i>/final_obs/proprio (1, 2), final_obs/states (1, 16)
    data/demo_<i>/plan_tail         (L, 2)        float32, the scripted targets after the last step
    attrs: behavior = colour name of the touched block, touched = its class id, target = intended id,
    num_samples = T.  ``data`` attrs: total, env_config (JSON), collector_config (JSON).
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from dynaguide.config import to_dict
from dynaguide.data.schema import Demo
from dynaguide.data.writer import write_demo

from .env import COLOR_NAMES, NUM_BLOCKS, BlockTouchEnv, BlockTouchEnvConfig, px_to_unit
from .layouts import Scenes, sample_random_scenes


@dataclass
class CollectorConfig:
    """Scripted-demonstration settings (pixels unless stated)."""

    num_demos: int = 2000
    """Kept episodes; must be a multiple of 4 (equal colour counts)."""
    seed: int = 0
    waypoint_prob: float = 0.5
    """Probability of one intermediate Bezier waypoint (else a straight path)."""
    step_px_range: tuple[float, float] = (14.0, 26.0)
    """Arc length between consecutive targets, drawn uniformly per episode."""
    action_noise: float = 0.02
    """Std of Gaussian noise on the targets, in [-1, 1] action units (0.02 ≈ 5 px)."""
    min_steps: int = 8
    max_steps: int = 120
    plan_tail_steps: int = 16
    """Planned targets stored after the episode's last executed step (noise-free), so outcome models see
    chunks that run on past a touch — executing them touches the same block first."""
    num_failures: int = 2000
    """Failure episodes (touched another block) to collect when a failures file is asked for."""
    batch_size: int = 256
    """Episodes simulated in lockstep per batch."""

    def __post_init__(self) -> None:
        if self.num_demos <= 0 or self.num_demos % NUM_BLOCKS:
            raise ValueError(f"num_demos must be a positive multiple of {NUM_BLOCKS}, got {self.num_demos}")
        if not 0.0 <= self.waypoint_prob <= 1.0:
            raise ValueError(f"waypoint_prob must be in [0, 1], got {self.waypoint_prob}")
        lo, hi = self.step_px_range
        if not 0 < lo <= hi:
            raise ValueError(f"step_px_range must satisfy 0 < lo <= hi, got {self.step_px_range}")
        if self.min_steps < 1 or self.max_steps <= self.min_steps:
            raise ValueError("need 1 <= min_steps < max_steps")


def bezier_targets(start: np.ndarray, end: np.ndarray, waypoint: np.ndarray | None, step_px: float,
                   resolution: int = 256) -> np.ndarray:
    """Targets along a Bezier curve at equal arc length ``step_px`` (px), excluding ``start``, ending at ``end``.

    ``start, end, waypoint`` are ``(2,)`` px; ``waypoint=None`` gives the straight segment.
    Returns ``(L, 2)`` px with ``L = ceil(length / step_px)`` (≥ 1).
    """
    t = np.linspace(0.0, 1.0, resolution)[:, None]
    if waypoint is None:
        curve = (1 - t) * start + t * end
    else:
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * waypoint + t ** 2 * end
    seg = np.linalg.norm(np.diff(curve, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    length = s[-1]
    n = max(int(np.ceil(length / step_px)), 1)
    wanted = np.linspace(length / n, length, n)
    return np.stack([np.interp(wanted, s, curve[:, 0]), np.interp(wanted, s, curve[:, 1])], axis=1)


@dataclass
class Episode:
    actions: np.ndarray
    images: np.ndarray
    proprio: np.ndarray
    states: np.ndarray
    final_image: np.ndarray
    final_proprio: np.ndarray
    final_state: np.ndarray
    plan_tail: np.ndarray
    """``(plan_tail_steps, 2)`` the targets the script would have sent next (the plan's end is held)."""
    target: int
    touched: int


def simulate_scripted_batch(rng: np.random.Generator, targets: np.ndarray, cfg: CollectorConfig,
                            env_cfg: BlockTouchEnvConfig, scenes: Scenes | None = None) -> list[Episode]:
    """Run one lockstep batch of scripted episodes aiming at ``targets (B,)``; returns all episodes (kept or not).

    ``scenes`` (default: random resets) fixes the initial conditions, e.g. an evaluation layout.
    """
    b = len(targets)
    if scenes is None:
        scenes = sample_random_scenes(rng, b, env_cfg)
    elif len(scenes) != b:
        raise ValueError(f"got {len(scenes)} scenes for {b} targets")
    env = BlockTouchEnv(env_cfg)
    obs = env.reset_to(scenes.agent, scenes.blocks, scenes.yaw)
    r = env_cfg.agent_radius
    plans = []
    for i in range(b):
        goal = scenes.blocks[i, targets[i]]
        wp = rng.uniform(r, env_cfg.arena_px - r, size=2) if rng.random() < cfg.waypoint_prob else None
        step_px = rng.uniform(*cfg.step_px_range)
        plans.append(px_to_unit(bezier_targets(scenes.agent[i], goal, wp, step_px), env_cfg.arena_px))
    images, proprio, states, actions = [], [], [], []
    for t in range(cfg.max_steps):
        if env.done.all():
            break
        act = np.stack([p[min(t, len(p) - 1)] for p in plans])
        act = np.clip(act + rng.normal(0.0, cfg.action_noise, size=act.shape), -1.0, 1.0)
        images.append(obs["image"])
        proprio.append(obs["proprio"])
        states.append(env.state_vector())
        actions.append(act.astype(np.float32))
        env.step(act)
        obs = env.observe()
    final = env.observe()
    final_states = env.state_vector()
    episodes = []
    for i in range(b):
        n = int(env.steps[i])
        if n == 0:
            continue
        episodes.append(Episode(
            actions=np.stack([a[i] for a in actions[:n]]),
            images=np.stack([im[i] for im in images[:n]]),
            proprio=np.stack([p[i] for p in proprio[:n]]),
            states=np.stack([s[i] for s in states[:n]]),
            final_image=final["image"][i:i + 1], final_proprio=final["proprio"][i:i + 1],
            final_state=final_states[i:i + 1],
            plan_tail=np.stack([plans[i][min(t, len(plans[i]) - 1)] for t in range(n, n + cfg.plan_tail_steps)]
                               ).astype(np.float32).reshape(cfg.plan_tail_steps, 2),
            target=int(targets[i]), touched=int(env.touched[i])))
    return episodes


def keep_episode(ep: Episode, cfg: CollectorConfig) -> bool:
    """The collector's acceptance rule: touched the intended block after ≥ ``min_steps`` steps."""
    return ep.touched == ep.target and len(ep.actions) >= cfg.min_steps


def is_failure(ep: Episode, cfg: CollectorConfig) -> bool:
    """A rejected episode still useful to the outcome models: it touched a block other than the intended
    one after ≥ ``min_steps`` steps (its label is the block actually touched; an earlier touch says more
    about the start position than about the actions)."""
    return ep.touched >= 0 and ep.touched != ep.target and len(ep.actions) >= cfg.min_steps


def write_episode(data: h5py.Group, name: str, ep: Episode) -> h5py.Group:
    """Write ``ep`` as group ``data/<name>``: the shared layout through :func:`dynaguide.data.writer.write_demo`
    (actions, camera ``image`` gzip-compressed, proprio, states; attrs ``behavior``, ``touched``, ``target``,
    ``num_samples``), then what only BlockTouch stores: ``final_obs/*`` and ``plan_tail``.  Returns the group."""
    comp = dict(compression="gzip", compression_opts=4)
    demo = Demo(actions=ep.actions, images={"image": ep.images}, proprio=ep.proprio, states=ep.states,
                behaviour=COLOR_NAMES[ep.touched])
    group = write_demo(data, demo, name, attrs={"touched": ep.touched, "target": ep.target}, **comp)
    group.create_dataset("final_obs/image", data=ep.final_image, **comp)
    group.create_dataset("final_obs/proprio", data=ep.final_proprio.astype(np.float32))
    group.create_dataset("final_obs/states", data=ep.final_state.astype(np.float32))
    group.create_dataset("plan_tail", data=ep.plan_tail.astype(np.float32))
    return group


def _finish_attrs(data: h5py.Group, lengths: list[int], cfg: CollectorConfig, env_cfg: BlockTouchEnvConfig) -> None:
    data.attrs["total"] = int(sum(lengths))
    data.attrs["env_config"] = json.dumps(to_dict(env_cfg))
    data.attrs["collector_config"] = json.dumps(to_dict(cfg))


def collect_demos(path: str | Path, cfg: CollectorConfig, env_cfg: BlockTouchEnvConfig,
                  progress: bool = True, failures_path: str | Path | None = None) -> dict[str, float]:
    """Collect ``cfg.num_demos`` kept episodes (equal per colour) into HDF5 ``path``; returns statistics.

    With ``failures_path``, the first ``cfg.num_failures`` episodes that :func:`is_failure` accepts are written
    there in the same layout; collection then goes on until both quotas are met.  The demonstrations are
    identical with or without failures (the same random stream; extra batches only add failures).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    per_color = cfg.num_demos // NUM_BLOCKS
    kept = np.zeros(NUM_BLOCKS, dtype=np.int64)
    tried = 0
    lengths: list[int] = []
    fail_lengths: list[int] = []
    t0 = time.perf_counter()
    tmp = path.with_suffix(path.suffix + ".partial")
    fail_tmp = Path(failures_path).with_suffix(Path(failures_path).suffix + ".partial") if failures_path else None
    with h5py.File(tmp, "w") as f, (h5py.File(fail_tmp, "w") if fail_tmp else nullcontext()) as ff:
        data = f.create_group("data")
        fail_data = ff.create_group("data") if ff is not None else None
        bar = tqdm(total=cfg.num_demos, desc="collect", disable=not progress)
        while kept.sum() < cfg.num_demos or (fail_data is not None and len(fail_lengths) < cfg.num_failures):
            missing = np.repeat(np.arange(NUM_BLOCKS), per_color - kept)
            if len(missing) == 0:  # demonstrations complete, more failures wanted: every colour alike
                missing = np.arange(NUM_BLOCKS)
            # Oversample the colours still missing; the acceptance rate is well above 1/3.
            targets = rng.permutation(np.resize(missing, max(cfg.batch_size, 1)))
            for ep in simulate_scripted_batch(rng, targets, cfg, env_cfg):
                tried += int(kept.sum() < cfg.num_demos)
                if fail_data is not None and is_failure(ep, cfg) and len(fail_lengths) < cfg.num_failures:
                    write_episode(fail_data, f"demo_{len(fail_lengths)}", ep)
                    fail_lengths.append(len(ep.actions))
                if not keep_episode(ep, cfg) or kept[ep.target] >= per_color:
                    continue
                write_episode(data, f"demo_{int(kept.sum())}", ep)
                kept[ep.target] += 1
                lengths.append(len(ep.actions))
                bar.update(1)
        bar.close()
        _finish_attrs(data, lengths, cfg, env_cfg)
        if fail_data is not None:
            _finish_attrs(fail_data, fail_lengths, cfg, env_cfg)
    if fail_tmp is not None:
        fail_tmp.replace(Path(failures_path))
    tmp.replace(path)
    return {"demos": float(cfg.num_demos), "tried": float(tried), "acceptance": cfg.num_demos / max(tried, 1),
            "failures": float(len(fail_lengths)),
            "mean_length": float(np.mean(lengths)), "min_length": float(np.min(lengths)),
            "max_length": float(np.max(lengths)), "seconds": time.perf_counter() - t0}

