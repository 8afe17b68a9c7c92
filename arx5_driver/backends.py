"""Arm backends: one interface, the real ARX5 SDK, and a PyBullet simulation of the same arm.

Both backends take their limits and control period from the SDK's own configuration objects
(``arx5_interface.RobotConfigFactory`` / ``ControllerConfigFactory``), so the safety layer sees the
same numbers whichever backend runs.

Units: joint positions rad, joint velocities rad/s, gripper width m (0 = closed,
``RobotConfig.gripper_width`` = fully open), time s.
"""

from __future__ import annotations

import abc
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np

SUPPORTED_MODELS = ("X5", "L5")
"""Arm models this driver accepts (6-DoF ARX5 arms with the stock gripper)."""

JOINT_CONTROLLER = "joint_controller"


@dataclass(frozen=True)
class ArmState:
    """One measurement: ``joint_pos (dof,)`` rad, ``joint_vel (dof,)`` rad/s, ``gripper_width`` m, ``stamp`` s
    (backend clock)."""

    joint_pos: np.ndarray
    joint_vel: np.ndarray
    gripper_width: float
    stamp: float


def load_sdk_configs(model: str) -> tuple[Any, Any]:
    """``(RobotConfig, ControllerConfig)`` of ``model`` from the installed ``arx5_interface`` factories.

    Raises ValueError for a model that is not one of :data:`SUPPORTED_MODELS`.
    """
    if not isinstance(model, str) or not model:
        raise ValueError("robot model is required (one of X5, L5); there is no default")
    if model not in SUPPORTED_MODELS:
        raise ValueError(f"unsupported robot model {model!r}; supported: {list(SUPPORTED_MODELS)}")
    import arx5_interface as arx5

    robot_config = arx5.RobotConfigFactory.get_instance().get_config(model)
    controller_config = arx5.ControllerConfigFactory.get_instance().get_config(JOINT_CONTROLLER, robot_config.joint_dof)
    return robot_config, controller_config


