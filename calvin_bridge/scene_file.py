"""A play table's layout, read from its own files: CALVIN's ``calvin_scene_<X>.yaml`` and block URDFs.

CALVIN ships four tables (A–D).  Each table's scene file names its table URDF, its three block URDFs
(which block size has which colour differs between tables) and its block placement surfaces, plus the
robot's base pose and home joints.  :func:`load_scene_layout` reads all of that from the files of the
table asked for, so a table this project has never seen works from its files alone; block sizes come
from each block URDF's collision geometry (:func:`urdf_half_extents`), never from a table of sizes.
The project's procedural table has the same description (:func:`procedural_layout`, scene D's values).

Scene file location, for ``table = calvin_table_<X>`` and ``calvin_data_dir = DIR``: ``DIR/calvin_scene_<X>.yaml``
(the layout of ``../shared/calvin_assets``) or ``DIR/../conf/scene/calvin_scene_<X>.yaml`` (a
``calvin_env`` checkout, whose assets live in ``calvin_env/data``).  File paths inside the scene file are
relative to ``DIR`` (CALVIN's ``${data_path}``).  The articulated joints' ``initial_state`` entries are
not used: resets randomise the joints.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from calvin_bridge.procedural_table import (GLOBAL_SCALING, ROBOT_BASE_POSITION, ROBOT_INITIAL_JOINTS, SURFACES,
                                            write_procedural_assets)

#: the movable objects of every CALVIN scene, in ``scene_obs`` order
BLOCK_NAMES = ("block_red", "block_blue", "block_pink")

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class SceneLayout:
    """What one play table's files define (world metres, radians).

    Attributes:
        source: ``"procedural"`` or the CALVIN table name (``calvin_table_D``).
        scene_file: the scene YAML read (``None`` for the procedural table).
        table_urdf / plane_urdf: URDF files of the table and the ground plane.
        table_position / table_orientation: the table's base position (3,) m and Euler angles (3,) rad.
        block_urdfs: ``block_red`` / ``block_blue`` / ``block_pink`` → URDF file, in ``scene_obs`` order.
        surfaces: block placement boxes ``name -> ((x, y, z) low, (x, y, z) high)`` (m).
        global_scaling: PyBullet ``globalScaling`` of the table and the blocks (CALVIN: 0.8).
        robot_base_position / robot_base_orientation: the Panda's base (3,) m and Euler angles (3,) rad.
        robot_initial_joints: the Panda's home joints (7,) rad.
    """

    source: str
    scene_file: Path | None
    table_urdf: Path
    plane_urdf: Path
    table_position: Vec3
    table_orientation: Vec3
    block_urdfs: dict[str, Path]
    surfaces: dict[str, tuple[Vec3, Vec3]]
    global_scaling: float
    robot_base_position: Vec3
    robot_base_orientation: Vec3
    robot_initial_joints: tuple[float, ...]

    def block_half_extents(self) -> dict[str, np.ndarray]:
        """Half-extents (3,) m of each block's collision shape after ``global_scaling``, from its URDF."""
        return {name: urdf_half_extents(path) * self.global_scaling for name, path in self.block_urdfs.items()}


# ------------------------------------------------------------------------------------------ URDF
def _rpy_matrix(rpy: np.ndarray) -> np.ndarray:
    """URDF ``rpy`` (rad) → rotation matrix (3, 3) (fixed-axis roll, pitch, yaw: ``Rz @ Ry @ Rx``)."""
    r, p, y = rpy
    rx = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]])
    ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
    rz = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _floats(text: str | None, n: int, what: str, default: str | None = None) -> np.ndarray:
    text = default if text is None else text
    try:
        values = np.array([float(v) for v in (text or "").split()], dtype=np.float64)
    except ValueError:
        values = np.zeros(0)
    if values.shape != (n,) or not np.all(np.isfinite(values)):
        raise ValueError(f"{what} must be {n} finite numbers, got {text!r}")
    return values


