"""Load a play table (procedural or real CALVIN assets) into PyBullet and read/write its state.

All positions are world metres, joint states metres (prismatic), lights 0/1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import numpy as np
import pybullet as p

from calvin_bridge.config import CalvinEnvConfig
from calvin_bridge.scene_file import BLOCK_NAMES, SceneLayout, load_scene_layout, procedural_layout

#: scene_obs joint order and the URDF joint names
JOINTS = {"door": "base__slide", "drawer": "base__drawer", "button": "base__button", "switch": "base__switch"}
LIGHT_COLOURS = {"lightbulb": ((1.0, 1.0, 0.0, 1.0), (1.0, 1.0, 1.0, 1.0)),
                 "led": ((0.0, 1.0, 0.0, 1.0), (1.0, 1.0, 1.0, 1.0))}

#: resistance of the articulated joints (N): velocity motors with zero target act as friction
JOINT_FRICTION = {"door": 6.0, "drawer": 6.0, "switch": 3.0}
BUTTON_SPRING_FORCE = 3.0


@dataclass
class PartFrame:
    """Where an articulated part is now: its link origin (3,), rotation (3, 3) link→world,
    the joint's unit axis in world coordinates (3,), joint position and range (m)."""

    position: np.ndarray
    rotation: np.ndarray
    axis: np.ndarray
    value: float
    lower: float
    upper: float
    scale: float

    def point(self, local_unscaled: tuple[float, float, float]) -> np.ndarray:
        """World position of a point given in the link frame in the table's unscaled units."""
        return self.position + self.rotation @ (np.asarray(local_unscaled, dtype=np.float64) * self.scale)


