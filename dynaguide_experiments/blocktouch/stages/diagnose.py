"""The diagnose study: open-loop first chunks on validation scenes, executed and scored by the outcome
classifier."""

from __future__ import annotations

import json

import numpy as np
import torch

from ..config import BlockTouchConfig
from ..env import BlockTouchEnv
from ..layouts import LAYOUT_NAMES, Scenes, sample_layout
from .evaluate import chw
from .models import IMAGE_KEY, Models, build_sampler
from .workdir import Paths, log


def first_chunk_outcomes(sampler, scenes: Scenes, cfg: BlockTouchConfig, classifier: torch.nn.Module,
                         seed: int) -> dict[str, np.ndarray]:
    """Sample one chunk per scene from its initial observation, execute all ``T`` actions open loop, and
    score the same chunk with the outcome classifier.

    Returns ``touched (N,)`` (block the executed chunk touched first, −1 none) and ``probs (N, C)`` (the
    classifier's outcome probabilities for that chunk).  Tells apart "the outcome model is wrong" from
    "the sampler produced a chunk its own outcome model scores badly".
    """
    to = cfg.policy.n_obs_steps
    env = BlockTouchEnv(cfg.env)
    obs = env.reset_to(scenes.agent, scenes.blocks, scenes.yaw)
    image = chw(obs["image"])
    proprio = torch.from_numpy(obs["proprio"]).float()
    batch = {IMAGE_KEY: image[:, None].repeat(1, to, 1, 1, 1), "proprio": proprio[:, None].repeat(1, to, 1)}
    with torch.no_grad():
        actions = sampler(batch, scenes.target, torch.Generator().manual_seed(seed)).float()
        probs = torch.softmax(classifier(image, proprio, classifier.action_normalizer.normalize(actions)), dim=-1)
    for t in range(actions.shape[1]):
        if env.done.all():
            break
        env.step(actions[:, t].numpy().astype(np.float64))
    return {"touched": env.touched.copy(), "probs": probs.numpy()}


def stage_diagnose(cfg: BlockTouchConfig, methods: tuple[str, ...], layouts: tuple[str, ...], scenes_per_layout: int,
                   seed_offset: int = 50_000, command: str = "") -> dict:
    """Open-loop first-chunk diagnosis on *validation* scenes (as :func:`stage_sweep`): per (layout, method)
    the rate at which the executed chunk touches the target first (``chunk_target_rate``), the classifier's
    mean probability of the target for those chunks (``classifier_p_target``) and its accuracy on the
    chunks that touched a block (``classifier_accuracy``).  Writes ``<results_dir>/diagnose.json``."""
    paths = Paths(cfg)
    models = Models(cfg)
    out: dict = {"command": command, "seed": cfg.eval.seed + seed_offset, "scenes": scenes_per_layout,
                 "classifier_scale": cfg.eval.classifier_scale, "results": {}}
    for layout in layouts:
        li = LAYOUT_NAMES.index(layout)
        scenes = sample_layout(layout, np.random.default_rng(cfg.eval.seed + seed_offset + 7919 * li),
                               scenes_per_layout, cfg.env)
        for method in methods:
            if method not in ("base", "dynaguide_classifier", "sampling"):
                raise ValueError(f"diagnose supports base, dynaguide_classifier and sampling, not {method!r}")
            res = first_chunk_outcomes(build_sampler(method, models, cfg, None), scenes, cfg, models.classifier,
                                       seed=cfg.eval.seed + seed_offset + li)
            touched, probs, target = res["touched"], res["probs"], scenes.target
            hit = touched >= 0
            summary = {
                "chunk_target_rate": float(np.mean(touched == target)),
                "chunk_touched_any": float(np.mean(hit)),
                "classifier_p_target": float(np.mean(probs[np.arange(len(target)), target])),
                "classifier_accuracy": float(np.mean(probs[hit].argmax(-1) == touched[hit])) if hit.any() else None,
                "n": int(len(target)),
            }
            out["results"].setdefault(layout, {})[method] = summary
            log(f"diagnose {layout}/{method}: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()
                                                             if isinstance(v, float)))
    paths.results.mkdir(parents=True, exist_ok=True)
    (paths.results / "diagnose.json").write_text(json.dumps(out, indent=2) + "\n")
    return out
