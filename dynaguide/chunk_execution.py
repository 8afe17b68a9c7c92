"""Time-stamped execution of action chunks (ROS-free; used by the simulation bridge).

A chunk computed from the observation at time ``t_obs`` schedules action ``i`` (``i >= start_index``)
at ``t_obs + (i - start_index + 1) * dt``.  A newer chunk replaces every not-yet-executed action from
its first scheduled time on (receding horizon).  At each control tick, actions whose time has passed
by more than half a period are dropped as late (as diffusion_policy's real-robot loop does); if nothing
is due, the caller holds.

Splicing, which actions win: the newest chunk, from its first action that is still in the future when it
arrives — or, for a real-time-chunking chunk (``frozen_steps > 0``, ``ActionChunk.frozen_steps``), from its first
action after the frozen ones: those were sampled to agree with the previous chunk's actions due at the same times,
so the previous chunk's queued actions run on unchanged through the delay (as in Black et al. 2025) and the switch
happens where the new chunk was made to continue them; a frozen action is queued only where nothing is queued
(counted as ``kept_previous`` otherwise).  Its actions already due more than half a period before arrival
(computed while the robot executed the previous chunk) are never queued — counted as ``stale_on_arrival``, the
part of each chunk the compute time cost, not as drops; ``dropped_late`` then counts only queued actions the
control loop missed.  The relative action spaces (``calvin_rel_ee``, ``ee_delta``) command a displacement per
step, so a switch of chunk changes the commanded velocity, never the position: the robot does not jump.

A chunk stamped more than ``max_future_s`` ahead of the executor's clock is rejected
(:func:`check_chunk_stamp`, the rule of the ARX5 chunk executor): accepting it would make every later,
correctly stamped chunk "not newer" and, with a lockstep simulator, stop the world for good.

The chunk rules live here once, for every consumer (this schedule, ``dynaguide_ros.conversions.chunk_from_msg``
and the ARX5 chunk executor): :func:`chunk_from_flat` (a message's flat values → ``(T, A)``),
:func:`check_chunk` (shape, finite values, ``dt``, ``start_index``) and :func:`check_chunk_stamp`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_FUTURE_S = 0.1
"""Default tolerance for chunk stamps ahead of the executor's clock (s); the ARX5 driver uses the same."""


def chunk_from_flat(values, horizon: int, action_dim: int, dtype=np.float64) -> np.ndarray:
    """A message's flat row-major ``values`` → actions ``(horizon, action_dim)`` of ``dtype``.

    Raises ``ValueError`` when ``horizon`` or ``action_dim`` is below 1 or the sizes disagree.
    """
    horizon, action_dim = int(horizon), int(action_dim)
    if horizon < 1 or action_dim < 1:
        raise ValueError(f"chunk horizon and action_dim must be >= 1, got {horizon} x {action_dim}")
    flat = np.asarray(values, dtype=dtype).reshape(-1)
    if flat.size != horizon * action_dim:
        raise ValueError(f"chunk has {flat.size} values, expected horizon*action_dim = {horizon}*{action_dim} "
                         f"= {horizon * action_dim}")
    return flat.reshape(horizon, action_dim)


def check_chunk(actions: np.ndarray, dt: float, start_index: int, action_dim: int | None = None,
                max_horizon: int | None = None, frozen_steps: int = 0) -> None:
    """Raise ``ValueError`` with the reason if a chunk's content cannot be executed.

    Args:
        actions: ``(T, A)`` actions, raw units of the action space; every value must be finite.
        dt: seconds between actions, positive and finite.
        start_index: first action to execute, in ``[0, T)`` (earlier rows are observation history).
        action_dim: the ``A`` the executor needs (``None``: any).
        max_horizon: the largest ``T`` accepted (``None``: any).
        frozen_steps: actions from ``start_index`` on that real-time chunking constrained to the previous chunk's
            (``ActionChunk.frozen_steps``), in ``[0, T - start_index]``.
    """
    actions = np.asarray(actions)
    if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] < 1:
        raise ValueError(f"chunk must be (T, A) actions with T, A >= 1, got shape {actions.shape}")
    horizon, dim = actions.shape
    if action_dim is not None and dim != action_dim:
        raise ValueError(f"chunk must be (T, {action_dim}) (action_dim {action_dim}), got shape {actions.shape}")
    if max_horizon is not None and horizon > max_horizon:
        raise ValueError(f"chunk horizon {horizon} outside [1, {max_horizon}]")
    if not np.isfinite(actions).all():
        raise ValueError("chunk contains NaN or infinite actions")
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"chunk dt must be positive and finite, got {dt}")
    if not 0 <= start_index < horizon:
        raise ValueError(f"start_index {start_index} outside [0, {horizon})")
    if not isinstance(frozen_steps, (int, np.integer)) or not 0 <= frozen_steps <= horizon - start_index:
        raise ValueError(f"frozen_steps {frozen_steps!r} outside [0, {horizon - start_index}] (the chunk's "
                         f"{horizon} actions from start_index {start_index})")


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
        raise ValueError(f"out of order: chunk stamp {stamp:.6f} is not newer than the last accepted one "
                         f"({last_stamp:.6f})")


