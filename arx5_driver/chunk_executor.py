"""Action chunks → time-stamped joint waypoints → a joint target at every control period.

Chunk timing (``dynaguide_msgs/ActionChunk``): ``stamp`` is the observation time; action ``i``
(``i >= start_index``) is due at ``stamp + (i - start_index + 1) * dt - action_latency_s``.  Actions
before ``start_index`` are the policy's observation history and are never executed.

Action spaces (rows of ``actions (T, A)``):

* ``joint_position`` (A = dof + 1): absolute joint positions (rad) then gripper width (m).
* ``ee_delta`` (A = 7): per-step relative end-effector motion ``[dx, dy, dz (m), wx, wy, wz (rad), gripper (m)]``.
  The steps are chained from the end-effector pose *measured at the observation time*
  ``T_obs = (p_obs, R_obs)``:  for ``i = start_index, …``

  - ``header.frame_id`` empty or the base link name (``base_link``): deltas in the base frame,
    ``p_i = p_{i-1} + d_i``,  ``R_i = Exp(w_i) @ R_{i-1}``;
  - ``header.frame_id`` = the end-effector link name (``eef_link``): deltas in the current tool frame,
    ``p_i = p_{i-1} + R_{i-1} @ d_i``,  ``R_i = R_{i-1} @ Exp(w_i)``;

  where ``Exp`` maps a rotation vector to a rotation matrix.  The gripper value is an absolute width
  (m).  Each pose is converted to joints by the SDK's IK seeded with the previous waypoint; the chunk
  is cut at the first unreachable pose or IK branch jump (``ik_max_joint_jump_rad``).

Execution: when a chunk is accepted, waypoints whose time has passed are dropped and the new
trajectory starts at the *current command* at the current time, so switching chunks never jumps;
the target is linearly interpolated between waypoints and stays at the last waypoint afterwards.
Chunks that are malformed, contain NaN/inf, are older than ``max_chunk_age_s``, stamped in the
future, not newer than the last accepted chunk, or have no action left in the future are rejected
with :class:`ChunkRejected`.  The content and stamp rules shared with the simulation bridge
(:func:`dynaguide.chunk_execution.chunk_from_flat`, :func:`~dynaguide.chunk_execution.check_chunk`,
:func:`~dynaguide.chunk_execution.check_chunk_stamp` with this executor's ``max_future_s``) are applied from
there; the action spaces, ``max_horizon`` and ``max_chunk_age_s`` are this executor's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from arx5_driver.config import ExecutorConfig
from arx5_driver.kinematics import Kinematics
from arx5_driver.transforms import rotvec_to_matrix
from dynaguide.chunk_execution import check_chunk, check_chunk_stamp, chunk_from_flat
from dynaguide.text import short_repr

EXECUTABLE_SPACES = ("ee_delta", "joint_position")


class ChunkRejected(ValueError):
    """A chunk was refused; the message says why."""


@dataclass(frozen=True)
class ExecutorChunk:
    """The executor's ROS-free form of a ``dynaguide_msgs/ActionChunk`` message (a distinct name from it):
    ``actions (T, A)`` float, times in s."""

    stamp: float
    action_space: str
    actions: np.ndarray
    start_index: int
    dt: float
    frame_id: str = ""
    # real-time chunking: leading actions from start_index constrained to the previous chunk's (validated; the
    # trajectory already starts at the current command and runs through them, which agree with the running plan)
    frozen_steps: int = 0

    @classmethod
    def from_flat(cls, stamp: float, action_space: str, horizon: int, action_dim: int, actions: Any,
                  start_index: int, dt: float, frame_id: str = "", frozen_steps: int = 0) -> ExecutorChunk:
        """Build from the message's flat row-major ``actions``; ChunkRejected if sizes disagree."""
        try:
            rows = chunk_from_flat(actions, horizon, action_dim)
        except ValueError as exc:
            raise ChunkRejected(str(exc)) from exc
        return cls(float(stamp), str(action_space), rows, int(start_index), float(dt), str(frame_id),
                   int(frozen_steps))


@dataclass(frozen=True)
class JointWaypoints:
    """Planned chunk: ``times (N,)`` s (increasing), ``joint_pos (N, dof)`` rad, ``gripper (N,)`` m."""

    times: np.ndarray
    joint_pos: np.ndarray
    gripper: np.ndarray


class JointStateBuffer:
    """Ring buffer of measured ``(time, joint_pos (dof,), gripper)`` to look up the state at a chunk's stamp."""

    def __init__(self, dof: int, capacity: int):
        self._t = np.full(capacity, -np.inf)
        self._q = np.zeros((capacity, dof))
        self._g = np.zeros(capacity)
        self._n = 0
        self._i = 0

    def append(self, t: float, joint_pos: np.ndarray, gripper: float) -> None:
        self._t[self._i], self._q[self._i], self._g[self._i] = t, joint_pos, gripper
        self._i = (self._i + 1) % len(self._t)
        self._n = min(self._n + 1, len(self._t))

    def clear(self) -> None:
        self._t[:] = -np.inf
        self._n = self._i = 0

    def at(self, t: float) -> tuple[np.ndarray, float] | None:
        """State recorded closest to time ``t`` (never one after it by more than the sampling gap); None if ``t``
        predates the buffer."""
        if self._n == 0:
            return None
        valid = np.isfinite(self._t)
        if t < self._t[valid].min():
            return None
        k = int(np.argmin(np.where(valid, np.abs(self._t - t), np.inf)))
        return self._q[k].copy(), float(self._g[k])


