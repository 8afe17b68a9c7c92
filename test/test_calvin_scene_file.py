"""A table's layout comes from its own files: the scene YAML (surfaces, block URDFs, robot base) and the
block URDFs (block sizes).  A table the project has never seen (here a made-up ``calvin_table_A`` with
moved surfaces and another block set, next to the real scene-D assets) loads and is driven from its
files alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pybullet as p
import pytest
import yaml

from calvin_bridge.config import CalvinEnvConfig
from calvin_bridge.env import CalvinEnv
from calvin_bridge.experts import behaviour_scene, run_episode
from calvin_bridge.procedural_table import BLOCKS
from calvin_bridge.scene_file import load_scene_layout, urdf_half_extents

CALVIN_ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "calvin_assets"

BOX_URDF = """<?xml version="1.0"?>
<robot name="{name}"><link name="base_link">
  <inertial><origin xyz="0 0 0"/><mass value="1"/><inertia ixx="1e-3" ixy="0" ixz="0" iyy="1e-3" iyz="0" izz="1e-3"/>
  </inertial>
  <visual><geometry><box size="{size}"/></geometry><material name="c"><color rgba="{rgba}"/></material></visual>
  <collision>{origin}<geometry>{geometry}</geometry></collision>
</link></robot>
"""


def box_urdf(path: Path, size: str, origin: str = "", geometry: str | None = None, rgba: str = "1 0 0 1") -> Path:
    path.write_text(BOX_URDF.format(name=path.stem, size=size, origin=origin, rgba=rgba,
                                    geometry=geometry or f'<box size="{size}"/>'))
    return path


def needs_assets() -> Path:
    if not (CALVIN_ASSETS / "calvin_scene_D.yaml").is_file():
        pytest.skip(f"real CALVIN assets not present at {CALVIN_ASSETS}")
    return CALVIN_ASSETS


# ------------------------------------------------------------------------------------------ URDF sizes
def test_block_size_from_collision_geometry(tmp_path):
    assert urdf_half_extents(box_urdf(tmp_path / "a.urdf", "0.08 0.04 0.02")) == pytest.approx([0.04, 0.02, 0.01])
    # an offset and a 90 degree yaw of the collision box are taken into account
    shifted = box_urdf(tmp_path / "b.urdf", "0.08 0.04 0.02", origin='<origin xyz="0.01 0 0" rpy="0 0 1.5707963"/>')
    assert urdf_half_extents(shifted) == pytest.approx([0.03, 0.04, 0.01], abs=1e-6)
    cyl = box_urdf(tmp_path / "c.urdf", "0.1 0.1 0.1", geometry='<cylinder radius="0.03" length="0.05"/>')
    assert urdf_half_extents(cyl) == pytest.approx([0.03, 0.03, 0.025])
    with pytest.raises(ValueError, match="'mesh' collision geometry is not supported"):
        urdf_half_extents(box_urdf(tmp_path / "d.urdf", "1 1 1", geometry='<mesh filename="x.stl"/>'))
    with pytest.raises(ValueError, match="box size must be 3 finite numbers"):
        urdf_half_extents(box_urdf(tmp_path / "e.urdf", "0.1 0.1"))
    with pytest.raises(ValueError, match="cannot read URDF"):
        urdf_half_extents(tmp_path / "missing.urdf")


def test_procedural_block_sizes_come_from_its_urdfs():
    with CalvinEnv(CalvinEnvConfig(render_every_step=False)) as env:
        for name, (size, _) in BLOCKS.items():
            assert env.scene.block_half_extents[name] == pytest.approx(np.asarray(size) * 0.8 / 2)


def test_scene_d_layout_is_read_from_its_scene_file():
    root = needs_assets()
    layout = load_scene_layout(root, "calvin_table_D")
    scene = yaml.safe_load((root / "calvin_scene_D.yaml").read_text())
    assert layout.scene_file == root / "calvin_scene_D.yaml"
    assert layout.table_urdf == root / "calvin_table_D" / "urdf" / "calvin_table_D.urdf"
    assert {k: v.name for k, v in layout.block_urdfs.items()} == {"block_red": "block_red_middle.urdf",
                                                                  "block_blue": "block_blue_small.urdf",
                                                                  "block_pink": "block_pink_big.urdf"}
    assert {k: [list(c) for c in v] for k, v in layout.surfaces.items()} == scene["surfaces"]
    assert layout.global_scaling == 0.8
    assert layout.robot_base_position == pytest.approx([-0.34, -0.46, 0.24])
    assert layout.robot_initial_joints == pytest.approx(scene["robot_initial_joint_positions"])
    halves = layout.block_half_extents()
    assert halves["block_red"] == pytest.approx([0.028, 0.02, 0.02])
    assert halves["block_pink"] == pytest.approx([0.04, 0.02, 0.02])


# ------------------------------------------------------------------------------------------ an unseen table
#: surfaces of the made-up table: the table area moved 5 cm left and narrowed, one shelf only
NEW_SURFACES = {"table": [[0.05, -0.13, 0.46], [0.25, -0.05, 0.46]],
                "slider_right": [[-0.04, 0.06, 0.46], [0.10, 0.11, 0.46]]}


@pytest.fixture()
def table_a(tmp_path) -> Path:
    """A data dir for ``calvin_table_A``: scene D's table mesh (linked, not copied), new block URDFs
    (red 9 cm long, blue 6 cm wide) and the real pink block named by absolute path, moved surfaces."""
    root = needs_assets()
    (tmp_path / "calvin_table_A").symlink_to(root / "calvin_table_D", target_is_directory=True)
    (tmp_path / "plane").symlink_to(root / "plane", target_is_directory=True)
    (tmp_path / "blocks").mkdir()
    box_urdf(tmp_path / "blocks" / "block_red_long.urdf", "0.09 0.05 0.05")
    box_urdf(tmp_path / "blocks" / "block_blue_wide.urdf", "0.06 0.06 0.05", rgba="0 0 1 1")
    scene = yaml.safe_load((root / "calvin_scene_D.yaml").read_text())
    scene["surfaces"] = NEW_SURFACES
    scene["objects"]["fixed_objects"]["table"]["file"] = "calvin_table_A/urdf/calvin_table_D.urdf"
    scene["objects"]["movable_objects"]["block_red"]["file"] = "blocks/block_red_long.urdf"
    scene["objects"]["movable_objects"]["block_blue"]["file"] = "blocks/block_blue_wide.urdf"
    scene["objects"]["movable_objects"]["block_pink"]["file"] = str(root / "blocks" / "block_pink_big.urdf")
    (tmp_path / "calvin_scene_A.yaml").write_text(yaml.safe_dump(scene))
    return tmp_path


def _on_surface(pos: np.ndarray, surfaces: dict, tol: float = 1e-6) -> bool:
    return any(np.all(pos[:2] >= np.asarray(lo[:2]) - tol) and np.all(pos[:2] <= np.asarray(hi[:2]) + tol)
               for lo, hi in surfaces.values())


def test_unseen_table_follows_its_scene_file(table_a):
    cfg = CalvinEnvConfig(calvin_data_dir=str(table_a), table="calvin_table_A", render_every_step=False)
    with CalvinEnv(cfg) as env:
        assert env.scene.source == "calvin_table_A"
        assert env.scene.layout.scene_file == table_a / "calvin_scene_A.yaml"
        halves = env.scene.block_half_extents
        assert halves["block_red"] == pytest.approx([0.036, 0.02, 0.02])     # 0.09 m * 0.8 / 2
        assert halves["block_blue"] == pytest.approx([0.024, 0.024, 0.02])
        assert halves["block_pink"] == pytest.approx([0.04, 0.02, 0.02])
        for name, uid in env.scene.blocks.items():   # the files named were loaded: PyBullet agrees on the sizes
            p.resetBasePositionAndOrientation(uid, [0, 0, 2], [0, 0, 0, 1], physicsClientId=env.client)
            lo, hi = (np.asarray(c) for c in p.getAABB(uid, physicsClientId=env.client))
            assert (hi - lo) / 2 == pytest.approx(halves[name], abs=2e-3), name
        for seed in range(15):                        # random resets put every block on the new surfaces
            obs, _ = env.reset(seed=seed)
            for i in range(3):
                spawn = obs["scene_obs"][6 + 6 * i: 9 + 6 * i]
                assert _on_surface(spawn, NEW_SURFACES, tol=0.01), (seed, i, spawn)   # (settled for 60 steps)
        rng = np.random.default_rng(0)
        for _ in range(5):                            # block behaviours use the new 'table' surface
            red = np.asarray(behaviour_scene(env, "touch_red", rng)["block_red"][:3])
            assert _on_surface(red, {"table": NEW_SURFACES["table"]}), red
        # the experts drive the unseen table: an articulation and a push sized by the new red block
        for behaviour in ("drawer_open", "displace_red"):
            result = run_episode(env, behaviour, seed=5)
            assert result["success"], (behaviour, result)


def test_scene_file_errors_name_the_problem(table_a):
    scene_path = table_a / "calvin_scene_A.yaml"
    scene = yaml.safe_load(scene_path.read_text())
    with pytest.raises(ValueError, match="no scene file for calvin_table_B"):
        load_scene_layout(table_a, "calvin_table_B")
    with pytest.raises(ValueError, match="not a CALVIN table name"):
        load_scene_layout(table_a, "kitchen")

    def broken(edit) -> str:
        data = yaml.safe_load(yaml.safe_dump(scene))
        edit(data)
        scene_path.write_text(yaml.safe_dump(data))
        with pytest.raises(ValueError) as info:
            load_scene_layout(table_a, "calvin_table_A")
        return str(info.value)

    assert "movable_objects must be exactly" in broken(lambda d: d["objects"]["movable_objects"].pop("block_pink"))
    assert "block_red file" in broken(
        lambda d: d["objects"]["movable_objects"]["block_red"].update(file="blocks/nope.urdf"))
    assert "surface 'table'" in broken(lambda d: d["surfaces"].update(table=[[0, 0, 0.46]]))
    assert "robot_initial_joint_positions" in broken(lambda d: d.update(robot_initial_joint_positions=[0.0] * 6))
    # a scene without a 'table' surface loads, but block behaviours say why they cannot be set up
    data = yaml.safe_load(yaml.safe_dump(scene))
    data["surfaces"]["counter"] = data["surfaces"].pop("table")
    scene_path.write_text(yaml.safe_dump(data))
    cfg = CalvinEnvConfig(calvin_data_dir=str(table_a), table="calvin_table_A", render_every_step=False)
    with CalvinEnv(dataclasses.replace(cfg, settle_steps=1)) as env:
        with pytest.raises(ValueError, match="no 'table' surface"):
            behaviour_scene(env, "touch_blue", np.random.default_rng(0))
