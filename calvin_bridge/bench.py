"""Environment speed: control steps per second with and without camera rendering."""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from calvin_bridge.config import CalvinEnvConfig
from calvin_bridge.env import CalvinEnv


def steps_per_second(config: CalvinEnvConfig, steps: int = 60, render: bool = True, seed: int = 0) -> float:
    """Control steps (30 Hz, 8 physics substeps each) per wall-clock second for random small actions."""
    cfg = dataclasses.replace(config, render_every_step=render)
    rng = np.random.default_rng(seed)
    with CalvinEnv(cfg) as env:
        env.reset(seed=seed)
        env.step(np.zeros(7))  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            env.step(np.concatenate([rng.uniform(-0.3, 0.3, 6), [1.0]]))
        return steps / (time.perf_counter() - start)


def bench(config: CalvinEnvConfig, sizes: tuple[int, ...] = (200, 96), steps: int = 60) -> dict[str, float]:
    """``{"no_render": sps, "render_<S>": sps per static size S (gripper camera 84x84)}``."""
    out = {"no_render": steps_per_second(config, steps, render=False)}
    for size in sizes:
        cam = dataclasses.replace(config.static_camera, width=size, height=size)
        out[f"render_{size}"] = steps_per_second(dataclasses.replace(config, static_camera=cam), steps, render=True)
    return out
