"""Time-stamped execution of action chunks (ROS-free; used by the simulation bridge).

A chunk computed from the observation at time ``t_obs`` schedules action ``i`` (``i >= start_index``)
at ``t_obs + (i - start_index + 1) * dt``.  A newer chunk replaces every not-yet-executed action from
its first scheduled time on (receding horizon).  At each control tick, actions whose time has passed
by more than half a period are dropped as late (as diffusion_policy's real-robot loop does); if nothing
is due, the caller holds.

A chunk stamped more than ``max_future_s`` ahead of the executor's clock is rejected
(:func:`check_chunk_stamp`, the rule of the ARX5 chunk executor): accepting it would make every later,
correctly stamped chunk "not newer" and, with a lockstep simulator, stop the world for good.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_FUTURE_S = 0.1
"""Default tolerance for chunk stamps ahead of the executor's clock (s); the ARX5 driver uses the same."""


def check_chunk_stamp(stamp: float, now: float | None, last_stamp: float,
                      max_future_s: float = DEFAULT_MAX_FUTURE_S) -> None:
    """Raise ``ValueError`` with the reason if a chunk stamped ``stamp`` must not be scheduled.

    ``now`` is the executor's clock (simulated time in lockstep), None to skip the future check;
    ``last_stamp`` is the stamp of the last accepted chunk.
    """
    if not np.isfinite(stamp):
        raise ValueError(f"chunk stamp {stamp} is not finite")
    if now is not None and stamp > now + max_future_s:
        raise ValueError(f"chunk stamp {stamp:.3f} is {stamp - now:.3f} s in the future of the clock ({now:.3f}; "
                         f"limit {max_future_s} s): clock mismatch?")
    if stamp <= last_stamp:
        raise ValueError(f"chunk stamp {stamp:.3f} is not newer than the last one ({last_stamp:.3f})")


@dataclass
class ScheduleStats:
    received: int = 0
    rejected: int = 0
    executed: int = 0
    dropped_late: int = 0
    held: int = 0


class ActionSchedule:
    def __init__(self, action_dim: int, control_dt: float, max_future_s: float = DEFAULT_MAX_FUTURE_S) -> None:
        if action_dim <= 0 or not control_dt > 0:
            raise ValueError("action_dim and control_dt must be positive")
        if not (np.isfinite(max_future_s) and max_future_s >= 0):
            raise ValueError(f"max_future_s must be finite and >= 0, got {max_future_s}")
        self.action_dim = action_dim
        self.control_dt = control_dt
        self.max_future_s = float(max_future_s)
        self._queue: deque[tuple[float, np.ndarray]] = deque()
        self._last_stamp = -np.inf
        self.stats = ScheduleStats()

    def add_chunk(self, actions: np.ndarray, stamp: float, dt: float, start_index: int = 0,
                  now: float | None = None) -> None:
        """Schedule ``actions (T, A)``; raises ``ValueError`` for a malformed, out-of-order or (given the
        clock ``now``) future-stamped chunk."""
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
            check_chunk_stamp(stamp, now, self._last_stamp, self.max_future_s)
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
