"""Chunk executor: timing convention, dropping passed actions, rejections, ee_delta conventions."""

from __future__ import annotations

import numpy as np
import pytest

from arx5_driver.backends import load_sdk_configs
from arx5_driver.chunk_executor import ChunkExecutor, ChunkRejected, ExecutorChunk, JointStateBuffer
from arx5_driver.config import ExecutorConfig
from arx5_driver.kinematics import Kinematics
from arx5_driver.transforms import rotvec_to_matrix

Q0 = np.array([0.1, 0.9, 0.8, -0.1, 0.2, 0.1])


@pytest.fixture(scope="module")
def setup():
    rc, _ = load_sdk_configs("X5")
    return rc, Kinematics(rc)


def make_executor(setup, **kw):
    rc, kin = setup
    return ChunkExecutor(rc, kin, ExecutorConfig(**kw))


def joint_rows(n):
    rows = Q0 + 0.01 * np.arange(1, n + 1)[:, None] * np.ones(6)
    return np.hstack([rows, np.linspace(0.01, 0.05, n)[:, None]])


def test_schedule_follows_message_convention_and_drops_passed_actions(setup):
    ex = make_executor(setup)
    acts = joint_rows(8)
    # start_index 2: action i is due at stamp + (i - 2 + 1) * dt
    chunk = ExecutorChunk(10.0, "joint_position", acts, 2, 0.1)
    wp = ex.plan(chunk, now=10.0, reference=None)
    np.testing.assert_allclose(wp.times, 10.0 + np.arange(1, 7) * 0.1)
    np.testing.assert_allclose(wp.joint_pos, acts[2:, :6])
    # 0.25 s later, actions 2 and 3 (due 10.1, 10.2) have passed and are dropped
    wp = ex.plan(chunk, now=10.25, reference=None)
    np.testing.assert_allclose(wp.times, 10.0 + np.arange(3, 7) * 0.1)
    np.testing.assert_allclose(wp.joint_pos, acts[4:, :6])
    np.testing.assert_allclose(wp.gripper, acts[4:, 6])


def test_interpolation_starts_at_current_command_and_holds_last(setup):
    ex = make_executor(setup)
    acts = joint_rows(4)
    chunk = ExecutorChunk(0.0, "joint_position", acts, 0, 0.1)
    current = Q0 - 0.02
    ex.accept(chunk.stamp, ex.plan(chunk, 0.05, None), 0.05, current, 0.0)
    q, g = ex.sample(0.05)
    np.testing.assert_allclose(q, current)  # no jump at the switch
    q, g = ex.sample(0.075)  # halfway between (0.05, current) and (0.1, action 0)
    np.testing.assert_allclose(q, 0.5 * (current + acts[0, :6]))
    q, g = ex.sample(0.25)  # halfway between actions 1 and 2
    np.testing.assert_allclose(q, 0.5 * (acts[1, :6] + acts[2, :6]))
    np.testing.assert_allclose(g, 0.5 * (acts[1, 6] + acts[2, 6]))
    q, g = ex.sample(5.0)
    np.testing.assert_allclose(q, acts[3, :6])


def test_latency_shifts_actions_earlier(setup):
    ex = make_executor(setup, action_latency_s=0.04)
    wp = ex.plan(ExecutorChunk(1.0, "joint_position", joint_rows(3), 0, 0.1), 1.0, None)
    np.testing.assert_allclose(wp.times, [1.06, 1.16, 1.26])


@pytest.mark.parametrize("change, match", [
    (dict(stamp=5.0 - 1.5), "stale"),
    (dict(stamp=5.5), "future"),
    (dict(dt=0.0), "dt"),
    (dict(dt=float("nan")), "dt"),
    (dict(start_index=4), "start_index"),
    (dict(action_space="calvin_rel_ee"), "cannot drive"),
    (dict(actions=np.full((4, 7), np.nan)), "NaN"),
    (dict(actions=np.zeros((4, 5))), "action_dim"),
    (dict(stamp=4.0, dt=0.1), "stale: the time of every action has passed"),
])
def test_rejections(setup, change, match):
    ex = make_executor(setup)
    base = dict(stamp=5.0, action_space="joint_position", actions=joint_rows(4), start_index=0, dt=0.1)
    base.update(change)
    with pytest.raises(ChunkRejected, match=match):
        ex.plan(ExecutorChunk(**base), now=5.0, reference=None)


def test_out_of_order_rejected_after_accept(setup):
    ex = make_executor(setup)
    c1 = ExecutorChunk(5.0, "joint_position", joint_rows(4), 0, 0.1)
    ex.accept(c1.stamp, ex.plan(c1, 5.0, None), 5.0, Q0, 0.0)
    for stamp in (5.0, 4.99):
        with pytest.raises(ChunkRejected, match="out of order"):
            ex.plan(ExecutorChunk(stamp, "joint_position", joint_rows(4), 0, 0.1), 5.01, None)
    ex.plan(ExecutorChunk(5.001, "joint_position", joint_rows(4), 0, 0.1), 5.01, None)


