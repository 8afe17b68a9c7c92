"""CalvinEnv on the procedural table and on the real CALVIN scene D: joints, lights, observation
layout, resets, actions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pybullet as p
import pytest

from calvin_bridge.config import CalvinEnvConfig
from calvin_bridge.env import CalvinEnv

CALVIN_ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "calvin_assets"


def scene_config(kind: str, **kw) -> CalvinEnvConfig:
    if kind == "calvin_D":
        if not CALVIN_ASSETS.is_dir():
            pytest.skip(f"real CALVIN assets not present at {CALVIN_ASSETS}")
        kw["calvin_data_dir"] = str(CALVIN_ASSETS)
    return CalvinEnvConfig(render_every_step=False, **kw)


@pytest.fixture(scope="module", params=["procedural", "calvin_D"])
def env(request):
    e = CalvinEnv(scene_config(request.param))
    yield e
    e.close()


def test_joint_ranges_and_axes(env):
    lim = env.scene.joint_limits
    assert lim["door"] == pytest.approx((0.0, 0.28))
    assert lim["drawer"] == pytest.approx((0.0, 0.22))
    assert lim["button"] == pytest.approx((0.0, 0.02))
    assert lim["switch"] == pytest.approx((0.0, 0.088))
    env.reset(seed=0)
    axes = {k: env.scene.part_frame(k).axis for k in ("door", "drawer", "button", "switch")}
    assert axes["door"] == pytest.approx([-1, 0, 0], abs=1e-6)     # door "left" = -x
    assert axes["drawer"] == pytest.approx([0, -1, 0], abs=1e-6)   # drawer opens towards the robot
    assert axes["button"] == pytest.approx([0, 0, -1], abs=1e-6)   # pressed downwards
    assert axes["switch"] == pytest.approx([0, 0.5, np.sqrt(3) / 2], abs=1e-4)
    # a state at the top of every range is kept (joint friction holds it) and reported in scene_obs
    env.reset(seed=0, options={"scene": {"door": 0.28, "drawer": 0.22, "switch": 0.088}})
    for _ in range(5):
        obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 0, 1.0]))
    assert obs["scene_obs"][[0, 1, 3]] == pytest.approx([0.28, 0.22, 0.088], abs=2e-3)
    with pytest.raises(ValueError, match="outside its joint range"):
        env.scene.set_state({"drawer": 0.3})


def test_lightbulb_follows_switch_midpoint(env):
    obs, _ = env.reset(seed=1, options={"scene": {"switch": 0.040}})
    assert obs["scene_obs"][4] == 0.0
    obs, _ = env.reset(seed=1, options={"scene": {"switch": 0.050}})
    assert obs["scene_obs"][4] == 1.0
    obs, _ = env.reset(seed=1, options={"scene": {"lightbulb": 1}})
    assert obs["scene_obs"][3] == pytest.approx(0.088, abs=2e-3) and obs["scene_obs"][4] == 1.0


def _press_button(env, depth: float) -> None:
    j = env.scene.joint_index["button"]
    p.resetJointState(env.scene.table, j, depth, physicsClientId=env.client)
    env._physics_step()
    for _ in range(120):          # the spring returns it
        env._physics_step()


def test_led_toggles_once_per_press_past_midpoint(env):
    obs, _ = env.reset(seed=2, options={"scene": {"led": 0}})
    assert obs["scene_obs"][5] == 0.0
    _press_button(env, 0.008)      # not past the midpoint (0.01)
    assert env.scene.scene_obs()[5] == 0.0
    _press_button(env, 0.015)
    assert env.scene.scene_obs()[5] == 1.0
    assert env.scene.joint_value("button") < 0.01   # released by the spring
    _press_button(env, 0.019)
    assert env.scene.scene_obs()[5] == 0.0


def test_observation_layout(env):
    obs, info = env.reset(seed=3)
    ro, so = obs["robot_obs"], obs["scene_obs"]
    assert ro.shape == (15,) and so.shape == (24,)
    pos, orn = env.tcp_pose()
    assert ro[:3] == pytest.approx(pos)
    assert ro[3:6] == pytest.approx(p.getEulerFromQuaternion(orn))
    q = env.joint_positions()
    assert ro[6] == pytest.approx(q[7] + q[8])                     # gripper opening width
    assert ro[6] == pytest.approx(0.08, abs=2e-3)                  # opened on reset
    assert ro[7:14] == pytest.approx(q[:7])
    assert ro[14] == 1.0
    assert len(env.joint_names) == 9 and env.joint_names[0] == "panda_joint1"
    for i, name in enumerate(("block_red", "block_blue", "block_pink")):
        bpos, born = p.getBasePositionAndOrientation(env.scene.blocks[name], physicsClientId=env.client)
        assert so[6 + 6 * i: 9 + 6 * i] == pytest.approx(bpos)
        assert so[9 + 6 * i: 12 + 6 * i] == pytest.approx(p.getEulerFromQuaternion(born))
        assert 0.40 < bpos[2] < 0.50                               # resting on a CALVIN surface
    assert so[0] == pytest.approx(env.scene.joint_value("door"))
    assert so[1] == pytest.approx(env.scene.joint_value("drawer"))
    obs, _, _, _, info = env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
    for _ in range(10):
        obs, _, _, _, info = env.step(np.array([0, 0, 0, 0, 0, 0, -1.0]))
    assert obs["robot_obs"][14] == -1.0 and obs["robot_obs"][6] < 0.01   # closed
    assert info["behaviour"] == "no_behaviour"
    cams = env.render_cameras()
    assert cams["rgb_static"].shape == (200, 200, 3) and cams["rgb_static"].dtype == np.uint8
    assert cams["rgb_gripper"].shape == (84, 84, 3)
    assert cams["rgb_static"].std() > 10                           # a real picture, not a blank frame


def test_deterministic_reset(env):
    a, _ = env.reset(seed=7)
    b, _ = env.reset(seed=7)
    c, _ = env.reset(seed=8)
    assert np.array_equal(a["scene_obs"], b["scene_obs"]) and np.array_equal(a["robot_obs"], b["robot_obs"])
    assert not np.allclose(a["scene_obs"], c["scene_obs"])
    joints = [-1.0, 1.0, 2.0, -2.3, -0.9, 1.6, 0.5]
    d, _ = env.reset(seed=7, options={"robot_joints": joints, "scene": {"door": 0.1, "drawer": 0.05, "led": 1}})
    assert d["robot_obs"][7:14] == pytest.approx(joints, abs=2e-3)
    assert d["scene_obs"][[0, 1, 5]] == pytest.approx([0.1, 0.05, 1.0], abs=2e-3)
    # a full scene_obs vector (as a ROS message would carry it) restores the scene
    e, _ = env.reset(seed=99, options={"scene": a["scene_obs"].tolist()})
    assert e["scene_obs"] == pytest.approx(a["scene_obs"], abs=3e-3)
    with pytest.raises(ValueError, match=r"shape \(24,\)"):
        env.reset(options={"scene": [0.0] * 23})


def test_relative_action_scale_and_bad_input(env):
    env.reset(seed=4, options={"randomize_robot": False})
    start = env.tcp_pose()[0]
    for _ in range(5):
        env.step(np.array([0.0, 0.0, 1.0, 0, 0, 0, 1.0]))
    moved = env.tcp_pose()[0] - start
    assert moved[2] == pytest.approx(5 * 0.02, abs=0.015)          # one unit = 0.02 m
    assert abs(moved[0]) < 0.01 and abs(moved[1]) < 0.01
    before = env.tcp_pose()[0]
    env.step(np.array([0.0, 0.0, 5.0, 0, 0, 0, 1.0]))                # clipped to 1
    assert env.tcp_pose()[0][2] - before[2] < 0.025
    with pytest.raises(ValueError, match="7 finite"):
        env.step(np.zeros(6))
    with pytest.raises(ValueError, match="unknown reset option"):
        env.reset(options={"robots": []})


def test_absolute_mode_and_small_cameras():
    cfg = scene_config("procedural", action_mode="absolute", robot_visual="mesh")
    cfg = dataclasses.replace(cfg, static_camera=dataclasses.replace(cfg.static_camera, width=64, height=64),
                              render_every_step=True)
    with CalvinEnv(cfg) as env:
        obs, _ = env.reset(seed=0, options={"randomize_robot": False})
        assert obs["rgb_static"].shape == (64, 64, 3)
        target = obs["robot_obs"][:3] + np.array([0.05, 0.03, -0.04])
        for _ in range(20):
            obs, *_ = env.step(np.concatenate([target, [np.pi, 0.0, np.pi / 2], [1.0]]))
        assert obs["robot_obs"][:3] == pytest.approx(target, abs=0.01)
    with pytest.raises(ValueError, match="action_mode"):
        CalvinEnvConfig(action_mode="joint")


def test_truncation_and_yaml_config():
    from dynaguide.config import load_config

    cfg = load_config(CalvinEnvConfig, Path(__file__).resolve().parents[1] / "config" / "calvin_env.yaml",
                      section="env")
    assert cfg == CalvinEnvConfig()
    with CalvinEnv(dataclasses.replace(cfg, render_every_step=False, max_episode_steps=2)) as env:
        env.reset(seed=0)
        flags = [env.step(np.zeros(7))[3] for _ in range(3)]
    assert flags == [False, True, True]


def test_tcp_stays_inside_the_workspace_when_driven_down_and_out():
    """A policy that keeps pushing down and away cannot take the hand under the table top (CALVIN clips)."""
    import dataclasses

    import numpy as np

    from calvin_bridge.config import CalvinEnvConfig
    from calvin_bridge.env import CalvinEnv

    cfg = dataclasses.replace(CalvinEnvConfig(), render_every_step=False)
    lo, hi = (np.asarray(c) for c in cfg.workspace_bounds)
    with CalvinEnv(cfg) as env:
        env.reset(seed=3)
        for action in ([0, 0, -1, 0, 0, 0, 1], [-1, -1, -1, 0, 0, 0, 1]):
            for _ in range(60):
                obs, *_ = env.step(np.asarray(action, dtype=np.float64))
            tcp = obs["robot_obs"][:3]
            assert np.all(tcp >= lo - 0.02), tcp
            assert np.all(tcp <= hi + 0.02), tcp


def test_robot_description_names_the_published_joints_and_existing_meshes(env):
    """``/robot_description``: the URDF under a ``world`` link at the arm's base, with every joint that
    ``joint_states`` names and mesh files that exist (absolute file:// URIs for rviz / Foxglove)."""
    import re
    import xml.etree.ElementTree as ET

    from calvin_bridge.robot import panda_description

    layout = env.scene.layout
    urdf = ET.fromstring(panda_description(layout.robot_base_position, layout.robot_base_orientation))
    joints = {j.get("name"): j for j in urdf.iter("joint")}
    assert set(env.joint_names) <= set(joints)
    base = joints["world_to_panda"]
    assert base.find("parent").get("link") == "world" and base.find("child").get("link") == "panda_link0"
    xyz = [float(v) for v in base.find("origin").get("xyz").split()]
    assert np.allclose(xyz, layout.robot_base_position, atol=1e-5)
    meshes = [m.get("filename") for m in urdf.iter("mesh")]
    assert meshes and all(re.match(r"file:///", f) and Path(f[len("file://"):]).is_file() for f in meshes)
