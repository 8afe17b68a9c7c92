"""Time-stamped execution of action chunks (ROS-free; used by the simulation bridge).

A chunk computed from the observation at time ``t_obs`` schedules action ``i`` (``i >= start_index``)
at ``t_obs + (i - start_index + 1) * dt``.  A newer chunk replaces every not-yet-executed action from
its first scheduled time on (receding horizon).  At each control tick, actions whose time has passed
by more than half a period are dropped as late (as diffusion_policy's real-robot loop does); if nothing
is due, the caller holds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass
class ScheduleStats:
    received: int = 0
    rejected: int = 0
    executed: int = 0
    dropped_late: int = 0
    held: int = 0


class ActionSchedule:
    def __init__(self, action_dim: int, control_dt: float) -> None:
        if action_dim <= 0 or not control_dt > 0:
            raise ValueError("action_dim and control_dt must be positive")
        self.action_dim = action_dim
        self.control_dt = control_dt
        self._queue: deque[tuple[float, np.ndarray]] = deque()
        self._last_stamp = -np.inf
        self.stats = ScheduleStats()

    def add_chunk(self, actions: np.ndarray, stamp: float, dt: float, start_index: int = 0) -> None:
        """Schedule ``actions (T, A)``; raises ``ValueError`` for a malformed or out-of-order chunk."""
        actions = np.asarray(actions, dtype=np.float64)
        self.stats.received += 1
        try:
            if actions.ndim != 2 or actions.shape[1] != self.action_dim:
                raise ValueError(f"chunk must be (T, {self.action_dim}), got {actions.shape}")
            if not np.isfinite(actions).all():
                raise ValueError("chunk contains NaN or infinite actions")
            if not (dt > 0 and np.isfinite(dt)):
                raise ValueError(f"chunk dt must be positive, got {dt}")
            if not 0 <= start_index < len(actions):
                raise ValueError(f"start_index {start_index} outside chunk of {len(actions)}")
            if stamp <= self._last_stamp:
                raise ValueError(f"chunk stamp {stamp:.3f} is not newer than the last one ({self._last_stamp:.3f})")
        except ValueError:
            self.stats.rejected += 1
            raise
        self._last_stamp = stamp
        times = stamp + (np.arange(start_index, len(actions)) - start_index + 1) * dt
        while self._queue and self._queue[-1][0] >= times[0] - 1e-9:
            self._queue.pop()
        self._queue.extend(zip(times.tolist(), actions[start_index:]))

    def next_action(self, now: float) -> np.ndarray | None:
        """The action due at ``now`` (dropping late ones), or None: hold."""
        half = 0.5 * self.control_dt
        while self._queue and self._queue[0][0] < now - half:
            self._queue.popleft()
            self.stats.dropped_late += 1
        if self._queue and self._queue[0][0] <= now + half:
            self.stats.executed += 1
            return self._queue.popleft()[1].copy()
        self.stats.held += 1
        return None

    def clear(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)