def urdf_half_extents(path: str | Path) -> np.ndarray:
    """Half-extents (3,) of a one-link object's collision geometry about its link origin, unscaled (m).

    Reads every ``<collision>`` of the URDF (``box``, ``sphere`` or ``cylinder`` geometry, with its
    ``<origin xyz rpy>``) and returns, per axis, the largest distance of the shapes' bounding box from the
    link origin.  Raises ``ValueError`` naming the file for an unreadable URDF, one without collision
    geometry, or a ``mesh`` collision (its size would need the mesh file).
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ValueError(f"cannot read URDF {path}: {exc}") from exc
    links = root.findall("link")
    if len(links) != 1:
        raise ValueError(f"block URDF {path} must have exactly one link, has {len(links)}")
    corners = []
    for k, collision in enumerate(links[0].findall("collision")):
        where = f"{path} collision {k}"
        origin = collision.find("origin")
        xyz = _floats(None if origin is None else origin.get("xyz"), 3, f"{where} origin xyz", "0 0 0")
        rpy = _floats(None if origin is None else origin.get("rpy"), 3, f"{where} origin rpy", "0 0 0")
        geometry = collision.find("geometry")
        shape = None if geometry is None or len(geometry) == 0 else geometry[0]
        if shape is None:
            raise ValueError(f"{where} has no geometry")
        if shape.tag == "box":
            half = _floats(shape.get("size"), 3, f"{where} box size") / 2
        elif shape.tag == "sphere":
            half = np.full(3, _floats(shape.get("radius"), 1, f"{where} sphere radius")[0])
        elif shape.tag == "cylinder":
            radius = _floats(shape.get("radius"), 1, f"{where} cylinder radius")[0]
            half = np.array([radius, radius, _floats(shape.get("length"), 1, f"{where} cylinder length")[0] / 2])
        else:
            raise ValueError(f"{where}: {shape.tag!r} collision geometry is not supported for blocks "
                             "(box, sphere or cylinder)")
        if np.any(half <= 0):
            raise ValueError(f"{where}: geometry size must be positive, got half-extents {half.tolist()}")
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        corners.append((signs * half) @ _rpy_matrix(rpy).T + xyz)
    if not corners:
        raise ValueError(f"block URDF {path} has no <collision> geometry to take the block's size from")
    pts = np.concatenate(corners)
    return np.maximum(-pts.min(axis=0), pts.max(axis=0))


# ------------------------------------------------------------------------------------------ layouts
def procedural_layout(asset_dir: str | Path) -> SceneLayout:
    """The project's procedural play table (scene D's layout); writes its URDFs into ``asset_dir``."""
    import pybullet_data

    paths = write_procedural_assets(asset_dir)
    return SceneLayout(
        source="procedural", scene_file=None, table_urdf=paths["table"],
        plane_urdf=Path(pybullet_data.getDataPath()) / "plane.urdf", table_position=(0.0, 0.0, 0.0),
        table_orientation=(0.0, 0.0, 0.0), block_urdfs={n: paths[n] for n in BLOCK_NAMES},
        surfaces={k: (tuple(lo), tuple(hi)) for k, (lo, hi) in SURFACES.items()}, global_scaling=GLOBAL_SCALING,
        robot_base_position=ROBOT_BASE_POSITION, robot_base_orientation=(0.0, 0.0, 0.0),
        robot_initial_joints=ROBOT_INITIAL_JOINTS)


def scene_file_candidates(data_dir: str | Path, table: str) -> list[Path]:
    """Where the scene file of ``table`` (``calvin_table_<X>``) may be, in the order searched."""
    match = re.fullmatch(r"calvin_table_(\w+)", table)
    if match is None:
        raise ValueError(f"table {table!r} is not a CALVIN table name (calvin_table_<X>, e.g. calvin_table_D)")
    name = f"calvin_scene_{match.group(1)}.yaml"
    root = Path(data_dir)
    return [root / name, root.parent / "conf" / "scene" / name]


def _vector(value: Any, n: int, what: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{what} must be a list of {n} finite numbers, got {value!r}")
    return out


def _orientation(value: Any, what: str) -> Vec3:
    """Euler angles (3,) rad from a scene-file orientation: Euler (3) or quaternion xyzw (4)."""
    if isinstance(value, (list, tuple)) and len(value) == 4:
        import pybullet as p

        return tuple(p.getEulerFromQuaternion(_vector(value, 4, what)))
    return _vector(value, 3, what)


def _mapping(data: Any, key: str, where: str) -> dict:
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: missing mapping {key!r}")
    return value


def load_scene_layout(data_dir: str | Path, table: str) -> SceneLayout:
    """Read ``table``'s layout from its CALVIN scene file under ``data_dir`` (see the module docstring).

    Raises ``ValueError`` naming the file and the entry for a missing scene file, missing or malformed
    entries, a block set other than red/blue/pink, or asset files that do not exist.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"calvin_data_dir {root} is not a directory")
    candidates = scene_file_candidates(root, table)
    scene_file = next((c for c in candidates if c.is_file()), None)
    if scene_file is None:
        raise ValueError(f"no scene file for {table}: looked for {[str(c) for c in candidates]}")
    try:
        data = yaml.safe_load(scene_file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read scene file {scene_file}: {exc}") from exc
    where = str(scene_file)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping at the top level")

    surfaces: dict[str, tuple[Vec3, Vec3]] = {}
    for name, box in _mapping(data, "surfaces", where).items():
        if not isinstance(box, (list, tuple)) or len(box) != 2:
            raise ValueError(f"{where}: surface {name!r} must be [[x,y,z] low, [x,y,z] high], got {box!r}")
        lo, hi = (_vector(c, 3, f"{where}: surface {name!r} corner") for c in box)
        if any(a > b for a, b in zip(lo, hi)):
            raise ValueError(f"{where}: surface {name!r} has low {list(lo)} above high {list(hi)}")
        surfaces[str(name)] = (lo, hi)
    if not surfaces:
        raise ValueError(f"{where}: no block placement surfaces")

    objects = _mapping(data, "objects", where)
    table_entry = _mapping(_mapping(objects, "fixed_objects", f"{where}: objects"), "table",
                           f"{where}: objects.fixed_objects")
    movable = _mapping(objects, "movable_objects", f"{where}: objects")
    if set(movable) != set(BLOCK_NAMES):
        raise ValueError(f"{where}: movable_objects must be exactly {list(BLOCK_NAMES)} (CALVIN's scene_obs "
                         f"layout), got {sorted(map(str, movable))}")

    def asset(entry: Any, what: str) -> Path:
        file = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(file, str) or not file:
            raise ValueError(f"{where}: {what} has no 'file'")
        path = root / file
        if not path.is_file():
            raise ValueError(f"{where}: {what} file {path} does not exist")
        return path

    plane = root / "plane" / "plane.urdf"
    if not plane.is_file():
        raise ValueError(f"calvin_data_dir {root} lacks the ground plane {plane}")
    scaling = data.get("global_scaling")
    if not (isinstance(scaling, (int, float)) and math.isfinite(scaling) and scaling > 0):
        raise ValueError(f"{where}: global_scaling must be a positive number, got {scaling!r}")
    return SceneLayout(
        source=table, scene_file=scene_file, table_urdf=asset(table_entry, "the table"), plane_urdf=plane,
        table_position=_vector(table_entry.get("initial_pos", [0, 0, 0]), 3, f"{where}: table initial_pos"),
        table_orientation=_orientation(table_entry.get("initial_orn", [0, 0, 0]), f"{where}: table initial_orn"),
        block_urdfs={n: asset(movable[n], n) for n in BLOCK_NAMES}, surfaces=surfaces,
        global_scaling=float(scaling),
        robot_base_position=_vector(data.get("robot_base_position"), 3, f"{where}: robot_base_position"),
        robot_base_orientation=_orientation(data.get("robot_base_orientation", [0, 0, 0]),
                                            f"{where}: robot_base_orientation"),
        robot_initial_joints=_vector(data.get("robot_initial_joint_positions"), 7,
                                     f"{where}: robot_initial_joint_positions"))