@dataclass
class ScheduleStats:
    received: int = 0
    rejected: int = 0
    executed: int = 0
    dropped_late: int = 0
    held: int = 0
    stale_on_arrival: int = 0
    kept_previous: int = 0   # frozen actions of RTC chunks not queued: the previous chunk's action at that time ran


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
                  now: float | None = None, commit_steps: int = 0, frozen_steps: int = 0) -> None:
        """Schedule ``actions (T, A)``; raises ``ValueError`` for a malformed, out-of-order or (given the
        clock ``now``) future-stamped chunk.  ``commit_steps > 0`` queues only the first ``commit_steps``
        actions from ``start_index`` (what the policy commits to; a lockstep simulator then waits for the next
        chunk instead of running on into the chunk's uncommitted tail).  ``frozen_steps``: the chunk's first
        actions from ``start_index`` that real-time chunking constrained to the previous chunk's; queued actions
        at their times are kept and the chunk takes over at its first free action (module docstring)."""
        actions = np.asarray(actions, dtype=np.float64)
        if not isinstance(commit_steps, (int, np.integer)) or commit_steps < 0:
            raise ValueError(f"commit_steps must be an integer >= 0, got {commit_steps!r}")
        self.stats.received += 1
        try:
            check_chunk(actions, dt, start_index, action_dim=self.action_dim, frozen_steps=frozen_steps)
            check_chunk_stamp(stamp, now, self._last_stamp, self.max_future_s)
        except ValueError:
            self.stats.rejected += 1
            raise
        self._last_stamp = stamp
        end = len(actions) if commit_steps == 0 else min(len(actions), start_index + int(commit_steps))
        times = stamp + (np.arange(start_index, end) - start_index + 1) * dt
        actions = actions[start_index:end]
        frozen = np.arange(len(times)) < int(frozen_steps)
        if now is not None:  # already due before it arrived: never queued
            fresh = times >= now - 0.5 * self.control_dt
            self.stats.stale_on_arrival += int((~fresh).sum())
            times, actions, frozen = times[fresh], actions[fresh], frozen[fresh]
            if len(times) == 0:
                return
        # the switch: the first action still to come, past the frozen ones when the previous plan covers them
        free = np.flatnonzero(~frozen)
        switch = times[free[0]] if len(free) else np.inf
        while self._queue and self._queue[-1][0] >= switch - 1e-9:
            self._queue.pop()
        if self._queue and frozen.any():
            covered = frozen & (times <= self._queue[-1][0] + 1e-9)
            self.stats.kept_previous += int(covered.sum())
            times, actions = times[~covered], actions[~covered]
        self._queue.extend(zip(times.tolist(), actions))

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


class ObservationHistory:
    """The last ``maxlen`` observations of one stream, one per distinct time stamp, oldest first.

    A lockstep simulator republishes its last camera frame and robot state while the world waits for the policy.
    Appending those copies would turn the history into ``[o_t, o_t]`` instead of the ``[o_{t-1}, o_t]`` the
    policy was trained on (and the CALVIN harness feeds it).  An entry with the newest stamp therefore replaces
    the newest entry; one older than it is dropped (the history never goes back in time).  ``stamp`` in seconds.
    """

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        self._items: deque = deque(maxlen=maxlen)

    def append(self, stamp: float, value) -> None:
        if self._items and stamp <= self._items[-1][0]:
            if stamp == self._items[-1][0]:
                self._items[-1] = (stamp, value)
            return
        self._items.append((stamp, value))

    def __len__(self) -> int:
        return len(self._items)

    @property
    def newest_stamp(self) -> float:
        return self._items[-1][0]

    def padded(self, n: int) -> list:
        """The last ``n`` values, the oldest repeated in front while fewer than ``n`` were seen."""
        values = [v for _, v in self._items][-n:]
        return [values[0]] * (n - len(values)) + values
