"""``CalvinEnv``: a gymnasium-style CALVIN-like environment on PyBullet (headless, TINY renderer).

Observations (dict):
    ``robot_obs`` (15,) float64 — TCP xyz (m), TCP euler (rad), gripper width (m), 7 arm joints (rad),
        gripper action (+1 open / -1 closed);
    ``scene_obs`` (24,) float64 — door, drawer, button, switch (m), lightbulb, LED (0/1), red, blue,
        pink block xyz (m) + euler (rad);
    ``rgb_static`` (H, W, 3) uint8 and ``rgb_gripper`` (84, 84, 3) uint8 when rendering is on.
Actions:
    relative (default): (7,) ``dx dy dz droll dpitch dyaw gripper`` clipped to [-1, 1]; one unit is
        ``max_rel_pos`` m / ``max_rel_orn`` rad; gripper > 0 opens, otherwise closes;
    absolute: (7,) TCP ``x y z`` (m), ``roll pitch yaw`` (rad), gripper ±1.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from collections.abc import Mapping
from typing import Any

import numpy as np
import pybullet as p

from calvin_bridge.config import CalvinEnvConfig, CameraConfig
from calvin_bridge.labels import behaviour_label, calvin_tasks
from calvin_bridge.robot import PandaRobot
from calvin_bridge.scene import PlayTableScene


def wrap_angle(a):
    """Angles (rad) wrapped to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


