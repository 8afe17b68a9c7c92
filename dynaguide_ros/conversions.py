"""numpy <-> ROS message conversions, with validation that names what is wrong.

No cv_bridge (not on PyPI for ROS 2): images are converted with numpy.  Sequence fields are filled
from raw bytes (``array.array``), never element by element (a 640x480 image: ~1 ms instead of ~80 ms).
All ``*_from_msg`` functions raise :class:`MessageError` (a ``ValueError``) on malformed input.
"""

from __future__ import annotations

import array
import math

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image

from dynaguide.chunk_execution import check_chunk, chunk_from_flat
from dynaguide.image_msgs import SUPPORTED_ENCODINGS, MessageError, rgb_from_image_msg  # noqa: F401  (the nodes import them here)
from dynaguide_msgs.msg import ActionChunk, PatchEmbedding

def _float32_array(values: np.ndarray) -> array.array:
    out = array.array("f")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return out


def time_to_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def seconds_to_time(seconds: float) -> Time:
    sec = math.floor(seconds)
    return Time(sec=int(sec), nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


# ----------------------------------------------------------------------------------------- images
def rgb_to_image_msg(rgb: np.ndarray, stamp: Time | None = None, frame_id: str = "") -> Image:
    """``rgb (H, W, 3) uint8`` → ``sensor_msgs/Image`` (encoding rgb8)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise MessageError(f"expected an (H, W, 3) uint8 RGB array, got {rgb.dtype} {rgb.shape}")
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(rgb).tobytes()
    return msg


# ----------------------------------------------------------------------------------- action chunks
def chunk_to_msg(actions: np.ndarray, action_space: str, stamp: Time, dt: float, start_index: int = 0,
                 sequence: int = 0, guided: bool = False, frame_id: str = "", commit_steps: int = 0,
                 frozen_steps: int = 0) -> ActionChunk:
    """``actions (T, A)`` (un-normalised, units of ``action_space``) → ``ActionChunk``; ``commit_steps``: the
    policy's executed actions per chunk (0 = all); ``frozen_steps``: actions from ``start_index`` on that real-time
    chunking constrained to the previous chunk's (0 = none; at most ``T - start_index``)."""
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 2:
        raise MessageError(f"actions must be (T, A), got shape {actions.shape}")
    if not 0 <= start_index < actions.shape[0]:
        raise MessageError(f"start_index {start_index} outside the chunk of {actions.shape[0]} actions")
    msg = ActionChunk()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.action_space = action_space
    msg.horizon, msg.action_dim = int(actions.shape[0]), int(actions.shape[1])
    msg.actions = _float32_array(actions)
    msg.start_index = int(start_index)
    msg.dt = float(dt)
    msg.sequence = int(sequence)
    msg.guided = bool(guided)
    if commit_steps < 0:
        raise MessageError(f"commit_steps must be >= 0, got {commit_steps}")
    msg.commit_steps = int(commit_steps)
    if not 0 <= frozen_steps <= actions.shape[0] - start_index:
        raise MessageError(f"frozen_steps {frozen_steps} outside [0, {actions.shape[0] - start_index}] "
                           f"(the chunk's {actions.shape[0]} actions from start_index {start_index})")
    msg.frozen_steps = int(frozen_steps)
    return msg


def chunk_from_msg(msg: ActionChunk) -> np.ndarray:
    """``ActionChunk`` → ``(T, A) float32``; raises :class:`MessageError` if inconsistent or non-finite (the rules
    of :func:`dynaguide.chunk_execution.chunk_from_flat` and :func:`~dynaguide.chunk_execution.check_chunk`)."""
    try:
        actions = chunk_from_flat(np.frombuffer(msg.actions, dtype=np.float32), msg.horizon, msg.action_dim,
                                  dtype=np.float32).copy()
        check_chunk(actions, msg.dt, msg.start_index, frozen_steps=msg.frozen_steps)
    except ValueError as exc:
        raise MessageError(str(exc)) from exc
    return actions


# ------------------------------------------------------------------------------------- embeddings
def embedding_to_msg(tokens: np.ndarray, grid_hw: tuple[int, int], embedder_id: str,
                     stamp: Time | None = None) -> PatchEmbedding:
    """``tokens (N, D)`` with ``N = grid_h * grid_w`` → ``PatchEmbedding``."""
    tokens = np.asarray(tokens, dtype=np.float32)
    gh, gw = int(grid_hw[0]), int(grid_hw[1])
    if tokens.ndim != 2 or tokens.shape[0] != gh * gw:
        raise MessageError(f"tokens must be ({gh}*{gw}, D), got {tokens.shape}")
    msg = PatchEmbedding()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.embedder_id = embedder_id
    msg.grid_h, msg.grid_w, msg.dim = gh, gw, int(tokens.shape[1])
    msg.data = _float32_array(tokens)
    return msg


def embedding_from_msg(msg: PatchEmbedding) -> np.ndarray:
    """``PatchEmbedding`` → ``(N, D) float32``."""
    n, d = int(msg.grid_h) * int(msg.grid_w), int(msg.dim)
    if n <= 0 or d <= 0:
        raise MessageError(f"embedding grid {msg.grid_h}x{msg.grid_w} and dim {d} must be positive")
    if len(msg.data) != n * d:
        raise MessageError(f"embedding has {len(msg.data)} values, expected {n}*{d}")
    out = np.frombuffer(msg.data, dtype=np.float32).reshape(n, d).copy()
    if not np.isfinite(out).all():
        raise MessageError("embedding contains NaN or infinite values")
    return out
