"""Initial conditions: the random reset and the five evaluation layouts of the paper.

Pixel coordinates ``(x, y)``; ``±j`` is uniform jitter in ``[c - j, c + j]``.  Block order is the class
order blue, red, green, yellow.  Every sampled scene must be *valid*: the agent circle inside the walls,
block centres within ``[20, 492]`` px, and all pairwise centre distances (agent and blocks) ≥ 60 px, so
that no episode starts touching a block; layouts whose jitter box reaches outside that region
(``cube_blockade``'s blue block at x = 60 ± 60, ``early_decision``'s overlapping boxes) are sampled by
rejection, i.e. uniformly over the valid part of the box.

``around_column`` is given in the paper only as "a 2 × 2 cluster of blocks near the centre, agent in a
corner"; here the cluster centre is (256, 256) ± 20 with cells 70 px apart (blue top-left, red
top-right, green bottom-right, yellow bottom-left, each ± 5) and the agent starts in the opposite
(bottom-right) corner at (450, 450) ± 30, so the straight line to blue runs through the column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .env import NUM_BLOCKS, BlockTouchEnvConfig

MIN_PAIR_DISTANCE_PX = 60.0
BLOCK_CENTER_RANGE = (20.0, 492.0)
LAYOUT_NAMES: tuple[str, ...] = ("random", "early_decision", "late_decision", "cube_blockade", "around_column")


@dataclass(frozen=True)
class JitterBox:
    """Uniform box: centre ``(cx, cy)`` px with half-widths ``(jx, jy)`` px."""

    cx: float
    cy: float
    jx: float
    jy: float

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``(n, 2)`` px."""
        u = rng.uniform(-1.0, 1.0, size=(n, 2))
        return np.array([self.cx, self.cy]) + u * np.array([self.jx, self.jy])


@dataclass(frozen=True)
class LayoutSpec:
    """Agent box, one box per block (class order), and the target class (None = cycle all colours)."""

    agent: JitterBox
    blocks: tuple[JitterBox, JitterBox, JitterBox, JitterBox]
    target: int | None = 0


LAYOUTS: dict[str, LayoutSpec] = {
    "early_decision": LayoutSpec(
        agent=JitterBox(255, 255, 70, 70),
        blocks=(JitterBox(128, 128, 90, 90), JitterBox(128, 384, 90, 90),
                JitterBox(384, 384, 90, 90), JitterBox(384, 128, 90, 90))),
    "late_decision": LayoutSpec(
        agent=JitterBox(420, 120, 70, 70),
        blocks=(JitterBox(100, 340, 0, 25), JitterBox(100, 420, 0, 25),
                JitterBox(150, 460, 25, 0), JitterBox(230, 460, 25, 0))),
    "cube_blockade": LayoutSpec(
        agent=JitterBox(450, 250, 60, 60),
        blocks=(JitterBox(60, 250, 60, 60), JitterBox(320, 250, 60, 60),
                JitterBox(320, 450, 60, 60), JitterBox(320, 60, 60, 60))),
    "around_column": LayoutSpec(
        agent=JitterBox(450, 450, 30, 30),
        blocks=(JitterBox(221, 221, 5, 5), JitterBox(291, 221, 5, 5),
                JitterBox(291, 291, 5, 5), JitterBox(221, 291, 5, 5))),
}


@dataclass
class Scenes:
    """A batch of initial conditions: ``agent (B, 2)`` px, ``blocks (B, 4, 2)`` px, ``yaw (B, 4)`` rad,
    ``target (B,)``."""

    agent: np.ndarray
    blocks: np.ndarray
    yaw: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return int(self.agent.shape[0])


def valid_scenes(agent: np.ndarray, blocks: np.ndarray, env_cfg: BlockTouchEnvConfig | None = None) -> np.ndarray:
    """Validity mask ``(B,)`` for ``agent (B, 2)`` and ``blocks (B, 4, 2)`` px (see module docstring)."""
    cfg = env_cfg or BlockTouchEnvConfig()
    r = cfg.agent_radius
    ok = np.all((agent > r) & (agent < cfg.arena_px - r), axis=-1)
    ok &= np.all((blocks >= BLOCK_CENTER_RANGE[0]) & (blocks <= BLOCK_CENTER_RANGE[1]), axis=(1, 2))
    pts = np.concatenate([agent[:, None, :], blocks], axis=1)
    d = np.linalg.norm(pts[:, :, None, :] - pts[:, None, :, :], axis=-1)
    iu = np.triu_indices(pts.shape[1], k=1)
    ok &= np.all(d[:, iu[0], iu[1]] >= MIN_PAIR_DISTANCE_PX, axis=-1)
    return ok


def _rejection(draw, rng: np.random.Generator, n: int,
               env_cfg: BlockTouchEnvConfig | None) -> tuple[np.ndarray, np.ndarray]:
    agents, blocks, have = [], [], 0
    for _ in range(10_000):
        a, b = draw(rng, max(2 * (n - have), 16))
        keep = valid_scenes(a, b, env_cfg)
        agents.append(a[keep])
        blocks.append(b[keep])
        have += int(keep.sum())
        if have >= n:
            return np.concatenate(agents)[:n], np.concatenate(blocks)[:n]
    raise RuntimeError("could not sample valid scenes (rejection sampling did not converge)")


def sample_random_scenes(rng: np.random.Generator, n: int, env_cfg: BlockTouchEnvConfig | None = None) -> Scenes:
    """Random reset: agent and blocks at integer px in [40, 470), pairwise ≥ 60 px, yaw U[0, π/2); target cycles
    0..3."""
    def draw(r: np.random.Generator, m: int):
        pts = r.integers(40, 470, size=(m, NUM_BLOCKS + 1, 2)).astype(np.float64)
        return pts[:, 0], pts[:, 1:]
    agent, blocks = _rejection(draw, rng, n, env_cfg)
    yaw = rng.uniform(0.0, np.pi / 2, size=(n, NUM_BLOCKS))
    return Scenes(agent, blocks, yaw, np.arange(n) % NUM_BLOCKS)


def sample_layout(name: str, rng: np.random.Generator, n: int, env_cfg: BlockTouchEnvConfig | None = None) -> Scenes:
    """``n`` scenes of layout ``name`` (one of :data:`LAYOUT_NAMES`)."""
    if n <= 0:
        raise ValueError(f"number of scenes must be positive, got {n}")
    if name == "random":
        return sample_random_scenes(rng, n, env_cfg)
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; choose from {list(LAYOUT_NAMES)}")
    spec = LAYOUTS[name]

    def draw(r: np.random.Generator, m: int):
        return spec.agent.sample(r, m), np.stack([box.sample(r, m) for box in spec.blocks], axis=1)

    agent, blocks = _rejection(draw, rng, n, env_cfg)
    yaw = rng.uniform(0.0, np.pi / 2, size=(n, NUM_BLOCKS))
    target = np.full(n, spec.target if spec.target is not None else 0, dtype=np.int64)
    return Scenes(agent, blocks, yaw, target)