class CalvinEnv:
    """CALVIN-like play table with a Franka Panda.  See the module docstring for spaces."""

    def __init__(self, config: CalvinEnvConfig | None = None):
        self.config = config or CalvinEnvConfig()
        self.client = p.connect(p.DIRECT)
        p.setTimeStep(1.0 / self.config.physics_hz, physicsClientId=self.client)
        p.setGravity(0, 0, -9.81, physicsClientId=self.client)
        self._tmp: tempfile.TemporaryDirectory | None = None
        if self.config.cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="calvin_assets_")
            asset_dir = Path(self._tmp.name)
        else:
            asset_dir = Path(self.config.cache_dir)
        self.scene = PlayTableScene(self.config, self.client, asset_dir)
        layout = self.scene.layout
        self.robot = PandaRobot(self.client, layout.robot_base_position, layout.robot_initial_joints,
                                visual=self.config.robot_visual, asset_dir=asset_dir,
                                base_orientation=p.getQuaternionFromEuler(layout.robot_base_orientation))
        self.first_scene_obs: np.ndarray | None = None
        self.steps = 0
        self._closed = False
        self.np_random = np.random.default_rng()

    # ------------------------------------------------------------------ API used by the ROS node
    @property
    def joint_names(self) -> list[str]:
        """Names of the 7 arm joints then the 2 finger joints."""
        return list(self.robot.joint_names)

    def joint_positions(self) -> np.ndarray:
        """(9,) arm joints (rad) then finger joints (m)."""
        return self.robot.joint_positions()

    def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """TCP position (3,) m and quaternion (4,) xyzw, world frame."""
        return self.robot.tcp_pose()

    # ------------------------------------------------------------------ gymnasium-style API
    def reset(self, seed: int | None = None, options: Mapping[str, Any] | None = None) -> tuple[dict, dict]:
        """Reset scene and robot.

        Options: ``scene`` (mapping or scene_obs (24,), see :meth:`PlayTableScene.set_state`; keys not
        given are randomised), ``robot_joints`` (7,) rad (default: the scene file's home joints plus uniform noise of
        ``robot_joint_noise``), ``randomize_robot`` (bool, default True), ``gripper`` (+1/-1).
        """
        options = dict(options or {})
        unknown = sorted(set(options) - {"scene", "robot_joints", "randomize_robot", "gripper"})
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}")
        if seed is not None:
            self.np_random = np.random.default_rng(seed)
        rng = self.np_random
        state = self.scene.random_state(rng)
        given = options.get("scene")
        if given is not None:
            if isinstance(given, Mapping):
                given_blocks = {k: v for k, v in given.items() if k.startswith("block_")}
                state.update(self.scene.random_blocks(rng, fixed=given_blocks))
                state.update(given)
                if "lightbulb" in given and "switch" not in given:
                    state.pop("switch")
            else:
                state = given
        if options.get("robot_joints") is not None:
            joints = np.asarray(options["robot_joints"], dtype=np.float64)
        else:
            joints = np.asarray(self.scene.layout.robot_initial_joints)
            if options.get("randomize_robot", True) and self.config.robot_joint_noise > 0:
                joints = joints + rng.uniform(-1, 1, size=7) * self.config.robot_joint_noise
                joints = np.clip(joints, self.robot.lower, self.robot.upper)
        self.robot.reset(joints, float(options.get("gripper", 1.0)))
        self.scene.set_state(state)
        for _ in range(self.config.settle_steps):
            self._physics_step()
        self.first_scene_obs = self.scene.scene_obs()
        self.steps = 0
        obs = self._observation(self.config.render_every_step)
        return obs, {"behaviour": "no_behaviour", "scene_source": self.scene.source}

    def begin_segment(self) -> None:
        """Make the current scene state the reference of behaviour labels (``first_scene_obs``): a play
        episode's next segment starts here, and its label says what changed since."""
        if self.first_scene_obs is None:
            raise RuntimeError("call reset() before begin_segment()")
        self.first_scene_obs = self.scene.scene_obs()

    def step(self, action) -> tuple[dict, float, bool, bool, dict]:
        """Apply one 30 Hz control step; returns ``(obs, reward, terminated, truncated, info)`` with
        ``info["behaviour"]`` the label against the episode's first state and ``info["tasks"]`` the
        CALVIN tasks completed so far.  ``reward`` is always 0 and ``terminated`` False (play data has no
        task); ``truncated`` turns True at ``max_episode_steps``."""
        if self.first_scene_obs is None:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (7,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be 7 finite numbers, got shape {a.shape}")
        if self.config.action_mode == "relative":
            position, orientation = self.relative_to_absolute(a)
        else:
            position, orientation = a[:3], p.getQuaternionFromEuler(a[3:6])
        self.robot.apply_tcp_target(self.clip_to_workspace(position), orientation, a[6])
        for _ in range(self.config.substeps):
            self._physics_step()
        self.steps += 1
        obs = self._observation(self.config.render_every_step)
        label = behaviour_label(self.first_scene_obs, obs["scene_obs"], obs["robot_obs"][:3])
        info = {"behaviour": label, "tasks": sorted(calvin_tasks(self.first_scene_obs, obs["scene_obs"]))}
        limit = self.config.max_episode_steps
        return obs, 0.0, False, bool(limit is not None and self.steps >= limit), info

    def clip_to_workspace(self, position) -> np.ndarray:
        """TCP target (3,) m clipped to ``config.workspace_bounds`` (unchanged when that is ``None``)."""
        position = np.asarray(position, dtype=np.float64)
        if self.config.workspace_bounds is None:
            return position
        lo, hi = (np.asarray(c, dtype=np.float64) for c in self.config.workspace_bounds)
        return np.clip(position, lo, hi)

    def relative_to_absolute(self, action: np.ndarray) -> tuple[np.ndarray, tuple]:
        """Relative 7-d action → TCP target position (3,) and quaternion from the current TCP pose."""
        a = np.clip(action, -1.0, 1.0)
        pos, orn = self.robot.tcp_pose()
        euler = np.asarray(p.getEulerFromQuaternion(orn)) + a[3:6] * self.config.max_rel_orn
        return pos + a[:3] * self.config.max_rel_pos, p.getQuaternionFromEuler(euler)

    def absolute_to_relative(self, position, euler, gripper: float) -> np.ndarray:
        """The relative action (7,) in [-1, 1] that heads from the current TCP pose towards an absolute target."""
        pos, orn = self.robot.tcp_pose()
        dpos = (np.asarray(position) - pos) / self.config.max_rel_pos
        dorn = wrap_angle(np.asarray(euler) - np.asarray(p.getEulerFromQuaternion(orn))) / self.config.max_rel_orn
        return np.clip(np.concatenate([dpos, dorn, [1.0 if gripper > 0 else -1.0]]), -1.0, 1.0)

    def _physics_step(self) -> None:
        p.stepSimulation(physicsClientId=self.client)
        self.scene.update_lights()

    def _observation(self, render: bool) -> dict[str, np.ndarray]:
        obs = {"robot_obs": self.robot.robot_obs(), "scene_obs": self.scene.scene_obs()}
        if render:
            obs.update(self.render_cameras())
        return obs

    def behaviour(self) -> str:
        """Current behaviour label against the episode's first state."""
        pos, _ = self.robot.tcp_pose()
        return behaviour_label(self.first_scene_obs, self.scene.scene_obs(), pos)

    # ------------------------------------------------------------------ cameras
    def _render(self, cam: CameraConfig, eye, target, up) -> np.ndarray:
        view = p.computeViewMatrix(list(eye), list(target), list(up), physicsClientId=self.client)
        proj = p.computeProjectionMatrixFOV(cam.fov, cam.width / cam.height, cam.near, cam.far,
                                            physicsClientId=self.client)
        img = p.getCameraImage(cam.width, cam.height, view, proj, renderer=p.ER_TINY_RENDERER,
                               flags=p.ER_NO_SEGMENTATION_MASK, physicsClientId=self.client)[2]
        return np.asarray(img, dtype=np.uint8).reshape(cam.height, cam.width, 4)[:, :, :3].copy()

    def render_cameras(self) -> dict[str, np.ndarray]:
        """``rgb_static`` (H, W, 3) and ``rgb_gripper`` (h, w, 3) uint8 images of the current state."""
        self.scene.colour_lights()
        s = self.config.static_camera
        static = self._render(s, s.look_from, s.look_at, s.up)
        hand_pos, hand_orn = self.robot.hand_pose()
        rot = np.asarray(p.getMatrixFromQuaternion(hand_orn)).reshape(3, 3)
        approach, side = rot[:, 2], rot[:, 0]
        eye = hand_pos + 0.03 * approach - 0.06 * side
        gripper = self._render(self.config.gripper_camera, eye, eye + 0.2 * approach + 0.03 * side, side)
        return {"rgb_static": static, "rgb_gripper": gripper}

    def close(self) -> None:
        if not self._closed:
            p.disconnect(self.client)
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None
            self._closed = True

    def __enter__(self) -> CalvinEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
