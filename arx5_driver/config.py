"""Typed configuration of the ARX5 driver (loadable from YAML through :mod:`dynaguide.config`).

``config/arx5.yaml`` holds the same keys as ROS parameters of the node ``arx5_driver``
(nested sections become dotted parameter names, e.g. ``safety.table_z_m``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

BACKENDS = ("sim", "sdk")


@dataclass
class SafetyConfig:
    """Limits enforced on every command, independent of the backend.

    Joint position and velocity limits come from the SDK's ``RobotConfig``; the values here only
    tighten them.
    """

    joint_margin_rad: float = 0.02
    """Commands stay this far inside ``RobotConfig.joint_pos_min/max``."""
    velocity_scale: float = 0.5
    """Fraction of ``RobotConfig.joint_vel_max`` a command may move per second."""
    max_step_rad: float = 0.004
    """Per-control-period cap on any joint's command change (0.004 rad at 500 Hz = 2 rad/s)."""
    gripper_velocity_scale: float = 1.0
    """Fraction of ``RobotConfig.gripper_vel_max`` for the gripper width command."""
    table_z_m: float = 0.0
    """Lowest allowed end-effector height (m, base frame): the table surface plus clearance."""
    workspace_radius_m: float = 0.55
    """Largest allowed horizontal distance (m) of the end-effector from the base's z axis."""
    workspace_min_radius_m: float = 0.05
    """Smallest allowed horizontal distance (m): keeps the tool away from the base column."""
    workspace_z_max_m: float = 0.6
    """Highest allowed end-effector height (m, base frame)."""
    watchdog_hold_s: float = 0.5
    """No accepted chunk for this long → hold the last command."""
    watchdog_damp_s: float = 2.0
    """No accepted chunk for this long → damping (needs a new start check to move again)."""
    start_tolerance_rad: float = 0.1
    """A chunk may (re)start motion only if its first target is within this distance (max over joints) of the
    measured joints."""
    max_tracking_error_rad: float = 0.35
    """Measured joints further than this from the command (collision, blocked arm) → damping."""

    def __post_init__(self) -> None:
        positive = ("max_step_rad", "velocity_scale", "gripper_velocity_scale", "workspace_radius_m",
                    "watchdog_hold_s", "watchdog_damp_s", "start_tolerance_rad", "max_tracking_error_rad")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"safety.{name} must be > 0, got {getattr(self, name)}")
        if self.joint_margin_rad < 0:
            raise ValueError("safety.joint_margin_rad must be >= 0")
        if self.velocity_scale > 1 or self.gripper_velocity_scale > 1:
            raise ValueError("safety velocity scales must be <= 1 (the SDK's limits are the maximum)")
        if self.watchdog_damp_s <= self.watchdog_hold_s:
            raise ValueError("safety.watchdog_damp_s must be larger than safety.watchdog_hold_s")
        if not self.workspace_z_max_m > self.table_z_m:
            raise ValueError("safety.workspace_z_max_m must be above safety.table_z_m")
        if not 0 <= self.workspace_min_radius_m < self.workspace_radius_m:
            raise ValueError("safety.workspace_min_radius_m must be in [0, workspace_radius_m)")


@dataclass
class ExecutorConfig:
    """How action chunks are scheduled and converted to joint targets."""

    max_chunk_age_s: float = 1.0
    """Chunks whose observation stamp is older than this (relative to now) are stale and rejected."""
    max_future_s: float = 0.1
    """Chunks stamped more than this in the future are rejected (clock mismatch)."""
    action_latency_s: float = 0.0
    """Each action is commanded this much earlier than its nominal time (robot response latency)."""
    max_horizon: int = 256
    """Largest accepted chunk horizon."""
    ik_max_joint_jump_rad: float = 0.5
    """An IK solution further than this (any joint) from the previous waypoint ends the chunk there."""
    ik_tolerance_m: float = 0.002
    ik_tolerance_rad: float = 0.02
    history_s: float = 2.0
    """How long measured joint states are kept to find the pose at a chunk's observation time."""

    def __post_init__(self) -> None:
        for name in ("max_chunk_age_s", "history_s", "ik_max_joint_jump_rad", "ik_tolerance_m", "ik_tolerance_rad"):
            if not getattr(self, name) > 0:
                raise ValueError(f"executor.{name} must be > 0, got {getattr(self, name)}")
        if self.max_future_s < 0 or self.action_latency_s < 0:
            raise ValueError("executor.max_future_s and executor.action_latency_s must be >= 0")
        if self.max_horizon < 1:
            raise ValueError("executor.max_horizon must be >= 1")


@dataclass
class DriverConfig:
    """Everything the ``arx5_driver`` node needs."""

    model: str = ""
    """Arm model, X5 or L5.  Required: there is no default."""
    can_interface: str = "can0"
    backend: str = "sim"
    """``sim`` (PyBullet) or ``sdk`` (real arm over CAN)."""
    joint_state_rate_hz: float = 200.0
    """Rate of ``joint_states`` and ``ee_pose`` publications (>= 100)."""
    frame_id: str = ""
    """Frame of the published pose; empty = the SDK's base link name."""
    gripper_joint_name: str = "gripper"
    sim_initial_joint_pos: list[float] = field(default_factory=lambda: [0.0, 0.8, 0.8, 0.0, 0.0, 0.0])
    """Starting joints of the simulated arm (rad)."""
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    def __post_init__(self) -> None:
        from arx5_driver.backends import SUPPORTED_MODELS

        if not self.model:
            raise ValueError(f"model is required (one of {list(SUPPORTED_MODELS)}); there is no default")
        if self.model not in SUPPORTED_MODELS:
            raise ValueError(f"unsupported model {self.model!r}; supported: {list(SUPPORTED_MODELS)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {self.backend!r}")
        if self.joint_state_rate_hz < 100:
            raise ValueError(f"joint_state_rate_hz must be >= 100, got {self.joint_state_rate_hz}")