class PlayTableScene:
    """The table, its four articulations, two lights and three blocks inside one PyBullet client."""

    def __init__(self, config: CalvinEnvConfig, client: int, asset_dir: str | Path):
        """``asset_dir``: where the procedural URDFs are written (unused for the real CALVIN assets).

        The layout (table and block files, surfaces, scaling, robot base) comes from the table's own files:
        the scene file of ``config.table`` under ``config.calvin_data_dir``, or the procedural table's
        (:mod:`calvin_bridge.scene_file`); it is kept as ``self.layout``.
        """
        self.config = config
        self.client = client
        if config.calvin_data_dir is None:
            self.layout: SceneLayout = procedural_layout(asset_dir)
        else:
            self.layout = load_scene_layout(config.calvin_data_dir, config.table)
        layout = self.layout
        self.scale = layout.global_scaling
        self.source = layout.source
        self.surfaces = layout.surfaces
        table_file = layout.table_urdf
        self.plane = p.loadURDF(str(layout.plane_urdf), physicsClientId=client)
        self.table = p.loadURDF(str(table_file), list(layout.table_position),
                                p.getQuaternionFromEuler(layout.table_orientation), useFixedBase=True,
                                globalScaling=self.scale, physicsClientId=client)
        names = {p.getJointInfo(self.table, j, physicsClientId=client)[1].decode(): j
                 for j in range(p.getNumJoints(self.table, physicsClientId=client))}
        links = {p.getJointInfo(self.table, j, physicsClientId=client)[12].decode(): j
                 for j in range(p.getNumJoints(self.table, physicsClientId=client))}
        missing = ([n for n in JOINTS.values() if n not in names]
                   + [n for n in ("light_link", "led_link") if n not in links])
        if missing:
            raise ValueError(f"table {table_file} lacks joints/links {missing}")
        self.joint_index = {k: names[v] for k, v in JOINTS.items()}
        self.light_link = {"lightbulb": links["light_link"], "led": links["led_link"]}
        self.joint_limits = {k: tuple(p.getJointInfo(self.table, j, physicsClientId=client)[8:10])
                             for k, j in self.joint_index.items()}
        self.blocks = {n: p.loadURDF(str(f), [0, 0, 1.0 + 0.2 * i], globalScaling=self.scale, physicsClientId=client)
                       for i, (n, f) in enumerate(layout.block_urdfs.items())}
        #: half-extents (3,) m of each block, from its URDF's collision geometry (scaled)
        self.block_half_extents = layout.block_half_extents()
        self.led_on = False
        self._button_was_pressed = False
        self._apply_joint_motors()

    # ----------------------------------------------------------------- joints and lights
    def _apply_joint_motors(self) -> None:
        for name, force in JOINT_FRICTION.items():
            p.setJointMotorControl2(self.table, self.joint_index[name], p.VELOCITY_CONTROL, targetVelocity=0.0,
                                    force=force, physicsClientId=self.client)
        p.setJointMotorControl2(self.table, self.joint_index["button"], p.POSITION_CONTROL, targetPosition=0.0,
                                force=BUTTON_SPRING_FORCE, positionGain=0.05, physicsClientId=self.client)

    def joint_value(self, name: str) -> float:
        return float(p.getJointState(self.table, self.joint_index[name], physicsClientId=self.client)[0])

    def midpoint(self, name: str) -> float:
        lo, hi = self.joint_limits[name]
        return 0.5 * (lo + hi)

    @property
    def lightbulb_on(self) -> bool:
        """The lightbulb follows the switch: on past the switch's midpoint."""
        return self.joint_value("switch") > self.midpoint("switch")

    def update_lights(self) -> None:
        """Call after every physics step: each press of the button past its midpoint toggles the LED."""
        pressed = self.joint_value("button") > self.midpoint("button")
        if pressed and not self._button_was_pressed:
            self.led_on = not self.led_on
        self._button_was_pressed = pressed

    def colour_lights(self) -> None:
        """Paint lightbulb/LED links with their on/off colours (only needed before rendering)."""
        for light, on in (("lightbulb", self.lightbulb_on), ("led", self.led_on)):
            on_rgba, off_rgba = LIGHT_COLOURS[light]
            p.changeVisualShape(self.table, self.light_link[light], rgbaColor=on_rgba if on else off_rgba,
                                physicsClientId=self.client)

    def part_frame(self, name: str) -> PartFrame:
        """Current frame of ``door``/``drawer``/``button``/``switch`` read from PyBullet."""
        j = self.joint_index[name]
        info = p.getJointInfo(self.table, j, physicsClientId=self.client)
        state = p.getLinkState(self.table, j, computeForwardKinematics=True, physicsClientId=self.client)
        rot = np.asarray(p.getMatrixFromQuaternion(state[5]), dtype=np.float64).reshape(3, 3)
        axis = rot @ np.asarray(info[13], dtype=np.float64)
        return PartFrame(np.asarray(state[4]), rot, axis / np.linalg.norm(axis), self.joint_value(name),
                         float(info[8]), float(info[9]), self.scale)

    def link_aabb(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = p.getAABB(self.table, self.joint_index[name], physicsClientId=self.client)
        return np.asarray(lo), np.asarray(hi)

    # ----------------------------------------------------------------- state
    def scene_obs(self) -> np.ndarray:
        """CALVIN scene_obs (24,): door, drawer, button, switch, lightbulb, LED, then red/blue/pink xyz+euler."""
        out = [self.joint_value(k) for k in ("door", "drawer", "button", "switch")]
        out += [float(self.lightbulb_on), float(self.led_on)]
        for n in BLOCK_NAMES:
            pos, orn = p.getBasePositionAndOrientation(self.blocks[n], physicsClientId=self.client)
            out += list(pos) + list(p.getEulerFromQuaternion(orn))
        return np.asarray(out, dtype=np.float64)

    def set_state(self, state: Mapping[str, Any] | np.ndarray | list) -> None:
        """Set joints, LED and blocks.

        ``state`` is either a scene_obs vector (24,) or a mapping with any of ``door``, ``drawer``,
        ``button``, ``switch`` (m), ``led`` (0/1), ``lightbulb`` (0/1: sets the switch to its lower or
        upper limit unless ``switch`` is given), and ``block_red``/``block_blue``/``block_pink`` as
        ``[x, y, z]`` or ``[x, y, z, roll, pitch, yaw]``.
        """
        if not isinstance(state, Mapping):
            arr = np.asarray(state, dtype=np.float64)
            if arr.shape != (24,):
                raise ValueError(f"scene state vector must have shape (24,), got {arr.shape}")
            state = {"door": arr[0], "drawer": arr[1], "button": arr[2], "switch": arr[3], "led": arr[5],
                     **{n: arr[6 + 6 * i: 12 + 6 * i] for i, n in enumerate(BLOCK_NAMES)}}
        allowed = set(JOINTS) | {"led", "lightbulb"} | set(BLOCK_NAMES)
        unknown = sorted(set(state) - allowed)
        if unknown:
            raise ValueError(f"unknown scene state key(s) {unknown}; valid: {sorted(allowed)}")
        state = dict(state)
        if "lightbulb" in state and "switch" not in state:
            lo, hi = self.joint_limits["switch"]
            state["switch"] = hi if float(state["lightbulb"]) > 0.5 else lo
        for name in JOINTS:
            if name in state:
                value = float(state[name])
                lo, hi = self.joint_limits[name]
                if not lo - 1e-6 <= value <= hi + 1e-6:
                    raise ValueError(f"scene state {name}={value} outside its joint range [{lo:.4f}, {hi:.4f}]")
                p.resetJointState(self.table, self.joint_index[name], value, 0.0, physicsClientId=self.client)
        if "led" in state:
            self.led_on = bool(float(state["led"]) > 0.5)
        self._button_was_pressed = self.joint_value("button") > self.midpoint("button")
        for n in BLOCK_NAMES:
            if n in state:
                v = np.asarray(state[n], dtype=np.float64).ravel()
                if v.shape not in ((3,), (6,)):
                    raise ValueError(f"{n} must be [x,y,z] or [x,y,z,roll,pitch,yaw], got shape {v.shape}")
                orn = p.getQuaternionFromEuler(v[3:6]) if v.shape == (6,) else (0, 0, 0, 1)
                p.resetBasePositionAndOrientation(self.blocks[n], v[:3], orn, physicsClientId=self.client)
                p.resetBaseVelocity(self.blocks[n], [0, 0, 0], [0, 0, 0], physicsClientId=self.client)
        self._apply_joint_motors()

    def random_state(self, rng: np.random.Generator) -> dict[str, Any]:
        """A random scene: joints uniform in range, button up, LED random, blocks on the table's surfaces."""
        state: dict[str, Any] = {}
        for name in ("door", "drawer", "switch"):
            lo, hi = self.joint_limits[name]
            state[name] = float(rng.uniform(lo, hi))
        state["button"] = 0.0
        state["led"] = int(rng.integers(0, 2))
        state.update(self.random_blocks(rng))
        return state

    def random_blocks(self, rng: np.random.Generator, fixed: Mapping[str, Any] | None = None) -> dict[str, list[float]]:
        """Blocks placed uniformly on random surfaces (random yaw), at least ``block_min_distance`` apart."""
        surfaces = self.surfaces
        names = sorted(surfaces)
        placed: dict[str, list[float]] = {k: list(v) for k, v in (fixed or {}).items()}
        for n in BLOCK_NAMES:
            if n in placed:
                continue
            for _ in range(200):
                lo, hi = (np.asarray(c, dtype=np.float64) for c in surfaces[names[int(rng.integers(len(names)))]])
                pos = rng.uniform(lo, hi) + np.array([0.0, 0.0, 0.005])
                if all(np.linalg.norm(pos[:2] - np.asarray(q[:2])) >= self.config.block_min_distance
                       for q in placed.values()):
                    break
            else:
                raise ValueError("could not place blocks apart; lower block_min_distance or enlarge surfaces")
            placed[n] = [*pos.tolist(), 0.0, 0.0, float(rng.uniform(-np.pi, np.pi))]
        return placed

