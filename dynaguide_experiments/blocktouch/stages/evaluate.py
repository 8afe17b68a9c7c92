"""The eval stage: every (layout, method) cell rolled out on the same scenes, resumable cell by cell."""

from __future__ import annotations

import json
import shutil
import time
from functools import partial

import numpy as np
import torch

from ..config import BlockTouchConfig
from ..evaluation import rollout
from ..layouts import LAYOUT_NAMES, Scenes, sample_layout
from .calibration import effective_config
from .goals import layout_goal_frames
from .models import IMAGE_KEY, Models, build_sampler
from .results import write_results
from .workdir import Paths, log, record_stage, reset_stages, timed


def chw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, -3))).float() / 255.0


def evaluate_cell(layout: str, method: str, cfg: BlockTouchConfig, models: Models,
                  goals: dict[int, np.ndarray] | None) -> dict:
    """Roll out ``cfg.eval.rollouts`` episodes of ``method`` on ``layout``; the scenes depend only on the
    layout and the seed, so every method sees the same initial conditions (paired comparison)."""
    e = cfg.eval
    li = LAYOUT_NAMES.index(layout)
    scenes = sample_layout(layout, np.random.default_rng(e.seed + 7919 * li), e.rollouts, cfg.env)
    goal_images = None
    if method == "goal_conditioned":
        assert goals is not None
        rng = np.random.default_rng(e.seed + 31 + li)
        picks = []
        for t in scenes.target:
            if len(goals[int(t)]) == 0:
                raise ValueError(f"layout {layout}: no goal frames for colour {int(t)}")
            picks.append(goals[int(t)][rng.integers(len(goals[int(t)]))])
        goal_images = chw(np.stack(picks))
    sampler = build_sampler(method, models, cfg, goals)
    res = rollout(sampler, scenes, cfg.env, n_obs_steps=cfg.policy.n_obs_steps, n_action_steps=e.n_action_steps,
                  horizon=e.horizon, seed=e.seed + 101 * li + 7, image_key=IMAGE_KEY, goal_images=goal_images,
                  max_batch=e.max_batch)
    summary = res.summary()
    paths = Paths(cfg)
    out = paths.cell(layout, method)
    out.parent.mkdir(parents=True, exist_ok=True)
    if e.trajectories_plotted > 0 and method != "goal_conditioned":
        # Fig.-7-style samples: several rollouts from one and the same scene (the layout's first one)
        p = e.trajectories_plotted
        one = Scenes(np.repeat(scenes.agent[:1], p, 0), np.repeat(scenes.blocks[:1], p, 0),
                     np.repeat(scenes.yaw[:1], p, 0), np.repeat(scenes.target[:1], p, 0))
        fig = rollout(sampler, one, cfg.env, n_obs_steps=cfg.policy.n_obs_steps, n_action_steps=e.n_action_steps,
                      horizon=e.horizon, seed=e.seed + 101 * li + 8, image_key=IMAGE_KEY, max_batch=e.max_batch)
        np.savez_compressed(out.with_suffix(".npz"), agent=one.agent, blocks=one.blocks, yaw=one.yaw, target=one.target,
                            touched=fig.touched, **{f"traj_{i}": fig.trajectories[i] for i in range(p)})
        summary["figure_scene_rate"] = float(np.mean(fig.success))
    out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def stage_eval(cfg: BlockTouchConfig, force: bool = False, command: str = "") -> dict:
    paths = Paths(cfg)
    if force:
        reset_stages(paths, ("eval", "goal_frames", "calibrate"))
        if paths.eval.exists():
            shutil.rmtree(paths.eval)
    models = Models(cfg)
    cfg, _ = effective_config(cfg, models)
    for layout in cfg.eval.layouts:
        goals = None
        for method in cfg.eval.methods:
            cell = paths.cell(layout, method)
            if cell.exists():
                log(f"eval {layout}/{method}: done, skipping")
                continue
            if goals is None and method in ("dynaguide_latent", "goal_conditioned"):
                goals = timed(paths, "goal_frames", partial(layout_goal_frames, layout, cfg))
            t0 = time.perf_counter()
            summary = evaluate_cell(layout, method, cfg, models, goals)
            record_stage(paths, "eval", time.perf_counter() - t0)
            log(f"eval {layout}/{method}: rate {summary['rate']:.3f} ci95 [{summary['ci95'][0]:.3f}, "
                 f"{summary['ci95'][1]:.3f}] n={summary['n']} ({summary['seconds']:.0f} s)")
    return write_results(cfg, command)
