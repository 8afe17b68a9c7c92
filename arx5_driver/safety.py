"""Safety layer between whatever produces joint targets and the arm backend.

It is independent of the backend: it only needs the SDK's ``RobotConfig`` (limits) and forward
kinematics.  Every control period, :meth:`SafetyLayer.step` turns a desired target (or none) into
one of three commands:

* ``TRACK``: a joint/gripper command that is inside the joint limits (minus a margin), changes each
  joint by at most ``min(max_step_rad, velocity_scale * joint_vel_max * dt)`` relative to the previous
  command (the change vector is scaled, so direction is kept), moves the gripper at most
  ``gripper_velocity_scale * gripper_vel_max * dt``, and keeps the end-effector inside the workspace
  (``table_z_m <= z <= workspace_z_max_m``, ``workspace_min_radius_m <= hypot(x, y) <= workspace_radius_m``);
* ``HOLD``: repeat the previous command exactly (bad input — NaN/inf, a step that would leave the
  workspace —, no target, or the watchdog's first stage);
* ``DAMP``: zero stiffness (not started, watchdog's second stage, tracking fault, e-stop, shutdown).

A command therefore never jumps: every position command is the previous one plus a capped step.
The e-stop latches (damping) until :meth:`reset_estop`; motion restarts only through
:meth:`activate`, which the controller calls after :meth:`check_start` accepted the first target.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from arx5_driver.backends import ArmState
from arx5_driver.config import SafetyConfig
from arx5_driver.kinematics import Kinematics


class Mode(enum.Enum):
    DAMPED = "damped"
    """Passive; waiting for a chunk that passes the start check."""
    TRACKING = "tracking"
    HOLDING = "holding"
    """Watchdog stage 1 (or no target): the last command is repeated."""
    ESTOP = "estop"
    """Latched damping until reset."""


class Action(enum.Enum):
    TRACK = "track"
    HOLD = "hold"
    DAMP = "damp"


@dataclass(frozen=True)
class SafeCommand:
    """Output of one safety step; ``joint_pos (dof,)`` rad and ``gripper_width`` m are None for DAMP."""

    action: Action
    joint_pos: np.ndarray | None
    gripper_width: float | None
    reason: str = ""


class SafetyLayer:
    """See the module docstring.  ``robot_config``: ``arx5_interface.RobotConfig``; ``control_dt`` in s."""

    def __init__(self, robot_config: Any, kinematics: Kinematics, config: SafetyConfig, control_dt: float):
        self.config = config
        self.kinematics = kinematics
        self.control_dt = float(control_dt)
        self.dof = int(robot_config.joint_dof)
        qmin = np.asarray(robot_config.joint_pos_min, dtype=float)
        qmax = np.asarray(robot_config.joint_pos_max, dtype=float)
        if np.any(qmax - qmin <= 2 * config.joint_margin_rad):
            raise ValueError("safety.joint_margin_rad leaves no room between the SDK joint limits")
        self.joint_min = qmin + config.joint_margin_rad
        self.joint_max = qmax - config.joint_margin_rad
        vel = np.asarray(robot_config.joint_vel_max, dtype=float)
        self.step_cap = np.minimum(config.max_step_rad, config.velocity_scale * vel * self.control_dt)
        self.joint_vel_max = vel
        self.gripper_max = float(robot_config.gripper_width)
        self.gripper_step = config.gripper_velocity_scale * float(robot_config.gripper_vel_max) * self.control_dt
        self.mode = Mode.DAMPED
        self.last_joint_pos: np.ndarray | None = None
        self.last_gripper: float | None = None
        self.last_fresh_chunk = -np.inf
        self.last_reason = "not started"

    # ------------------------------------------------------------------ checks
    def workspace_violation(self, joint_pos: np.ndarray) -> float:
        """How far (m) the end-effector at ``joint_pos`` is outside the workspace; 0 inside."""
        x, y, z = self.kinematics.fk_position(joint_pos)
        c = self.config
        r = float(np.hypot(x, y))
        return float(max(0.0, c.table_z_m - z, z - c.workspace_z_max_m, r - c.workspace_radius_m,
                         c.workspace_min_radius_m - r))

    def within_limits(self, joint_pos: np.ndarray) -> bool:
        return bool(np.all(joint_pos >= self.joint_min) and np.all(joint_pos <= self.joint_max))

    def check_start(self, first_target: np.ndarray, measured: ArmState) -> str | None:
        """Reason to refuse starting motion towards ``first_target (dof,)`` from ``measured``; None if allowed."""
        if self.mode is Mode.ESTOP:
            return "e-stop is latched; call reset_estop first"
        q = np.asarray(measured.joint_pos, dtype=float)
        if not np.all(np.isfinite(q)):
            return "measured joint state is not finite"
        tol = self.config.start_tolerance_rad
        clipped = np.clip(q, self.joint_min, self.joint_max)
        if np.max(np.abs(clipped - q)) > tol:
            return f"measured joints are {np.max(np.abs(clipped - q)):.3f} rad outside the joint limits"
        if self.workspace_violation(clipped) > 0:
            return f"measured end-effector is {self.workspace_violation(clipped):.3f} m outside the workspace"
        gap = float(np.max(np.abs(np.asarray(first_target, dtype=float) - q)))
        if not gap <= tol:
            return f"first target is {gap:.3f} rad from the measured joints (start tolerance {tol} rad)"
        return None

    def check_chunk(self, times: np.ndarray, joint_pos: np.ndarray, now: float) -> str | None:
        """Reason to refuse a planned chunk whose motion is physically infeasible; None if acceptable.

        ``times (N,)`` s and ``joint_pos (N, dof)`` rad are the chunk's future waypoints.  Consecutive
        waypoints may not demand more than the SDK's ``joint_vel_max``; the first waypoint must be
        reachable from the current command (``start_tolerance_rad`` plus ``joint_vel_max`` times the time
        left).  Such chunks are refused whole instead of being slewed through at the capped speed.
        """
        q = np.asarray(joint_pos, dtype=float)
        t = np.asarray(times, dtype=float)
        if self.last_joint_pos is not None and self.mode is Mode.TRACKING:
            reach = self.config.start_tolerance_rad + self.joint_vel_max * max(float(t[0]) - now, 0.0)
            gap = np.abs(q[0] - self.last_joint_pos)
            if np.any(gap > reach):
                j = int(np.argmax(gap - reach))
                return (f"first action is {gap[j]:.3f} rad from the current command on joint{j + 1} "
                        f"(reachable {reach[j]:.3f})")
        if len(q) > 1:
            speed = np.abs(np.diff(q, axis=0)) / np.maximum(np.diff(t), 1e-9)[:, None]
            if np.any(speed > self.joint_vel_max):
                k, j = np.unravel_index(int(np.argmax(speed / self.joint_vel_max)), speed.shape)
                return (f"action {k + 1} demands {speed[k, j]:.2f} rad/s on joint{j + 1} "
                        f"(SDK limit {self.joint_vel_max[j]:.2f})")
        return None

    # ------------------------------------------------------------------ mode changes
    def activate(self, measured: ArmState, now: float) -> None:
        """Start tracking from the measured state (call after :meth:`check_start` returned None)."""
        if self.mode is Mode.ESTOP:
            raise RuntimeError("e-stop is latched; call reset_estop first")
        if self.mode is not Mode.HOLDING or self.last_joint_pos is None:
            self.last_joint_pos = np.clip(np.asarray(measured.joint_pos, dtype=float), self.joint_min, self.joint_max)
            self.last_gripper = float(np.clip(measured.gripper_width, 0.0, self.gripper_max))
        self.mode = Mode.TRACKING
        self.last_fresh_chunk = now

    def note_fresh_chunk(self, now: float) -> None:
        """Feed the watchdog (an accepted chunk arrived)."""
        self.last_fresh_chunk = now

    def estop(self) -> None:
        self.mode = Mode.ESTOP
        self.last_reason = "e-stop"

    def reset_estop(self) -> bool:
        """Unlatch the e-stop (the arm stays damped until a chunk passes the start check)."""
        if self.mode is not Mode.ESTOP:
            return False
        self.mode = Mode.DAMPED
        self.last_reason = "e-stop reset; damped until a chunk passes the start check"
        return True

    def deactivate(self, reason: str = "deactivated") -> None:
        if self.mode is not Mode.ESTOP:
            self.mode = Mode.DAMPED
        self.last_reason = reason

    # ------------------------------------------------------------------ the filter
    def _damp(self, reason: str) -> SafeCommand:
        self.last_reason = reason
        return SafeCommand(Action.DAMP, None, None, reason)

    def _hold(self, reason: str) -> SafeCommand:
        self.last_reason = reason
        return SafeCommand(Action.HOLD, self.last_joint_pos.copy(), float(self.last_gripper), reason)

    def step(self, now: float, measured: ArmState, desired: tuple[np.ndarray, float] | None) -> SafeCommand:
        """One control period: the safe command for ``desired = (joint_pos (dof,), gripper)`` or None."""
        if self.mode is Mode.ESTOP:
            return self._damp("e-stop latched")
        if self.mode is Mode.DAMPED or self.last_joint_pos is None:
            self.mode = Mode.DAMPED
            return self._damp(self.last_reason if self.last_reason else "not started")
        q_meas = np.asarray(measured.joint_pos, dtype=float)
        if not np.all(np.isfinite(q_meas)):
            self.mode = Mode.DAMPED
            return self._damp("measured joint state is not finite")
        error = float(np.max(np.abs(q_meas - self.last_joint_pos)))
        if error > self.config.max_tracking_error_rad:
            self.mode = Mode.DAMPED
            return self._damp(f"tracking error {error:.3f} rad exceeds {self.config.max_tracking_error_rad} rad")
        silence = now - self.last_fresh_chunk
        if silence >= self.config.watchdog_damp_s:
            self.mode = Mode.DAMPED
            return self._damp(f"watchdog: no chunk for {silence:.3f} s")
        if silence >= self.config.watchdog_hold_s:
            self.mode = Mode.HOLDING
            return self._hold(f"watchdog: no chunk for {silence:.3f} s")
        if self.mode is Mode.HOLDING:
            return self._hold("holding")
        if desired is None:
            return self._hold("no target")
        q_des = np.asarray(desired[0], dtype=float)
        g_des = float(desired[1])
        if q_des.shape != (self.dof,) or not np.all(np.isfinite(q_des)) or not np.isfinite(g_des):
            return self._hold("target is malformed or not finite")
        delta = np.clip(q_des, self.joint_min, self.joint_max) - self.last_joint_pos
        biggest = np.abs(delta) / self.step_cap
        scale = 1.0 / max(1.0, float(np.max(biggest)))
        q_new = np.clip(self.last_joint_pos + delta * scale, self.joint_min, self.joint_max)
        violation = self.workspace_violation(q_new)
        if violation > 0 and violation >= self.workspace_violation(self.last_joint_pos) - 1e-9:
            return self._hold(f"target leaves the workspace by {violation:.3f} m")
        g_new = float(np.clip(np.clip(g_des, 0.0, self.gripper_max), self.last_gripper - self.gripper_step,
                              self.last_gripper + self.gripper_step))
        self.last_joint_pos, self.last_gripper = q_new, g_new
        self.last_reason = "tracking" if scale == 1.0 else "tracking (step capped)"
        return SafeCommand(Action.TRACK, q_new.copy(), g_new, self.last_reason)
