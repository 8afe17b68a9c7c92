"""Backends and kinematics against the installed ``arx5_interface`` SDK (real config objects, real solver,
real PyBullet); only the CAN-connected controller is replaced by the stand-in."""

from __future__ import annotations

import inspect

import arx5_interface as arx5
import numpy as np
import pybullet as p
import pytest

from arx5_driver.backends import SdkBackend, SimBackend, default_controller_factory, load_sdk_configs, primitive_urdf
from arx5_driver.config import DriverConfig
from arx5_driver.kinematics import Kinematics
from arx5_driver.transforms import (matrix_to_quaternion, matrix_to_rotvec, matrix_to_rpy, quaternion_to_matrix,
                                    rotvec_to_matrix, rpy_to_matrix)

from _arx5_standin import StandInJointController


def test_sdk_configs_are_the_real_ones():
    rc, cc = load_sdk_configs("X5")
    assert isinstance(rc, arx5.RobotConfig) and isinstance(cc, arx5.ControllerConfig)
    np.testing.assert_allclose(rc.joint_pos_min, [-3.14, -0.05, -0.1, -1.6, -1.57, -2])
    np.testing.assert_allclose(rc.joint_pos_max, [2.618, 3.5, 3.2, 1.55, 1.57, 2])
    np.testing.assert_allclose(rc.joint_vel_max, [5, 5, 5.5, 5.5, 5, 5])
    assert rc.gripper_width == pytest.approx(0.088) and rc.joint_dof == 6
    assert cc.controller_dt == pytest.approx(0.002)
    np.testing.assert_allclose(cc.default_kp, [80, 70, 70, 30, 30, 20])


@pytest.mark.parametrize("model, match", [("", "required"), (None, "required"), ("X7_left", "unsupported")])
def test_model_is_required_and_checked(model, match):
    with pytest.raises(ValueError, match=match):
        load_sdk_configs(model)
    with pytest.raises(ValueError):
        DriverConfig(model=model or "")


def test_standin_has_the_real_controller_methods():
    real = {n for n, _ in inspect.getmembers(arx5.Arx5JointController) if not n.startswith("_")}
    standin = {n for n, _ in inspect.getmembers(StandInJointController) if not n.startswith("_")}
    assert real and real <= standin, real - standin


def test_real_controller_without_can_fails_clearly():
    with pytest.raises(RuntimeError, match="can9"):
        SdkBackend("X5", "can9")
    assert default_controller_factory.__doc__ and "Arx5JointController" in default_controller_factory.__doc__


