"""A CAN-less stand-in for ``arx5_interface.Arx5JointController``, for the tests of the ARX5 driver.

It has the same methods as the real controller, takes and returns the SDK's real ``JointState`` /
``Gain`` objects, and models the arm as first-order tracking of the command while stiff
(``tracking_alpha`` per control period, 1 = perfect) and as motionless while damped.  Every call
that changes the arm is appended to :attr:`calls` so tests can check what reached "the hardware".
"""

from __future__ import annotations

from typing import Any

import numpy as np


class StandInJointController:
    """Same interface as ``Arx5JointController(robot_config, controller_config, interface_name)``."""

    def __init__(self, robot_config: Any, controller_config: Any, interface_name: str,
                 initial_joint_pos: np.ndarray | None = None, tracking_alpha: float = 1.0):
        import arx5_interface as arx5

        self._arx5 = arx5
        self.robot_config = robot_config
        self.controller_config = controller_config
        self.interface_name = interface_name
        dof = int(robot_config.joint_dof)
        q0 = np.zeros(dof) if initial_joint_pos is None else np.asarray(initial_joint_pos, dtype=float)
        self._state = arx5.JointState(q0.copy(), np.zeros(dof), np.zeros(dof), 0.0)
        self._cmd = arx5.JointState(q0.copy(), np.zeros(dof), np.zeros(dof), 0.0)
        self._gain = arx5.Gain(dof)
        self.alpha = float(tracking_alpha)
        self.time = 0.0
        self.calls: list[tuple[str, Any]] = []

    # --- the SDK's methods -------------------------------------------------------
    def send_recv_once(self) -> None:
        self._advance()

    def recv_once(self) -> None:
        pass

    def set_joint_cmd(self, cmd: Any) -> None:
        if not isinstance(cmd, self._arx5.JointState):
            raise TypeError("set_joint_cmd expects arx5_interface.JointState")
        self._cmd = cmd
        self.calls.append(("set_joint_cmd", (np.array(cmd.pos()), float(cmd.gripper_pos))))
        if not bool(self.controller_config.background_send_recv):
            return
        self._advance()

    def set_joint_traj(self, traj: list) -> None:
        for cmd in traj:
            self.set_joint_cmd(cmd)

    def get_joint_cmd(self) -> Any:
        return self._cmd

    def get_timestamp(self) -> float:
        return self.time

    def get_joint_state(self) -> Any:
        return self._state

    def get_eef_state(self) -> Any:
        raise NotImplementedError("the stand-in has no Cartesian state; use arx5_driver.kinematics")

    def get_home_pose(self) -> np.ndarray:
        return np.zeros(int(self.robot_config.joint_dof))

    def set_gain(self, gain: Any) -> None:
        if not isinstance(gain, self._arx5.Gain):
            raise TypeError("set_gain expects arx5_interface.Gain")
        self._gain = gain
        self.calls.append(("set_gain", np.array(gain.kp())))

    def get_gain(self) -> Any:
        return self._gain

    def get_robot_config(self) -> Any:
        return self.robot_config

    def get_controller_config(self) -> Any:
        return self.controller_config

    def reset_to_home(self) -> None:
        raise NotImplementedError("the stand-in does not move on its own")

    def set_to_damping(self) -> None:
        dof = int(self.robot_config.joint_dof)
        self._gain = self._arx5.Gain(np.zeros(dof), np.asarray(self.controller_config.default_kd, dtype=float), 0.0,
                                     float(self.controller_config.default_gripper_kd))
        self.calls.append(("set_to_damping", None))

    def calibrate_gripper(self) -> None:
        raise NotImplementedError

    def calibrate_joint(self, joint_id: int) -> None:
        raise NotImplementedError

    def set_log_level(self, level: Any) -> None:
        pass

    # --- model -------------------------------------------------------------------
    @property
    def damped(self) -> bool:
        return not np.any(np.asarray(self._gain.kp()) > 0)

    def _advance(self) -> None:
        self.time += float(self.controller_config.controller_dt)
        if self.damped:
            return
        q = np.asarray(self._state.pos(), dtype=float)
        q_new = q + self.alpha * (np.asarray(self._cmd.pos(), dtype=float) - q)
        g = float(self._state.gripper_pos)
        g_new = g + self.alpha * (float(self._cmd.gripper_pos) - g)
        dof = len(q)
        self._state = self._arx5.JointState(q_new, (q_new - q) / float(self.controller_config.controller_dt),
                                            np.zeros(dof), g_new)