class ArmBackend(abc.ABC):
    """What the driver needs from an arm.  Not thread-safe: call from one (control) thread.

    Modes: after construction and after :meth:`damp` the arm is *damped* (zero stiffness, damping
    only); :meth:`hold` makes it stiff at its measured position; only then may :meth:`command_joints`
    be called.
    """

    robot_config: Any
    """The SDK's ``arx5_interface.RobotConfig`` (joint/velocity limits, gripper width, URDF)."""
    controller_config: Any
    """The SDK's ``arx5_interface.ControllerConfig`` (gains, ``controller_dt``)."""

    @property
    def control_dt(self) -> float:
        """Control period in s (the SDK joint controller's ``controller_dt``, 0.002 s = 500 Hz)."""
        return float(self.controller_config.controller_dt)

    @property
    def dof(self) -> int:
        return int(self.robot_config.joint_dof)

    @property
    @abc.abstractmethod
    def is_damped(self) -> bool:
        """True while the arm is in damping mode (no position command is being tracked)."""

    @abc.abstractmethod
    def read_state(self) -> ArmState:
        """Latest measurement."""

    @abc.abstractmethod
    def command_joints(self, joint_pos: np.ndarray, gripper_width: float) -> None:
        """Track ``joint_pos (dof,)`` rad and ``gripper_width`` m.  Raises RuntimeError while damped."""

    @abc.abstractmethod
    def hold(self) -> None:
        """Become stiff at the measured joint positions and gripper width (default gains)."""

    @abc.abstractmethod
    def damp(self) -> None:
        """Zero stiffness, damping only: the safe passive state."""

    def tick(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Advance one control period (simulation step / explicit CAN exchange).  Default: nothing."""

    def close(self) -> None:
        """Damp and release resources."""
        self.damp()

    def _check_command(self, joint_pos: np.ndarray, gripper_width: float) -> tuple[np.ndarray, float]:
        q = np.asarray(joint_pos, dtype=float)
        if q.shape != (self.dof,):
            raise ValueError(f"joint command must have shape ({self.dof},), got {q.shape}")
        if not np.all(np.isfinite(q)) or not np.isfinite(gripper_width):
            raise ValueError("joint command contains NaN or inf")
        if self.is_damped:
            raise RuntimeError("arm is damped; call hold() before command_joints()")
        return q, float(gripper_width)


ControllerFactory = Callable[[Any, Any, str], Any]
"""``(robot_config, controller_config, can_interface) -> controller`` with the methods of
``arx5_interface.Arx5JointController``."""


def default_controller_factory(robot_config: Any, controller_config: Any, can_interface: str) -> Any:
    """The real CAN-connected ``arx5_interface.Arx5JointController``."""
    import arx5_interface as arx5

    return arx5.Arx5JointController(robot_config, controller_config, can_interface)


class SdkBackend(ArmBackend):
    """The real arm through ``arx5_interface.Arx5JointController``.

    ``model`` is required (X5 or L5); ``can_interface`` names the SocketCAN interface (``can0``…) or
    EtherCAT adapter (``en…``/``eth…``).  ``controller_factory`` builds the controller from the real
    config objects; tests pass a CAN-less stand-in with the same methods.  ``stiffen_wait_s`` is how long
    :meth:`hold` lets the SDK's control thread take the new command before raising the gains
    (default: two control periods).
    """

    def __init__(self, model: str, can_interface: str, controller_factory: ControllerFactory | None = None,
                 stiffen_wait_s: float | None = None):
        if not isinstance(can_interface, str) or not can_interface:
            raise ValueError("can_interface is required (e.g. 'can0')")
        import arx5_interface as arx5

        self._arx5 = arx5
        self.model = model
        self.can_interface = can_interface
        self.robot_config, self.controller_config = load_sdk_configs(model)
        self.stiffen_wait_s = 2 * self.control_dt if stiffen_wait_s is None else float(stiffen_wait_s)
        factory = controller_factory or default_controller_factory
        try:
            self._controller = factory(self.robot_config, self.controller_config, can_interface)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot open ARX5 {model} on CAN interface {can_interface!r}: {exc}") from exc
        self._damped = False
        self.damp()

    @property
    def controller(self) -> Any:
        return self._controller

    @property
    def is_damped(self) -> bool:
        return self._damped

    def read_state(self) -> ArmState:
        js = self._controller.get_joint_state()
        return ArmState(
            joint_pos=np.asarray(js.pos(), dtype=float).copy(),
            joint_vel=np.asarray(js.vel(), dtype=float).copy(),
            gripper_width=float(js.gripper_pos),
            stamp=float(self._controller.get_timestamp()),
        )

    def _joint_state(self, joint_pos: np.ndarray, gripper_width: float) -> Any:
        zeros = np.zeros(self.dof)
        return self._arx5.JointState(np.asarray(joint_pos, dtype=float), zeros, zeros, float(gripper_width))

    def command_joints(self, joint_pos: np.ndarray, gripper_width: float) -> None:
        q, g = self._check_command(joint_pos, gripper_width)
        self._controller.set_joint_cmd(self._joint_state(q, g))

    def hold(self) -> None:
        state = self.read_state()
        # Command first, then raise the gains: the SDK refuses stiffness when its output command is more
        # than 0.2 rad from the measured joints.  Give its control thread two periods to take the command.
        self._controller.set_joint_cmd(self._joint_state(state.joint_pos, state.gripper_width))
        if bool(self.controller_config.background_send_recv):
            if self.stiffen_wait_s > 0:
                time.sleep(self.stiffen_wait_s)
        else:
            self._controller.send_recv_once()
            self._controller.send_recv_once()
        cc = self.controller_config
        gain = self._arx5.Gain(np.asarray(cc.default_kp, dtype=float), np.asarray(cc.default_kd, dtype=float),
                               float(cc.default_gripper_kp), float(cc.default_gripper_kd))
        self._controller.set_gain(gain)
        self._damped = False

    def damp(self) -> None:
        self._controller.set_to_damping()
        self._damped = True

    def tick(self) -> None:
        if not bool(self.controller_config.background_send_recv):
            self._controller.send_recv_once()


def primitive_urdf(urdf_path: str | Path, joint_pos_min: np.ndarray, joint_pos_max: np.ndarray,
                   out_dir: str | Path) -> Path:
    """Copy of the SDK URDF with every ``<mesh>`` replaced by a 2 cm sphere and the six arm joints'
    limits set to ``[joint_pos_min, joint_pos_max]``; returns the new file's path inside ``out_dir``.

    Inertial properties (what the dynamics use) are kept unchanged.
    """
    text = Path(urdf_path).read_text()
    text = re.sub(r"<mesh\b[^>]*/>", '<sphere radius="0.02"/>', text)

    def fix_limit(match: re.Match) -> str:
        index = int(match.group(1)) - 1
        if not 0 <= index < len(joint_pos_min):
            return match.group(0)
        body = re.sub(r'lower="[^"]*"', f'lower="{float(joint_pos_min[index]):.6f}"', match.group(2))
        body = re.sub(r'upper="[^"]*"', f'upper="{float(joint_pos_max[index]):.6f}"', body)
        return f'<joint name="joint{index + 1}"{body}</joint>'

    text = re.sub(r'<joint name="joint(\d+)"(.*?)</joint>', fix_limit, text, flags=re.S)
    out = Path(out_dir) / Path(urdf_path).name
    out.write_text(text)
    return out


class SimBackend(ArmBackend):
    """PyBullet (``p.DIRECT``) ARX5 built from the SDK package's URDF, stepped once per :meth:`tick`.

    Same ``RobotConfig`` limits and ``controller_dt`` (500 Hz) as the real arm.  Stiff mode uses
    PyBullet's PD position motors with force limits ``RobotConfig.joint_torque_max`` and the command
    clipped to the joint limits (as the SDK does); damped mode drives joint velocities to zero with a
    force cap of ``default_kd * joint_vel_max`` (viscous-like, holds against gravity like the real
    arm's gravity-compensated damping).  The gripper (absent in the URDF) is a width that moves
    towards its command at ``RobotConfig.gripper_vel_max``.
    """

    def __init__(self, model: str, initial_joint_pos: np.ndarray | None = None, initial_gripper_width: float = 0.0,
                 position_gain: float = 0.3, velocity_gain: float = 1.0):
        import pybullet as p

        self._p = p
        self.model = model
        self.robot_config, self.controller_config = load_sdk_configs(model)
        rc = self.robot_config
        self._qmin = np.asarray(rc.joint_pos_min, dtype=float)
        self._qmax = np.asarray(rc.joint_pos_max, dtype=float)
        self._tmpdir = tempfile.TemporaryDirectory(prefix="arx5_sim_")
        urdf = primitive_urdf(rc.urdf_path, self._qmin, self._qmax, self._tmpdir.name)
        self._client = p.connect(p.DIRECT)
        p.setGravity(*np.asarray(rc.gravity_vector, dtype=float), physicsClientId=self._client)
        p.setTimeStep(self.control_dt, physicsClientId=self._client)
        self._body = p.loadURDF(str(urdf), useFixedBase=True, physicsClientId=self._client)
        names = {p.getJointInfo(self._body, i, physicsClientId=self._client)[1].decode(): i
                 for i in range(p.getNumJoints(self._body, physicsClientId=self._client))}
        self._joints = [names[f"joint{i + 1}"] for i in range(self.dof)]
        q0 = np.zeros(self.dof) if initial_joint_pos is None else np.asarray(initial_joint_pos, dtype=float)
        if q0.shape != (self.dof,) or not np.all(np.isfinite(q0)):
            raise ValueError(f"initial_joint_pos must be {self.dof} finite values")
        for j, q in zip(self._joints, np.clip(q0, self._qmin, self._qmax)):
            p.resetJointState(self._body, j, float(q), 0.0, physicsClientId=self._client)
        self._torque_max = np.asarray(rc.joint_torque_max, dtype=float)
        self._damp_force = (np.asarray(self.controller_config.default_kd, dtype=float)
                            * np.asarray(rc.joint_vel_max, dtype=float))
        self._kp, self._kd = float(position_gain), float(velocity_gain)
        self._gripper = float(np.clip(initial_gripper_width, 0.0, rc.gripper_width))
        self._gripper_cmd = self._gripper
        self._steps = 0
        self._damped = False
        self.damp()

    @property
    def is_damped(self) -> bool:
        return self._damped

    @property
    def sim_time(self) -> float:
        return self._steps * self.control_dt

    def read_state(self) -> ArmState:
        states = self._p.getJointStates(self._body, self._joints, physicsClientId=self._client)
        return ArmState(
            joint_pos=np.array([s[0] for s in states]),
            joint_vel=np.array([s[1] for s in states]),
            gripper_width=self._gripper,
            stamp=self.sim_time,
        )

    def _set_position_targets(self, q: np.ndarray) -> None:
        self._p.setJointMotorControlArray(
            self._body, self._joints, self._p.POSITION_CONTROL, targetPositions=list(q),
            targetVelocities=[0.0] * self.dof, forces=list(self._torque_max),
            positionGains=[self._kp] * self.dof, velocityGains=[self._kd] * self.dof,
            physicsClientId=self._client)

    def command_joints(self, joint_pos: np.ndarray, gripper_width: float) -> None:
        q, g = self._check_command(joint_pos, gripper_width)
        self._set_position_targets(np.clip(q, self._qmin, self._qmax))
        self._gripper_cmd = float(np.clip(g, 0.0, self.robot_config.gripper_width))

    def hold(self) -> None:
        state = self.read_state()
        self._damped = False
        self.command_joints(state.joint_pos, state.gripper_width)

    def damp(self) -> None:
        self._p.setJointMotorControlArray(
            self._body, self._joints, self._p.VELOCITY_CONTROL, targetVelocities=[0.0] * self.dof,
            forces=list(self._damp_force), physicsClientId=self._client)
        self._gripper_cmd = self._gripper
        self._damped = True

    def tick(self) -> None:
        step = float(self.robot_config.gripper_vel_max) * self.control_dt
        self._gripper += float(np.clip(self._gripper_cmd - self._gripper, -step, step))
        self._p.stepSimulation(physicsClientId=self._client)
        self._steps += 1

    def close(self) -> None:
        if self._client is None:
            return
        self.damp()
        self._p.disconnect(physicsClientId=self._client)
        self._client = None
        self._tmpdir.cleanup()
