"""Franka Panda from ``pybullet_data`` at CALVIN's base pose, driven by end-effector targets (IK)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pybullet as p
import pybullet_data

ARM_JOINTS = tuple(range(7))
FINGER_JOINTS = (9, 10)
TCP_LINK = 11          # panda_grasptarget
HAND_LINK = 8          # panda_hand
ARM_FORCES = (87.0, 87.0, 87.0, 87.0, 12.0, 120.0, 120.0)
FINGER_FORCE = 40.0
#: joint position-servo gains: with 0.4 the TCP follows a 0.02 m relative step within one 30 Hz step
POSITION_GAIN = 0.4
VELOCITY_GAIN = 1.0
FINGER_OPEN = 0.04     # m per finger (opening width 0.08 m)


ROBOT_VISUALS = ("collision", "mesh")


def panda_urdf(visual: str, asset_dir: str | Path) -> Path:
    """Path of the Panda URDF to load: ``"mesh"`` is ``pybullet_data``'s file with its detailed visual
    meshes; ``"collision"`` writes a copy into ``asset_dir`` whose visuals are the coarse collision meshes
    (same shapes, about 2.4x faster TINY rendering)."""
    if visual not in ROBOT_VISUALS:
        raise ValueError(f"robot_visual must be one of {ROBOT_VISUALS}, got {visual!r}")
    source = Path(pybullet_data.getDataPath()) / "franka_panda" / "panda.urdf"
    if visual == "mesh":
        return source
    meshes = source.parent / "meshes"
    text = source.read_text()
    text = text.replace("package://meshes/visual/", f"{meshes}/collision/")
    text = text.replace("package://meshes/collision/", f"{meshes}/collision/")
    out = Path(asset_dir) / "panda_collision_visuals.urdf"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out


def panda_description(base_position, base_rpy=(0.0, 0.0, 0.0)) -> str:
    """URDF text of the simulated Panda for ``/robot_description`` (rviz RobotModel, Foxglove): ``pybullet_data``'s
    Panda with its meshes as absolute ``file://`` URIs, under a ``world`` link with the arm's base pose (m, rad);
    joint names are those of the bridge's ``joint_states``."""
    source = Path(pybullet_data.getDataPath()) / "franka_panda" / "panda.urdf"
    text = source.read_text().replace("package://meshes/", f"file://{source.parent / 'meshes'}/")
    x, y, z = (float(v) for v in base_position)
    r, pi, yaw = (float(v) for v in base_rpy)
    world = (f'<link name="world"/>\n  <joint name="world_to_panda" type="fixed">\n    <parent link="world"/>\n'
             f'    <child link="panda_link0"/>\n    <origin xyz="{x:g} {y:g} {z:g}" rpy="{r:g} {pi:g} {yaw:g}"/>\n'
             '  </joint>\n  ')
    head, sep, tail = text.partition("<link ")
    return head + world + sep + tail