def test_sdk_backend_drives_controller_with_sdk_objects():
    made = {}

    def factory(rc, cc, iface):
        assert isinstance(rc, arx5.RobotConfig) and isinstance(cc, arx5.ControllerConfig)
        assert rc.robot_model == "L5" and iface == "can1"
        made["c"] = StandInJointController(rc, cc, iface, initial_joint_pos=np.full(6, 0.1))
        return made["c"]

    backend = SdkBackend("L5", "can1", controller_factory=factory)
    hw = made["c"]
    assert backend.is_damped and hw.damped and hw.calls == [("set_to_damping", None)]
    assert backend.control_dt == pytest.approx(0.002)
    with pytest.raises(RuntimeError, match="damped"):
        backend.command_joints(np.zeros(6), 0.0)
    backend.hold()
    # the command is set to the measured state *before* the stiffness is raised
    assert [c[0] for c in hw.calls[1:]] == ["set_joint_cmd", "set_gain"]
    np.testing.assert_allclose(hw.calls[1][1][0], 0.1)
    np.testing.assert_allclose(hw.calls[2][1], [80, 70, 70, 30, 30, 20])
    backend.command_joints(np.full(6, 0.12), 0.03)
    state = backend.read_state()
    np.testing.assert_allclose(state.joint_pos, 0.12)
    assert state.gripper_width == pytest.approx(0.03) and state.stamp > 0
    with pytest.raises(ValueError, match="shape"):
        backend.command_joints(np.zeros(5), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        backend.command_joints(np.full(6, np.nan), 0.0)
    backend.close()
    assert backend.is_damped and hw.calls[-1][0] == "set_to_damping"


def test_primitive_urdf_has_no_meshes_and_sdk_limits(tmp_path):
    rc, _ = load_sdk_configs("X5")
    out = primitive_urdf(rc.urdf_path, np.asarray(rc.joint_pos_min), np.asarray(rc.joint_pos_max), tmp_path)
    text = out.read_text()
    assert "<mesh" not in text and "<sphere" in text
    client = p.connect(p.DIRECT)
    try:
        body = p.loadURDF(str(out), useFixedBase=True, physicsClientId=client)
        limits = [p.getJointInfo(body, i, physicsClientId=client)[8:10] for i in range(6)]
    finally:
        p.disconnect(client)
    np.testing.assert_allclose(np.array(limits), np.stack([rc.joint_pos_min, rc.joint_pos_max], 1), atol=1e-6)


def test_sim_tracks_smooth_trajectory_and_damps():
    q0 = np.array([0.0, 0.8, 0.8, 0.0, 0.0, 0.0])
    sim = SimBackend("X5", initial_joint_pos=q0)
    try:
        assert sim.is_damped and sim.control_dt == pytest.approx(0.002)
        sim.hold()
        amp = np.array([0.3, 0.2, -0.2, 0.3, 0.3, 0.4])
        errors = []
        for k in range(1000):  # 2 s of a 0.5 Hz sine at 500 Hz
            target = q0 + amp * np.sin(np.pi * k * sim.control_dt)
            sim.command_joints(target, 0.05)
            sim.tick()
            errors.append(np.max(np.abs(sim.read_state().joint_pos - target)))
        assert max(errors[100:]) < 0.01, max(errors[100:])
        state = sim.read_state()
        assert state.stamp == pytest.approx(2.0) and state.gripper_width == pytest.approx(0.05)
        # commands beyond the SDK limits are clipped like the SDK does
        sim.command_joints(np.array([0.0, -1.0, 0.8, 0.0, 0.0, 0.0]), 0.2)
        for _ in range(500):
            sim.tick()
        assert sim.read_state().joint_pos[1] >= -0.05 - 1e-3 and sim.read_state().gripper_width <= 0.088
        sim.damp()
        for _ in range(250):
            sim.tick()
        assert np.max(np.abs(sim.read_state().joint_vel)) < 0.05  # damping brings the arm to rest
    finally:
        sim.close()


def test_fk_matches_pybullet_and_ik_roundtrips(tmp_path):
    rc, _ = load_sdk_configs("X5")
    kin = Kinematics(rc)
    out = primitive_urdf(rc.urdf_path, np.asarray(rc.joint_pos_min), np.asarray(rc.joint_pos_max), tmp_path)
    client = p.connect(p.DIRECT)
    rng = np.random.default_rng(0)
    try:
        body = p.loadURDF(str(out), useFixedBase=True, physicsClientId=client)
        for _ in range(20):
            q = rng.uniform(rc.joint_pos_min, rc.joint_pos_max)
            for i in range(6):
                p.resetJointState(body, i, q[i], physicsClientId=client)
            link = p.getLinkState(body, 6, computeForwardKinematics=True, physicsClientId=client)
            pos, rot = kin.fk(q)
            np.testing.assert_allclose(pos, link[4], atol=1e-6)
            np.testing.assert_allclose(rot, quaternion_to_matrix(np.array(link[5])), atol=1e-5)
    finally:
        p.disconnect(client)
    q = np.array([0.2, 0.9, 0.7, 0.1, -0.2, 0.3])
    pos, rot = kin.fk(q)
    q_ik = kin.ik(pos, rot, q + 0.05)
    assert q_ik is not None
    pos2, rot2 = kin.fk(q_ik)
    assert np.linalg.norm(pos2 - pos) < 2e-3 and np.abs(rot2 - rot).max() < 2e-2
    assert kin.ik(pos + np.array([2.0, 0, 0]), rot, q) is None


def test_rotation_helpers_roundtrip():
    rng = np.random.default_rng(1)
    for _ in range(200):
        w = rng.normal(size=3)
        w *= rng.uniform(0, 3.1) / np.linalg.norm(w)
        r = rotvec_to_matrix(w)
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        np.testing.assert_allclose(matrix_to_rotvec(r), w, atol=1e-9)
        np.testing.assert_allclose(rpy_to_matrix(matrix_to_rpy(r)), r, atol=1e-9)
        np.testing.assert_allclose(quaternion_to_matrix(matrix_to_quaternion(r)), r, atol=1e-9)
    # yaw of 90 degrees turns x into y
    np.testing.assert_allclose(rpy_to_matrix([0, 0, np.pi / 2]) @ [1, 0, 0], [0, 1, 0], atol=1e-12)