class ChunkExecutor:
    """Turns chunks into joint trajectories and samples them at the control rate (see module docstring)."""

    def __init__(self, robot_config: Any, kinematics: Kinematics, config: ExecutorConfig):
        self.config = config
        self.kinematics = kinematics
        self.dof = int(robot_config.joint_dof)
        self.base_frame = str(robot_config.base_link_name)
        self.tool_frame = str(robot_config.eef_link_name)
        self.last_accepted_stamp = -np.inf
        self._traj: JointWaypoints | None = None

    # ---------------------------------------------------------------- planning
    def plan(self, chunk: ExecutorChunk, now: float, reference: tuple[np.ndarray, float] | None) -> JointWaypoints:
        """Validate ``chunk`` and convert its future actions to joint waypoints.

        ``reference``: measured ``(joint_pos (dof,), gripper)`` at ``chunk.stamp`` (needed by ``ee_delta``).
        Raises ChunkRejected with the reason.
        """
        cfg = self.config
        if chunk.action_space not in EXECUTABLE_SPACES:
            raise ChunkRejected(f"action_space {short_repr(chunk.action_space)} cannot drive the arm; "
                                f"use one of {list(EXECUTABLE_SPACES)}")
        actions = np.asarray(chunk.actions, dtype=float)
        expected_dim = self.dof + 1 if chunk.action_space == "joint_position" else 7
        try:
            check_chunk(actions, chunk.dt, chunk.start_index, action_dim=expected_dim, max_horizon=cfg.max_horizon,
                        frozen_steps=chunk.frozen_steps)
            check_chunk_stamp(chunk.stamp, now, self.last_accepted_stamp, cfg.max_future_s)
        except ValueError as exc:
            raise ChunkRejected(f"{chunk.action_space}: {exc}") from exc
        if chunk.stamp < now - cfg.max_chunk_age_s:
            raise ChunkRejected(f"stale: observation is {now - chunk.stamp:.3f} s old (max {cfg.max_chunk_age_s} s)")
        horizon = actions.shape[0]

        steps = np.arange(chunk.start_index, horizon)
        times = chunk.stamp + (steps - chunk.start_index + 1) * chunk.dt - cfg.action_latency_s
        rows = actions[chunk.start_index:]
        if chunk.action_space == "joint_position":
            joints, gripper = rows[:, : self.dof], rows[:, self.dof]
        else:
            if reference is None:
                raise ChunkRejected("stale: no measured state at the chunk's observation time")
            joints, gripper = self._ee_delta_to_joints(rows, reference[0], chunk.frame_id)
            times = times[: len(joints)]
        future = times > now
        if not np.any(future):
            raise ChunkRejected("stale: the time of every action has passed")
        return JointWaypoints(times[future], joints[future], np.asarray(gripper[: len(times)])[future])

    def _ee_delta_to_joints(self, rows: np.ndarray, q_ref: np.ndarray, frame_id: str) -> tuple[np.ndarray, np.ndarray]:
        if frame_id in ("", self.base_frame):
            in_tool = False
        elif frame_id == self.tool_frame:
            in_tool = True
        else:
            raise ChunkRejected(f"ee_delta frame_id {short_repr(frame_id)} must be empty, {self.base_frame!r} "
                                f"or {self.tool_frame!r}")
        position, rotation = self.kinematics.fk(q_ref)
        seed = np.asarray(q_ref, dtype=float)
        joints = []
        for row in rows:
            step_rot = rotvec_to_matrix(row[3:6])
            if in_tool:
                position, rotation = position + rotation @ row[:3], rotation @ step_rot
            else:
                position, rotation = position + row[:3], step_rot @ rotation
            q = self.kinematics.ik(position, rotation, seed, self.config.ik_tolerance_m, self.config.ik_tolerance_rad)
            if q is None or np.max(np.abs(q - seed)) > self.config.ik_max_joint_jump_rad:
                break
            joints.append(q)
            seed = q
        if not joints:
            raise ChunkRejected("ee_delta: the first target pose is unreachable (IK failed)")
        return np.array(joints), rows[: len(joints), 6]

    # ---------------------------------------------------------------- execution
    def accept(self, chunk_stamp: float, waypoints: JointWaypoints, now: float,
               current_joint_pos: np.ndarray, current_gripper: float) -> None:
        """Start executing ``waypoints`` from the current command at ``now`` (replaces any running trajectory)."""
        self.last_accepted_stamp = chunk_stamp
        self._traj = JointWaypoints(
            np.concatenate([[now], waypoints.times]),
            np.vstack([np.asarray(current_joint_pos, dtype=float)[None], waypoints.joint_pos]),
            np.concatenate([[current_gripper], waypoints.gripper]),
        )

    def clear(self) -> None:
        """Forget the running trajectory (chunk ordering is kept)."""
        self._traj = None

    @property
    def active(self) -> bool:
        return self._traj is not None

    def end_time(self) -> float | None:
        return None if self._traj is None else float(self._traj.times[-1])

    def sample(self, now: float) -> tuple[np.ndarray, float] | None:
        """Target ``(joint_pos (dof,), gripper)`` at ``now``: linear between waypoints, last waypoint after the end;
        None without a trajectory."""
        traj = self._traj
        if traj is None:
            return None
        t = traj.times
        if now >= t[-1]:
            return traj.joint_pos[-1].copy(), float(traj.gripper[-1])
        k = int(np.searchsorted(t, now, side="right")) - 1
        k = max(k, 0)
        a = float(np.clip((now - t[k]) / (t[k + 1] - t[k]), 0.0, 1.0))
        q = (1 - a) * traj.joint_pos[k] + a * traj.joint_pos[k + 1]
        return q, float((1 - a) * traj.gripper[k] + a * traj.gripper[k + 1])
