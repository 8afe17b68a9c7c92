"""Goal frames per evaluation layout (DynaGuide (b)'s goal sets and the goal-conditioned baseline's goals)."""

from __future__ import annotations

import numpy as np

from ..config import BlockTouchConfig
from ..env import NUM_BLOCKS
from ..layouts import LAYOUT_NAMES, sample_layout
from ..scripted import simulate_scripted_batch


def layout_goal_frames(layout: str, cfg: BlockTouchConfig) -> dict[int, np.ndarray]:
    """Goal images per colour for ``layout``: final (touch) frames of scripted episodes started from that
    layout's distribution (own seed, disjoint from the evaluation scenes) that touched the colour.
    Returns class -> ``(K, S, S, 3)`` uint8 with ``K <= goals_per_class`` (empty if never reached)."""
    k = cfg.eval.goals_per_class
    rng = np.random.default_rng(cfg.eval.goal_seed + 7919 * LAYOUT_NAMES.index(layout))
    frames: dict[int, list[np.ndarray]] = {c: [] for c in range(NUM_BLOCKS)}
    for _ in range(40):
        need = [c for c in range(NUM_BLOCKS) if len(frames[c]) < k]
        if not need:
            break
        targets = np.repeat(need, max(2 * k, 8))
        scenes = sample_layout(layout, rng, len(targets), cfg.env)
        for ep in simulate_scripted_batch(rng, targets, cfg.collect, cfg.env, scenes):
            if ep.touched == ep.target and len(frames[ep.target]) < k:
                frames[ep.target].append(ep.final_image[0])
    size = cfg.env.image_size
    return {c: (np.stack(f) if f else np.zeros((0, size, size, 3), np.uint8)) for c, f in frames.items()}
