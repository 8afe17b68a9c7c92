"""The sweep study: guidance scales on validation scenes (disjoint from the evaluation scenes)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from ..config import BlockTouchConfig
from ..evaluation import rollout
from ..layouts import LAYOUT_NAMES, sample_layout
from .calibration import effective_config
from .goals import layout_goal_frames
from .models import IMAGE_KEY, Models, build_sampler
from .workdir import Paths, log


def stage_sweep(cfg: BlockTouchConfig, scales: list[float], methods: tuple[str, ...], layouts: tuple[str, ...],
                rollouts: int, seed_offset: int = 50_000, command: str = "") -> dict:
    """Guidance-scale sweep on *validation* scenes (seed ``eval.seed + seed_offset``, disjoint from the
    evaluation scenes).  Writes ``<results_dir>/sweep.json``: ``{method: {scale: {layout: summary}}}``.
    For ``dynaguide_latent`` the scale is a multiplier of the calibrated scale."""
    paths = Paths(cfg)
    models = Models(cfg)
    eff, calib = effective_config(cfg, models)
    out: dict = {"command": command, "seed": cfg.eval.seed + seed_offset, "rollouts": rollouts,
                 "latent_scale_calibration": calib, "results": {}}
    for method in methods:
        for scale in scales:
            if method == "dynaguide_classifier":
                run_cfg = replace(eff, eval=replace(eff.eval, classifier_scale=scale))
            elif method == "dynaguide_latent":
                lg = replace(eff.eval.latent_guidance, scale=eff.eval.latent_guidance.scale * scale)
                run_cfg = replace(eff, eval=replace(eff.eval, latent_guidance=lg))
            else:
                raise ValueError(f"sweep supports dynaguide_classifier and dynaguide_latent, not {method!r}")
            for layout in layouts:
                li = LAYOUT_NAMES.index(layout)
                scenes = sample_layout(layout, np.random.default_rng(run_cfg.eval.seed + seed_offset + 7919 * li),
                                       rollouts, cfg.env)
                goals = layout_goal_frames(layout, cfg) if method == "dynaguide_latent" else None
                sampler = build_sampler(method, models, run_cfg, goals)
                res = rollout(sampler, scenes, cfg.env, n_obs_steps=cfg.policy.n_obs_steps,
                              n_action_steps=cfg.eval.n_action_steps, horizon=cfg.eval.horizon,
                              seed=cfg.eval.seed + seed_offset + li, image_key=IMAGE_KEY)
                summary = res.summary()
                key = f"{run_cfg.eval.stochastic_mode}:{scale}"
                out["results"].setdefault(method, {}).setdefault(key, {})[layout] = summary
                log(f"sweep {method} scale {scale} {layout}: rate {summary['rate']:.2f} "
                     f"left {summary['left_arena']:.2f} touched {summary['touched_any']:.2f}")
                paths.results.mkdir(parents=True, exist_ok=True)
                (paths.results / f"sweep_{cfg.eval.stochastic_mode}.json").write_text(json.dumps(out, indent=2) + "\n")
    return out
