"""The latent guidance scale of DynaGuide (b) matched to the classifier guidance of (a), cached in
``<work_dir>/eval/calibration.json``."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import torch

from .. import dataset as ds
from ..config import BlockTouchConfig
from .goals import layout_goal_frames
from .models import Models, build_sampler
from .workdir import Paths, log, record_stage


def calibrate_latent_scale(cfg: BlockTouchConfig, models: Models, num_frames: int = 64) -> dict:
    """Scale s for DynaGuide (b) giving it the same guidance strength as (a) at ``classifier_scale``.

    On ``num_frames`` training frames (fixed seed; no evaluation scene is used) the demonstrated chunk is
    noised to a random inference timestep and the gradient norms ``‖∇_a d‖`` of both objectives (target
    blue; (b) with the ``random`` layout's goal set) are compared:
    ``s_b = classifier_scale · median‖∇ d_a‖ / median‖∇ d_b‖``.
    """
    from dynaguide.diffusion import make_ddim_scheduler
    from dynaguide.guidance import DynaGuideObjective, objective_value_and_grad

    from ..methods import classifier_objective

    demos = ds.load_demos(Paths(cfg).demos, max_demos=200)
    rng = np.random.default_rng(cfg.eval.seed + 5)
    idx = torch.from_numpy(rng.choice(demos.num_frames, size=min(num_frames, demos.num_frames), replace=False))
    batch = ds.classifier_batch(demos, idx, cfg.classifier.horizon, cfg.outcome_plan_tail)
    policy = models.policy
    clean = policy.normalize_actions(batch["actions"])
    scheduler = make_ddim_scheduler(cfg.policy.ddim)
    gen = torch.Generator().manual_seed(cfg.eval.seed + 6)
    steps = scheduler.timesteps[torch.randint(0, len(scheduler.timesteps), (len(idx),), generator=gen)]
    noisy = scheduler.add_noise(clean, torch.randn(clean.shape, generator=gen), steps)
    clf_obj = classifier_objective(models.classifier, batch["image"], batch["proprio"], 0, cfg.eval.other_weight)
    _, g_a = objective_value_and_grad(clf_obj, noisy)
    goals = layout_goal_frames("random", cfg)
    sampler = build_sampler("dynaguide_latent", models, replace(cfg, eval=replace(cfg.eval, latent_scale_match=False)),
                            goals)
    with torch.no_grad():
        tokens = models.embedder(batch["image"])
    lat_obj = DynaGuideObjective(models.dynamics, tokens, batch["proprio"], sampler.goal_sets[0], action_offset=0)
    _, g_b = objective_value_and_grad(lat_obj, noisy)
    norm_a = float(g_a.flatten(1).norm(dim=1).median())
    norm_b = float(g_b.flatten(1).norm(dim=1).median())
    if norm_b <= 0:
        raise ValueError("latent guidance gradient is zero on the calibration frames; cannot match scales")
    return {"latent_scale": cfg.eval.classifier_scale * norm_a / norm_b, "median_grad_norm_classifier": norm_a,
            "median_grad_norm_latent": norm_b, "frames": len(idx)}


def effective_config(cfg: BlockTouchConfig, models: Models) -> tuple[BlockTouchConfig, dict | None]:
    """Apply the latent scale calibration (cached in ``<work_dir>/eval/calibration.json``) when enabled."""
    if not cfg.eval.latent_scale_match or "dynaguide_latent" not in cfg.eval.methods:
        return cfg, None
    path = Paths(cfg).eval / "calibration.json"
    if path.exists():
        calib = json.loads(path.read_text())
    else:
        t0 = time.perf_counter()
        calib = calibrate_latent_scale(cfg, models)
        record_stage(Paths(cfg), "calibrate", time.perf_counter() - t0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(calib, indent=2) + "\n")
    log(f"latent guidance scale matched to the classifier's: {calib}")
    lg = replace(cfg.eval.latent_guidance, scale=float(calib["latent_scale"]))
    return replace(cfg, eval=replace(cfg.eval, latent_guidance=lg)), calib
