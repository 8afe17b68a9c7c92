"""Typed configuration of the CALVIN-like environment (loadable from ``config/calvin_env.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field



#: the env's cameras (``CalvinEnv.render_cameras`` keys) → their dataset keys in recorded HDF5 files
#: (:mod:`calvin_bridge.datasets`)
DATASET_CAMERAS = {"rgb_static": "third_person", "rgb_gripper": "eye_in_hand"}

@dataclass
class CameraConfig:
    """A pinhole camera rendered with PyBullet's TINY renderer.

    ``look_from``/``look_at``/``up`` are world coordinates in metres (static camera) and are ignored for
    the gripper camera, which is attached to the hand.  ``fov`` is the vertical field of view in degrees.
    """

    width: int = 200
    height: int = 200
    fov: float = 14.0
    near: float = 0.01
    far: float = 10.0
    look_from: tuple[float, float, float] = (2.871459009488717, -2.166602199425597, 2.555159848480571)
    look_at: tuple[float, float, float] = (-0.026242351159453392, -0.0302329882979393, 0.3920000493526459)
    up: tuple[float, float, float] = (0.4041403970338857, 0.22629790978217522, 0.8862616969685161)

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")
        if not 0.0 < self.fov < 180.0:
            raise ValueError(f"camera fov must be in (0, 180) degrees, got {self.fov}")


def _gripper_camera() -> CameraConfig:
    return CameraConfig(width=84, height=84, fov=75.0, near=0.01, far=2.0)


@dataclass
class CalvinEnvConfig:
    """Everything that defines one CALVIN-like environment.

    Attributes:
        calvin_data_dir: directory holding the real CALVIN assets (``calvin_table_<X>/``, ``blocks/``,
            ``plane/`` and the scene file ``calvin_scene_<X>.yaml``); ``None`` builds the project's procedural
            play table instead.
        table: table name inside ``calvin_data_dir`` (``calvin_table_D``).  The table's scene file is the one
            source of its layout — table and block URDFs, block placement surfaces, global scaling, the
            robot's base and home joints (:mod:`calvin_bridge.scene_file`; the loaded values are
            ``CalvinEnv.scene.layout``); block sizes come from the block URDFs.
        cache_dir: where generated URDFs are written (``None``: a temporary directory removed on ``close``).
        robot_visual: ``"collision"`` (coarse Panda visuals, ~2.4x faster rendering) or ``"mesh"``
            (``pybullet_data``'s detailed visual meshes).
        control_hz / physics_hz: control and physics rates (CALVIN: 30 Hz over 240 Hz).
        max_rel_pos / max_rel_orn: one relative action unit (m, rad) (CALVIN: 0.02 m, 0.05 rad).
        action_mode: ``"relative"`` (7-d CALVIN action) or ``"absolute"`` (xyz m, euler rad, gripper ±1).
        render_every_step: render both cameras inside ``step`` (off = faster; call ``render_cameras``).
        static_camera / gripper_camera: camera settings (200x200 and 84x84 by default).
        settle_steps: physics steps after a reset so blocks come to rest before the first state.
        robot_joint_noise: half-width (rad) of the uniform noise added to the home joints on random resets.
        block_min_distance: minimum xy distance (m) between spawned blocks.
        workspace_bounds: ``[[x,y,z] low, [x,y,z] high]`` (m) box the commanded TCP target is clipped to, as
            CALVIN's robot clips to its ``workspace_bounds``, so a policy cannot drive the hand under the table
            top or out of reach (``None`` disables).  Default: the scripted experts' TCP range on the
            procedural table (x -0.26..0.30, y -0.51..0.08, z 0.35..0.69) plus about 5 cm.
        max_episode_steps: ``step`` reports ``truncated=True`` from this many steps on (``None``: never).
    """

    calvin_data_dir: str | None = None
    table: str = "calvin_table_D"
    cache_dir: str | None = None
    robot_visual: str = "collision"
    control_hz: int = 30
    physics_hz: int = 240
    max_rel_pos: float = 0.02
    max_rel_orn: float = 0.05
    action_mode: str = "relative"
    render_every_step: bool = True
    static_camera: CameraConfig = field(default_factory=CameraConfig)
    gripper_camera: CameraConfig = field(default_factory=_gripper_camera)
    settle_steps: int = 60
    robot_joint_noise: float = 0.1
    block_min_distance: float = 0.09
    workspace_bounds: list[list[float]] | None = field(default_factory=lambda: [[-0.32, -0.56, 0.33],
                                                                                [0.36, 0.14, 0.75]])
    max_episode_steps: int | None = None

    def __post_init__(self) -> None:
        if self.robot_visual not in ("collision", "mesh"):
            raise ValueError(f"robot_visual must be 'collision' or 'mesh', got {self.robot_visual!r}")
        if self.action_mode not in ("relative", "absolute"):
            raise ValueError(f"action_mode must be 'relative' or 'absolute', got {self.action_mode!r}")
        if self.physics_hz % self.control_hz != 0:
            raise ValueError(f"physics_hz ({self.physics_hz}) must be a multiple of control_hz ({self.control_hz})")
        if self.max_episode_steps is not None and self.max_episode_steps <= 0:
            raise ValueError(f"max_episode_steps must be positive or null, got {self.max_episode_steps}")
        if self.workspace_bounds is not None:
            box = self.workspace_bounds
            if len(box) != 2 or any(len(c) != 3 for c in box) or any(lo >= hi for lo, hi in zip(*box)):
                raise ValueError(f"workspace_bounds must be [[x,y,z] low, [x,y,z] high] with low < high, got {box}")

    @property
    def substeps(self) -> int:
        """Physics steps per control step (8 for 30 Hz over 240 Hz)."""
        return self.physics_hz // self.control_hz