class PandaRobot:
    """The arm: reset to joint positions, read the TCP, follow TCP pose targets with IK + position control."""

    def __init__(self, client: int, base_position, initial_joints, visual: str = "collision",
                 asset_dir: str | Path | None = None, base_orientation=(0.0, 0.0, 0.0, 1.0)):
        """Load the Panda with its base at ``base_position`` (3,) m, ``base_orientation`` quaternion xyzw (4,),
        home joints ``initial_joints`` (7,) rad (IK rest pose)."""
        self.client = client
        if visual != "mesh" and asset_dir is None:
            raise ValueError("asset_dir is needed to write the Panda URDF with collision visuals")
        self.uid = p.loadURDF(str(panda_urdf(visual, asset_dir or ".")), list(base_position), list(base_orientation),
                              useFixedBase=True, physicsClientId=client)
        self.initial_joints = np.asarray(initial_joints, dtype=np.float64)
        if self.initial_joints.shape != (7,):
            raise ValueError(f"initial_joints must have shape (7,), got {self.initial_joints.shape}")
        infos = [p.getJointInfo(self.uid, j, physicsClientId=client) for j in ARM_JOINTS + FINGER_JOINTS]
        self.joint_names = [i[1].decode() for i in infos]
        self.lower = np.array([i[8] for i in infos[:7]])
        self.upper = np.array([i[9] for i in infos[:7]])
        self.gripper_action = 1.0
        for j in FINGER_JOINTS:
            p.changeDynamics(self.uid, j, lateralFriction=1.5, physicsClientId=client)

    def reset(self, joints, gripper_action: float = 1.0) -> None:
        """Teleport the arm to ``joints`` (7,) rad and the fingers open (+1) or closed (-1)."""
        q = np.asarray(joints, dtype=np.float64)
        if q.shape != (7,):
            raise ValueError(f"robot joints must have shape (7,), got {q.shape}")
        if np.any(q < self.lower - 1e-6) or np.any(q > self.upper + 1e-6):
            raise ValueError(f"robot joints {q.round(3).tolist()} outside limits")
        for j, v in zip(ARM_JOINTS, q):
            p.resetJointState(self.uid, j, v, 0.0, physicsClientId=self.client)
        finger = FINGER_OPEN if gripper_action > 0 else 0.0
        for j in FINGER_JOINTS:
            p.resetJointState(self.uid, j, finger, 0.0, physicsClientId=self.client)
        self.gripper_action = 1.0 if gripper_action > 0 else -1.0
        self.hold(q)

    def hold(self, q) -> None:
        p.setJointMotorControlArray(self.uid, ARM_JOINTS, p.POSITION_CONTROL, targetPositions=list(q),
                                    forces=ARM_FORCES, positionGains=[POSITION_GAIN] * 7,
                                    velocityGains=[VELOCITY_GAIN] * 7, physicsClientId=self.client)
        self._command_gripper(self.gripper_action)

    def _command_gripper(self, action: float) -> None:
        target = FINGER_OPEN if action > 0 else 0.0
        p.setJointMotorControlArray(self.uid, FINGER_JOINTS, p.POSITION_CONTROL, targetPositions=[target, target],
                                    forces=[FINGER_FORCE, FINGER_FORCE], physicsClientId=self.client)

    def joint_positions(self) -> np.ndarray:
        """Arm (7) then finger (2) joint positions (rad, m), in the order of ``joint_names``."""
        states = p.getJointStates(self.uid, ARM_JOINTS + FINGER_JOINTS, physicsClientId=self.client)
        return np.array([s[0] for s in states])

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) m and orientation quaternion (4,) xyzw in the world frame."""
        s = p.getLinkState(self.uid, TCP_LINK, computeForwardKinematics=True, physicsClientId=self.client)
        return np.asarray(s[4]), np.asarray(s[5])

    def hand_pose(self) -> tuple[np.ndarray, np.ndarray]:
        s = p.getLinkState(self.uid, HAND_LINK, computeForwardKinematics=True, physicsClientId=self.client)
        return np.asarray(s[4]), np.asarray(s[5])

    def gripper_width(self) -> float:
        return float(sum(p.getJointState(self.uid, j, physicsClientId=self.client)[0] for j in FINGER_JOINTS))

    def robot_obs(self) -> np.ndarray:
        """CALVIN robot_obs (15,): TCP xyz, TCP euler, gripper width, 7 arm joints, gripper action (+1/-1)."""
        pos, orn = self.tcp_pose()
        q = self.joint_positions()[:7]
        return np.concatenate([pos, p.getEulerFromQuaternion(orn), [self.gripper_width()], q, [self.gripper_action]])

    def apply_tcp_target(self, position, orientation, gripper_action: float) -> None:
        """Command the arm towards TCP ``position`` (3,) m, ``orientation`` quaternion xyzw (4,), and the
        gripper open (``gripper_action`` > 0) or closed."""
        ranges = self.upper - self.lower
        q = p.calculateInverseKinematics(
            self.uid, TCP_LINK, list(position), list(orientation), lowerLimits=list(self.lower) + [0, 0],
            upperLimits=list(self.upper) + [0.04, 0.04], jointRanges=list(ranges) + [0.04, 0.04],
            restPoses=list(self.initial_joints) + [0.02, 0.02], maxNumIterations=30, residualThreshold=1e-4,
            physicsClientId=self.client)
        q = np.clip(np.asarray(q[:7]), self.lower, self.upper)
        self.gripper_action = 1.0 if gripper_action > 0 else -1.0
        self.hold(q)