def test_from_flat_checks_sizes():
    flat = np.arange(14, dtype=np.float32)
    chunk = ExecutorChunk.from_flat(1.0, "joint_position", 2, 7, flat, 0, 0.1)
    assert chunk.actions.shape == (2, 7) and chunk.actions[1, 0] == 7
    with pytest.raises(ChunkRejected, match="expected horizon"):
        ExecutorChunk.from_flat(1.0, "joint_position", 3, 7, flat, 0, 0.1)


@pytest.mark.parametrize("frame", ["", "base_link", "eef_link"])
def test_ee_delta_chains_steps_from_observed_pose(setup, frame):
    rc, kin = setup
    ex = make_executor(setup)
    rng = np.random.default_rng(3)
    steps = np.hstack([rng.normal(0, 0.01, (5, 3)), rng.normal(0, 0.03, (5, 3)), np.full((5, 1), 0.02)])
    chunk = ExecutorChunk(2.0, "ee_delta", steps, 1, 0.1, frame)
    wp = ex.plan(chunk, 2.0, reference=(Q0, 0.0))
    p, r = kin.fk(Q0)
    expected = []
    for row in steps[1:]:  # start_index 1: the first row is history
        if frame == "eef_link":
            p, r = p + r @ row[:3], r @ rotvec_to_matrix(row[3:6])
        else:
            p, r = p + row[:3], rotvec_to_matrix(row[3:6]) @ r
        expected.append((p, r))
    assert len(wp.joint_pos) == 4
    for q, (p_exp, r_exp) in zip(wp.joint_pos, expected):
        p_got, r_got = kin.fk(q)
        assert np.linalg.norm(p_got - p_exp) < 2e-3
        assert np.abs(r_got - r_exp).max() < 3e-2
    np.testing.assert_allclose(wp.gripper, 0.02)


def test_ee_delta_tool_and_base_frames_differ(setup):
    ex = make_executor(setup)
    q_yawed = Q0 + np.array([0.8, 0, 0, 0, 0, 0])  # base joint turned: tool x points 0.9 rad off base x
    step = np.array([[0.02, 0.0, 0.0, 0, 0, 0, 0.0]])
    base = ex.plan(ExecutorChunk(1.0, "ee_delta", step, 0, 0.1, "base_link"), 1.0, (q_yawed, 0.0)).joint_pos[0]
    tool = ex.plan(ExecutorChunk(1.0, "ee_delta", step, 0, 0.1, "eef_link"), 1.0, (q_yawed, 0.0)).joint_pos[0]
    kin = setup[1]
    p0, r0 = kin.fk(q_yawed)
    np.testing.assert_allclose(kin.fk_position(base) - p0, [0.02, 0, 0], atol=2e-3)
    np.testing.assert_allclose(kin.fk_position(tool) - p0, r0 @ [0.02, 0, 0], atol=2e-3)
    assert np.linalg.norm(r0 @ [0.02, 0, 0] - [0.02, 0, 0]) > 0.01  # the two conventions really differ here
    with pytest.raises(ChunkRejected, match="frame_id"):
        ex.plan(ExecutorChunk(1.0, "ee_delta", step, 0, 0.1, "camera"), 1.0, (q_yawed, 0.0))


def test_ee_delta_unreachable_is_cut_or_rejected(setup):
    ex = make_executor(setup)
    steps = np.zeros((4, 7))
    steps[:, 0] = [0.01, 0.01, 2.0, 0.01]  # the third step leaves the reachable space
    wp = ex.plan(ExecutorChunk(1.0, "ee_delta", steps, 0, 0.1), 1.0, (Q0, 0.0))
    assert len(wp.joint_pos) == 2
    with pytest.raises(ChunkRejected, match="unreachable"):
        ex.plan(ExecutorChunk(1.1, "ee_delta", steps[2:], 0, 0.1), 1.1, (Q0, 0.0))
    with pytest.raises(ChunkRejected, match="no measured state"):
        ex.plan(ExecutorChunk(1.2, "ee_delta", steps[:1], 0, 0.1), 1.2, None)


def test_state_history_lookup():
    h = JointStateBuffer(6, capacity=5)
    for k in range(8):
        h.append(k * 0.1, np.full(6, k), 0.01 * k)
    q, g = h.at(0.52)
    assert q[0] == 5 and g == pytest.approx(0.05)
    assert h.at(0.25) is None  # older than the buffer (holds 0.3 .. 0.7)
