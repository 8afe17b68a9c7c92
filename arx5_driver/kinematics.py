"""Forward/inverse kinematics of the ARX5 through the SDK's own solver (``arx5_interface.Arx5Solver``).

The solver is built from the real ``RobotConfig`` (URDF path, joint limits, base/end-effector links);
it needs no hardware.  Poses are returned as ``(position (3,) m, rotation (3, 3))`` in the robot base
frame (``RobotConfig.base_link_name``), of the end-effector link ``RobotConfig.eef_link_name``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from arx5_driver.transforms import matrix_to_rpy, rpy_to_matrix


class Kinematics:
    """FK/IK of one arm model; ``robot_config`` is an ``arx5_interface.RobotConfig``."""

    def __init__(self, robot_config: Any):
        import arx5_interface as arx5

        self.robot_config = robot_config
        self.dof = int(robot_config.joint_dof)
        self._solver = arx5.Arx5Solver(
            robot_config.urdf_path,
            self.dof,
            np.asarray(robot_config.joint_pos_min, dtype=float),
            np.asarray(robot_config.joint_pos_max, dtype=float),
            robot_config.base_link_name,
            robot_config.eef_link_name,
            np.asarray(robot_config.gravity_vector, dtype=float),
        )

    def fk_pose6d(self, joint_pos: np.ndarray) -> np.ndarray:
        """``joint_pos (dof,)`` rad → SDK ``pose_6d (6,)``: ``[x, y, z (m), roll, pitch, yaw (rad)]``."""
        return np.asarray(self._solver.forward_kinematics(np.asarray(joint_pos, dtype=float)), dtype=float)

    def fk_position(self, joint_pos: np.ndarray) -> np.ndarray:
        """``joint_pos (dof,)`` rad → end-effector position ``(3,)`` m in the base frame."""
        return self.fk_pose6d(joint_pos)[:3]

    def fk(self, joint_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``joint_pos (dof,)`` → ``(position (3,) m, rotation (3, 3))`` of the end-effector in the base frame."""
        pose = self.fk_pose6d(joint_pos)
        return pose[:3].copy(), rpy_to_matrix(pose[3:])

    def ik(self, position: np.ndarray, rotation: np.ndarray, seed: np.ndarray,
           tolerance_m: float = 2e-3, tolerance_rad: float = 2e-2) -> np.ndarray | None:
        """Joint positions ``(dof,)`` reaching the pose, started from ``seed (dof,)``; ``None`` if unreachable.

        The SDK solver's own status is used, and the answer is re-checked by FK: a solution whose
        position error exceeds ``tolerance_m`` or rotation error exceeds ``tolerance_rad`` is refused.
        """
        target = np.concatenate([np.asarray(position, dtype=float).reshape(3), matrix_to_rpy(rotation)])
        if not np.all(np.isfinite(target)):
            return None
        status, q = self._solver.inverse_kinematics(target, np.asarray(seed, dtype=float))
        q = np.asarray(q, dtype=float)
        if not np.all(np.isfinite(q)):
            return None
        p, r = self.fk(q)
        err_rot = np.arccos(np.clip((np.trace(r.T @ np.asarray(rotation, dtype=float)) - 1.0) / 2.0, -1.0, 1.0))
        if np.linalg.norm(p - position) > tolerance_m or err_rot > tolerance_rad:
            return None
        # the FK re-check above is the acceptance criterion (status may report max-iterations on a fine answer)
        del status
        return q
