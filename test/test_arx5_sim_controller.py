"""Executor + safety + the PyBullet arm, ROS-free: chunks in, smooth tracked motion out, watchdog stops it."""

from __future__ import annotations

import numpy as np
import pytest

from arx5_driver.backends import SimBackend
from arx5_driver.chunk_executor import ExecutorChunk
from arx5_driver.config import ExecutorConfig, SafetyConfig
from arx5_driver.controller import ArmController
from arx5_driver.safety import Action


@pytest.fixture
def sim_controller():
    sim = SimBackend("X5", initial_joint_pos=np.array([0.0, 0.8, 0.8, 0.0, 0.0, 0.0]))
    ctrl = ArmController(sim, SafetyConfig(watchdog_hold_s=0.3, watchdog_damp_s=1.0), ExecutorConfig())
    yield ctrl, sim
    ctrl.shutdown()


def test_sim_follows_chunk_stream_then_watchdog_stops_it(sim_controller):
    ctrl, sim = sim_controller
    dt = sim.control_dt
    now = 0.0
    for _ in range(10):
        ctrl.tick(now)
        now += dt
    q0 = ctrl.latest_state.joint_pos.copy()
    amp = np.array([0.3, 0.2, -0.2, 0.3, 0.3, 0.4])
    t0 = now

    def reference(t):
        return q0 + amp * np.sin(2 * np.pi * 0.5 * (t - t0))

    log = []
    for k in range(int(3.0 / dt)):  # 3 s; a 16-step chunk (dt 0.05 s) every 0.1 s, stamped 30 ms in the past
        if k % 50 == 0:
            stamp = now - 0.03
            ts = stamp + 0.05 * np.arange(1, 17)
            rows = np.hstack([np.array([reference(t) for t in ts]), np.full((16, 1), 0.03)])
            assert ctrl.submit_chunk(ExecutorChunk(stamp, "joint_position", rows, 0, 0.05), now).accepted
        cmd = ctrl.tick(now)
        log.append((now, cmd, sim.read_state()))
        now += dt
    times = np.array([t for t, _, _ in log])
    measured = np.array([s.joint_pos for _, _, s in log])
    late = times > t0 + 0.5
    error = np.abs(measured[late] - np.array([reference(t) for t in times[late]])).max()
    speed = np.abs(np.array([s.joint_vel for _, _, s in log])).max()
    assert all(c.action is Action.TRACK for _, c, _ in log)
    assert error < 0.02, error
    assert speed < 1.2 * 2 * np.pi * 0.5 * np.abs(amp).max() + 0.1, speed  # no spikes beyond the sine's own speed
    print(f"sim tracking error {error:.4f} rad, peak joint speed {speed:.2f} rad/s")

    # chunks stop: within two control periods after the watchdog time the command is frozen, the arm settles
    last_chunk = t0 + 2.9 + 0.0  # last submit happened at k = 1450
    hold_log = []
    for _ in range(int(1.2 / dt)):
        hold_log.append((now, ctrl.tick(now), sim.read_state()))
        now += dt
    frozen = [c for t, c, _ in hold_log if last_chunk + 0.3 + 2 * dt <= t < last_chunk + 1.0]
    assert frozen and all(c.action is Action.HOLD for c in frozen)
    assert all(np.array_equal(c.joint_pos, frozen[0].joint_pos) for c in frozen)
    settle = [s for t, _, s in hold_log if last_chunk + 0.3 + 0.1 <= t < last_chunk + 1.0]
    assert max(np.abs(s.joint_vel).max() for s in settle) < 0.05  # physically at rest 0.1 s into the hold
    assert hold_log[-1][1].action is Action.DAMP and sim.is_damped
