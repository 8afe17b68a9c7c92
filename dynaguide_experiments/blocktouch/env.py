"""The BlockTouch arena: batched 2-D point-agent physics and numpy rendering.

Facts kept from the paper's appendix A.1 / the official env:

* a square arena of ``arena_px = 512`` pixels with walls; the agent is a circle of radius 20 px;
* an action is an absolute target position ``a in [-1, 1]^2`` (target px = (a + 1) / 2 * 512);
* control at 10 Hz over 100 Hz physics: every physics step
  ``acc = clip(100 * (target - pos) - 20 * vel, -1000, 1000)`` (px/s^2, per axis), then
  semi-implicit Euler ``vel += acc * dt; pos += vel * dt`` with ``dt = 0.01 s``;
* four 40 x 40 px blocks with a yaw, coloured blue, red, green, yellow = class ids 0, 1, 2, 3;
* the episode ends when the agent circle touches a block (exact circle / rotated-square test, checked
  after every physics step, the closest block wins a tie) or when the agent circle crosses a wall
  (leaves the arena).

Coordinates are pixels ``(x, y)`` with x = image column and y = image row (row 0 at the top).
Everything is vectorised over a batch of ``B`` independent environments stepped in lockstep.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COLOR_NAMES: tuple[str, ...] = ("blue", "red", "green", "yellow")
"""Class id -> colour name (the ``behavior`` attribute of a demonstration)."""
COLOR_RGB: np.ndarray = np.array([[30, 60, 230], [220, 40, 40], [40, 180, 60], [235, 200, 30]], dtype=np.uint8)
AGENT_RGB = np.array([40, 40, 40], dtype=np.uint8)
BACKGROUND_RGB = np.array([235, 235, 235], dtype=np.uint8)
WALL_RGB = np.array([110, 110, 110], dtype=np.uint8)
NUM_BLOCKS = 4
STATE_DIM = 4 + 3 * NUM_BLOCKS
"""Flat state: agent x, y (px), agent vx, vy (px/s), then per block x, y (px), yaw (rad)."""


@dataclass
class BlockTouchEnvConfig:
    """Physics and rendering constants (pixels, seconds)."""

    arena_px: float = 512.0
    agent_radius: float = 20.0
    block_size: float = 40.0
    control_hz: int = 10
    physics_hz: int = 100
    kp: float = 100.0
    kd: float = 20.0
    acc_limit: float = 1000.0
    image_size: int = 64
    """Rendered image side in pixels (paper 128; CPU config 64)."""
    supersample: int = 2
    """Render at ``image_size * supersample`` and average down (anti-aliasing)."""
    wall_px: float = 6.0
    """Drawn wall thickness in arena pixels (visual only)."""

    def __post_init__(self) -> None:
        if self.physics_hz % self.control_hz != 0:
            raise ValueError(f"physics_hz ({self.physics_hz}) must be a multiple of control_hz ({self.control_hz})")
        if self.image_size < 8 or self.supersample < 1:
            raise ValueError(f"image_size must be >= 8 and supersample >= 1, got {self.image_size}, {self.supersample}")
        if self.arena_px <= 2 * self.agent_radius:
            raise ValueError("arena_px must exceed the agent diameter")

    @property
    def substeps(self) -> int:
        return self.physics_hz // self.control_hz

    @property
    def dt(self) -> float:
        return 1.0 / self.physics_hz


def action_to_px(actions: np.ndarray, arena_px: float = 512.0) -> np.ndarray:
    """Absolute target ``actions (..., 2)`` in [-1, 1] -> pixels ``(a + 1) / 2 * arena_px``."""
    return (np.asarray(actions, dtype=np.float64) + 1.0) * 0.5 * arena_px


def px_to_unit(px: np.ndarray, arena_px: float = 512.0) -> np.ndarray:
    """Pixels -> [-1, 1] (inverse of :func:`action_to_px`)."""
    return np.asarray(px, dtype=np.float64) / arena_px * 2.0 - 1.0


def pd_substep(pos: np.ndarray, vel: np.ndarray, target_px: np.ndarray,
               cfg: BlockTouchEnvConfig) -> tuple[np.ndarray, np.ndarray]:
    """One physics step: ``pos, vel, target_px (B, 2)`` (px, px/s) -> new ``(pos, vel)``."""
    acc = np.clip(cfg.kp * (target_px - pos) - cfg.kd * vel, -cfg.acc_limit, cfg.acc_limit)
    vel = vel + acc * cfg.dt
    pos = pos + vel * cfg.dt
    return pos, vel


def circle_square_distance(center: np.ndarray, block_pos: np.ndarray, block_yaw: np.ndarray, half: float) -> np.ndarray:
    """Distance from points to rotated squares (0 inside).

    ``center (..., 2)`` broadcast against ``block_pos (..., 2)`` and ``block_yaw (...)`` (radians);
    ``half`` = half the side (px).  Returns ``(...)`` px.
    """
    d = center - block_pos
    c, s = np.cos(block_yaw), np.sin(block_yaw)
    local_x = c * d[..., 0] + s * d[..., 1]
    local_y = -s * d[..., 0] + c * d[..., 1]
    ex = np.maximum(np.abs(local_x) - half, 0.0)
    ey = np.maximum(np.abs(local_y) - half, 0.0)
    return np.hypot(ex, ey)


def touched_block(agent_pos: np.ndarray, block_pos: np.ndarray, block_yaw: np.ndarray,
                  cfg: BlockTouchEnvConfig) -> np.ndarray:
    """Index of the block the agent circle touches, or -1: ``agent_pos (B, 2)``, ``block_pos (B, K, 2)`` -> ``(B,)``."""
    dist = circle_square_distance(agent_pos[:, None, :], block_pos, block_yaw, cfg.block_size / 2)
    closest = np.argmin(dist, axis=1)
    hit = dist[np.arange(len(dist)), closest] <= cfg.agent_radius
    return np.where(hit, closest, -1)


def out_of_arena(agent_pos: np.ndarray, cfg: BlockTouchEnvConfig) -> np.ndarray:
    """True where the agent circle crosses a wall: ``agent_pos (B, 2)`` px -> ``(B,)`` bool."""
    r = cfg.agent_radius
    return np.any((agent_pos < r) | (agent_pos > cfg.arena_px - r), axis=-1)


def _subpixel_centres(cfg: BlockTouchEnvConfig) -> np.ndarray:
    hi = cfg.image_size * cfg.supersample
    return (np.arange(hi) + 0.5) * (cfg.arena_px / hi)


def _downsample(img: np.ndarray, cfg: BlockTouchEnvConfig) -> np.ndarray:
    f = cfg.supersample
    if f == 1:
        return img
    s = img.shape[1] // f
    return img.reshape(img.shape[0], s, f, s, f, *img.shape[3:]).mean(axis=(2, 4))


def render_static(block_pos: np.ndarray, block_yaw: np.ndarray, cfg: BlockTouchEnvConfig) -> np.ndarray:
    """Background, walls and blocks (no agent): ``(B, S, S, 3)`` float32 RGB in [0, 255]."""
    block_pos = np.asarray(block_pos, dtype=np.float64)
    block_yaw = np.asarray(block_yaw, dtype=np.float64)
    b = block_pos.shape[0]
    coords = _subpixel_centres(cfg)
    gx, gy = np.meshgrid(coords, coords)  # gx varies along columns (x), gy along rows (y)
    img = np.empty((b, len(coords), len(coords), 3), dtype=np.float32)
    img[:] = BACKGROUND_RGB
    far = cfg.arena_px - cfg.wall_px
    wall = (gx < cfg.wall_px) | (gx > far) | (gy < cfg.wall_px) | (gy > far)
    img[:, wall] = WALL_RGB
    half = cfg.block_size / 2
    for k in range(block_pos.shape[1]):
        dx = gx[None] - block_pos[:, k, 0, None, None]
        dy = gy[None] - block_pos[:, k, 1, None, None]
        c = np.cos(block_yaw[:, k])[:, None, None]
        s = np.sin(block_yaw[:, k])[:, None, None]
        inside = (np.abs(c * dx + s * dy) <= half) & (np.abs(-s * dx + c * dy) <= half)
        img[inside] = COLOR_RGB[k]
    return _downsample(img, cfg).astype(np.float32)


def composite_agent(static: np.ndarray, agent_pos: np.ndarray, cfg: BlockTouchEnvConfig) -> np.ndarray:
    """Draw the agent disc over ``static (B, S, S, 3)`` float: returns ``(B, S, S, 3)`` uint8.

    Only a window around each agent is touched; per pixel the disc's coverage (fraction of the
    ``supersample²`` sub-pixels inside the disc) blends the agent colour over the static layer.
    """
    agent_pos = np.asarray(agent_pos, dtype=np.float64)
    b, s = static.shape[0], static.shape[1]
    f = cfg.supersample
    px = cfg.arena_px / s
    w = int(np.ceil(2 * cfg.agent_radius / px)) + 2
    lo = np.floor(agent_pos / px).astype(np.int64) - w // 2  # (B, 2) first pixel col (x), row (y)
    idx = lo[:, None, :] + np.arange(w)[None, :, None]  # (B, w, 2)
    idx = np.clip(idx, 0, s - 1)
    sub = (idx[:, :, None, :] * f + np.arange(f)[None, None, :, None] + 0.5) * (px / f)  # (B, w, f, 2) px
    sub = sub.reshape(b, w * f, 2)
    dx = sub[:, None, :, 0] - agent_pos[:, 0, None, None]  # (B, 1, wf) columns
    dy = sub[:, :, None, 1] - agent_pos[:, 1, None, None]  # (B, wf, 1) rows
    inside = (dx * dx + dy * dy <= cfg.agent_radius ** 2).astype(np.float32)  # (B, wf rows, wf cols)
    cov = inside.reshape(b, w, f, w, f).mean(axis=(2, 4))[..., None]  # (B, w rows, w cols, 1)
    out = static.copy()
    bi = np.arange(b)[:, None, None]
    rows = idx[:, :, 1][:, :, None]
    cols = idx[:, :, 0][:, None, :]
    window = static[bi, rows, cols]
    out[bi, rows, cols] = window * (1.0 - cov) + AGENT_RGB.astype(np.float32) * cov
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render(agent_pos: np.ndarray, block_pos: np.ndarray, block_yaw: np.ndarray, cfg: BlockTouchEnvConfig) -> np.ndarray:
    """RGB images ``(B, S, S, 3)`` uint8 for ``agent_pos (B, 2)``, ``block_pos (B, 4, 2)``, ``block_yaw (B, 4)``."""
    return composite_agent(render_static(block_pos, block_yaw, cfg), agent_pos, cfg)


@dataclass
class StepResult:
    """Per-env outcome of one control step (all ``(B,)``)."""

    done: np.ndarray
    touched: np.ndarray
    """Class id of the touched block, -1 when none."""
    out: np.ndarray
    newly_done: np.ndarray


@dataclass
class BlockTouchEnv:
    """``B`` arenas stepped in lockstep; finished envs are frozen (their actions are ignored)."""

    cfg: BlockTouchEnvConfig = field(default_factory=BlockTouchEnvConfig)
    agent_pos: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    agent_vel: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    block_pos: np.ndarray = field(default_factory=lambda: np.zeros((0, NUM_BLOCKS, 2)))
    block_yaw: np.ndarray = field(default_factory=lambda: np.zeros((0, NUM_BLOCKS)))
    done: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    touched: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    out: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    static_layer: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1, 3), dtype=np.float32))
    """Cached background + walls + blocks ``(B, S, S, 3)`` float (blocks never move)."""

    @property
    def batch_size(self) -> int:
        return int(self.agent_pos.shape[0])

    def reset_to(self, agent_pos: np.ndarray, block_pos: np.ndarray, block_yaw: np.ndarray) -> dict[str, np.ndarray]:
        """Place ``agent_pos (B, 2)``, ``block_pos (B, 4, 2)`` px and ``block_yaw (B, 4)`` rad; agent at rest."""
        agent_pos = np.asarray(agent_pos, dtype=np.float64)
        block_pos = np.asarray(block_pos, dtype=np.float64)
        block_yaw = np.asarray(block_yaw, dtype=np.float64)
        b = agent_pos.shape[0]
        if agent_pos.shape != (b, 2) or block_pos.shape != (b, NUM_BLOCKS, 2) or block_yaw.shape != (b, NUM_BLOCKS):
            raise ValueError(
                f"reset_to expects agent (B,2), blocks (B,{NUM_BLOCKS},2), yaw (B,{NUM_BLOCKS}); "
                f"got {agent_pos.shape}, {block_pos.shape}, {block_yaw.shape}")
        self.agent_pos = agent_pos.copy()
        self.agent_vel = np.zeros_like(agent_pos)
        self.block_pos = block_pos.copy()
        self.block_yaw = block_yaw.copy()
        self.touched = touched_block(self.agent_pos, self.block_pos, self.block_yaw, self.cfg)
        self.out = out_of_arena(self.agent_pos, self.cfg)
        self.done = (self.touched >= 0) | self.out
        self.steps = np.zeros(b, dtype=np.int64)
        self.static_layer = render_static(self.block_pos, self.block_yaw, self.cfg)
        return self.observe()

    def step(self, actions: np.ndarray, active: np.ndarray | None = None) -> StepResult:
        """Apply absolute targets ``actions (B, 2)`` in [-1, 1] for one control period (10 physics steps).

        ``active (B,)`` bool, optional: only these (unfinished) arenas advance; the others stay frozen
        (used to stop rollouts at a time horizon).
        """
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (self.batch_size, 2):
            raise ValueError(f"actions must have shape ({self.batch_size}, 2), got {actions.shape}")
        if not np.all(np.isfinite(actions)):
            raise ValueError("actions contain NaN or inf")
        target = action_to_px(np.clip(actions, -1.0, 1.0), self.cfg.arena_px)
        was_done = self.done.copy()
        if active is None:
            moving = ~self.done
        else:
            active = np.asarray(active, dtype=bool)
            if active.shape != (self.batch_size,):
                raise ValueError(f"active must have shape ({self.batch_size},), got {active.shape}")
            moving = active & ~self.done
        counted = moving.copy()
        active = moving
        for _ in range(self.cfg.substeps):
            if not active.any():
                break
            idx = np.flatnonzero(active)
            pos, vel = pd_substep(self.agent_pos[idx], self.agent_vel[idx], target[idx], self.cfg)
            self.agent_pos[idx], self.agent_vel[idx] = pos, vel
            hit = touched_block(pos, self.block_pos[idx], self.block_yaw[idx], self.cfg)
            left = out_of_arena(pos, self.cfg) & (hit < 0)
            self.touched[idx] = np.where(hit >= 0, hit, self.touched[idx])
            self.out[idx] |= left
            finished = (hit >= 0) | left
            self.done[idx] |= finished
            self.agent_vel[idx[finished]] = 0.0
            active = moving & ~self.done
        self.steps[counted] += 1
        return StepResult(done=self.done.copy(), touched=self.touched.copy(), out=self.out.copy(),
                          newly_done=self.done & ~was_done)

    def observe(self) -> dict[str, np.ndarray]:
        """``{"image": (B, S, S, 3) uint8, "proprio": (B, 2) agent position in [-1, 1]}``."""
        return {
            "image": composite_agent(self.static_layer, self.agent_pos, self.cfg),
            "proprio": px_to_unit(self.agent_pos, self.cfg.arena_px).astype(np.float32),
        }

    def state_vector(self) -> np.ndarray:
        """``(B, 16)`` float32: agent x, y, vx, vy, then (x, y, yaw) per block."""
        blocks = np.concatenate([self.block_pos, self.block_yaw[..., None]], axis=-1).reshape(self.batch_size, -1)
        return np.concatenate([self.agent_pos, self.agent_vel, blocks], axis=-1).astype(np.float32)
