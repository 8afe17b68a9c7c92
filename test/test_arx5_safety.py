"""Safety layer + chunk executor: property test over adversarial chunks, watchdog, e-stop, shutdown.

The arm is the real ``SdkBackend`` on the installed SDK's config objects with the CAN-connected
controller replaced by :class:`_arx5_standin.StandInJointController` (test/_arx5_standin.py).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from arx5_driver.backends import SdkBackend
from arx5_driver.chunk_executor import ExecutorChunk
from arx5_driver.config import ExecutorConfig, SafetyConfig
from arx5_driver.controller import ArmController
from arx5_driver.safety import Action, Mode

from _arx5_standin import StandInJointController

Q_START = np.array([0.0, 0.8, 0.8, 0.0, 0.0, 0.0])


def make_controller(safety: SafetyConfig | None = None, alpha: float = 1.0, q0=Q_START, stiffen_wait_s=None):
    holder = {}

    def factory(rc, cc, iface):
        holder["ctrl"] = StandInJointController(rc, cc, iface, initial_joint_pos=q0, tracking_alpha=alpha)
        return holder["ctrl"]

    backend = SdkBackend("X5", "can0", controller_factory=factory, stiffen_wait_s=stiffen_wait_s)
    return ArmController(backend, safety or SafetyConfig(), ExecutorConfig()), holder["ctrl"]


def joint_chunk(stamp, q_rows, gripper=0.04, dt=0.1, start_index=0):
    q_rows = np.atleast_2d(q_rows)
    acts = np.hstack([q_rows, np.full((len(q_rows), 1), gripper)])
    return ExecutorChunk(stamp, "joint_position", acts, start_index, dt)


def run_ticks(ctrl, now, seconds):
    dt = ctrl.backend.control_dt
    out = []
    for _ in range(int(round(seconds / dt))):
        out.append((now, ctrl.tick(now)))
        now += dt
    return now, out


def test_property_adversarial_chunks_never_leave_limits_or_workspace():
    rng = np.random.default_rng(12345)
    # (no real-time wait when stiffening: the stand-in takes commands synchronously)
    ctrl, hw = make_controller(SafetyConfig(watchdog_hold_s=0.02, watchdog_damp_s=0.06), stiffen_wait_s=0.0)
    rc = ctrl.backend.robot_config
    sdk_min, sdk_max = np.asarray(rc.joint_pos_min), np.asarray(rc.joint_pos_max)
    safety = ctrl.safety
    cap = safety.step_cap
    assert np.all(cap <= 0.5 * np.asarray(rc.joint_vel_max) * ctrl.backend.control_dt + 1e-15)
    dt = ctrl.backend.control_dt
    now = 1.0
    now, _ = run_ticks(ctrl, now, 0.01)
    kinds = ["walk", "fast", "ee_walk", "ee_walk", "jump", "nan", "out_of_order", "stale", "future", "ee_huge",
             "ee_down", "malformed", "silence", "estop"]
    stats = {k: [0, 0] for k in kinds}
    last_accepted_stamp = -np.inf
    n_track = 0
    checked = {"calls": 0, "prev": None, "path": 0.0, "commands": 0}

    def check_new_calls():
        """Every command that reached the (stand-in) hardware since the last check."""
        for name, payload in hw.calls[checked["calls"]:]:
            if name == "set_to_damping":
                checked["prev"] = None  # damping ends a command sequence; restarting needs the start check
            if name != "set_joint_cmd":
                continue
            q, g = payload
            assert np.all(np.isfinite(q)) and np.isfinite(g)
            assert np.all(q >= sdk_min) and np.all(q <= sdk_max), q
            assert np.all(q >= safety.joint_min - 1e-12) and np.all(q <= safety.joint_max + 1e-12), q
            assert 0.0 <= g <= rc.gripper_width
            assert safety.workspace_violation(q) == 0.0, q
            prev = checked["prev"]
            if prev is not None:
                assert np.all(np.abs(q - prev) <= cap + 1e-12), np.abs(q - prev) - cap
                checked["path"] += float(np.abs(q - prev).sum())
            checked["prev"] = q
            checked["commands"] += 1
        checked["calls"] = len(hw.calls)

    submitted = 0
    reasons: dict = {}
    tick_reasons: collections.Counter = collections.Counter()
    while submitted < 10_000:
        kind = kinds[rng.integers(len(kinds))]
        q_meas = ctrl.latest_state.joint_pos
        stamp = now - rng.uniform(0.0, 0.02)
        horizon = int(rng.integers(1, 9))
        chunk = None
        if kind == "walk":
            steps = rng.normal(0, 0.03, size=(horizon, 6)).cumsum(axis=0)
            chunk = joint_chunk(stamp, q_meas + steps + rng.normal(0, 0.02, 6), rng.uniform(-0.05, 0.15), dt=0.02)
        elif kind == "fast":  # feasible for the SDK (< 5 rad/s) but faster than the safety cap (2 rad/s)
            steps = np.cumsum(rng.choice([-1, 1], size=(horizon, 6)) * rng.uniform(0.05, 0.09, (horizon, 6)), axis=0)
            chunk = joint_chunk(stamp, q_meas + steps, 0.04, dt=0.02)
        elif kind == "jump":
            chunk = joint_chunk(stamp, rng.uniform(-1e3, 1e3, size=(horizon, 6)) * rng.choice([1e-3, 1, 1]), 5.0,
                                dt=0.02)
        elif kind == "nan":
            rows = q_meas + rng.normal(0, 0.01, size=(horizon, 6))
            rows[rng.integers(horizon), rng.integers(6)] = rng.choice([np.nan, np.inf, -np.inf])
            chunk = joint_chunk(stamp, rows, dt=0.02)
        elif kind == "out_of_order":
            before = last_accepted_stamp - rng.uniform(0, 0.05) if np.isfinite(last_accepted_stamp) else -1.0
            chunk = joint_chunk(before, q_meas, dt=0.02)
        elif kind == "stale":
            chunk = joint_chunk(now - rng.uniform(1.01, 100.0), q_meas, dt=0.02)
        elif kind == "future":
            chunk = joint_chunk(now + rng.uniform(0.11, 100.0), q_meas, dt=0.02)
        elif kind in ("ee_walk", "ee_huge", "ee_down"):
            acts = np.zeros((horizon, 7))
            if kind == "ee_walk":
                acts[:, :3] = rng.normal(0, 0.005, (horizon, 3))
                acts[:, 3:6] = rng.normal(0, 0.02, (horizon, 3))
            elif kind == "ee_huge":
                acts[:, :3] = rng.normal(0, 1.0, (horizon, 3))
                acts[:, 3:6] = rng.normal(0, 3.0, (horizon, 3))
            else:
                acts[:, 2] = -0.02
            acts[:, 6] = rng.uniform(-0.05, 0.15)
            frame = rng.choice(["", "base_link", "eef_link"])
            chunk = ExecutorChunk(stamp, "ee_delta", acts, 0, 0.1, str(frame))
        elif kind == "malformed":
            choice = rng.integers(4)
            if choice == 0:
                chunk = ExecutorChunk(stamp, "joint_position", np.zeros((horizon, 5)), 0, 0.02)
            elif choice == 1:
                chunk = joint_chunk(stamp, q_meas, dt=float(rng.choice([0.0, -0.1, np.nan])))
            elif choice == 2:
                chunk = joint_chunk(stamp, np.tile(q_meas, (horizon, 1)), start_index=horizon)
            else:
                chunk = ExecutorChunk(stamp, "calvin_rel_ee", np.zeros((horizon, 7)), 0, 0.02)
        elif kind == "silence":
            # long enough for the watchdog to hold (0.02 s) or to damp (0.06 s)
            start = now
            now, log = run_ticks(ctrl, now, float(rng.choice([0.03, 0.08])))
            assert all(c.action is not Action.TRACK for t, c in log if t >= start + 0.02 + 2 * dt)
        elif kind == "estop":
            ctrl.estop()
            assert hw.damped
            rejected = ctrl.submit_chunk(joint_chunk(now, q_meas, dt=0.02), now)
            assert not rejected.accepted and "e-stop" in rejected.reason
            assert ctrl.tick(now).action is Action.DAMP
            assert ctrl.reset_estop()
        check_new_calls()
        if chunk is not None:
            result = ctrl.submit_chunk(chunk, now)
            reasons.setdefault(kind, collections.Counter())[result.reason.split(":")[0][:20]] += 1
            submitted += 1
            stats[kind][0 if result.accepted else 1] += 1
            if result.accepted:
                assert chunk.stamp > last_accepted_stamp
                last_accepted_stamp = chunk.stamp
        for _ in range(int(rng.integers(1, 5))):
            cmd = ctrl.tick(now)
            n_track += cmd.action is Action.TRACK
            tick_reasons[cmd.reason.split(" by")[0]] += 1
            now += dt
        check_new_calls()
    # The adversarial classes are always refused; the well-formed ones mostly go through.
    for kind in ("nan", "out_of_order", "stale", "future", "malformed", "ee_huge"):
        assert stats[kind][0] == 0 and stats[kind][1] > 300, (kind, stats[kind])
    print({kind: dict(counter.most_common(4)) for kind, counter in reasons.items()})
    print(dict(tick_reasons.most_common(8)))
    assert stats["walk"][0] > 0.5 * sum(stats["walk"]), stats
    assert stats["ee_walk"][0] > 0.3 * sum(stats["ee_walk"]), stats
    # the cap and the workspace really acted
    assert tick_reasons["tracking (step capped)"] > 1000, tick_reasons
    assert tick_reasons["target leaves the workspace"] > 100, tick_reasons
    assert stats["fast"][0] > 0.5 * sum(stats["fast"]), stats
    assert n_track > 5000 and checked["path"] > 10.0, (n_track, checked)
    print("chunk stats (accepted, rejected):", stats, "track ticks", n_track, "hardware commands",
          checked["commands"], "joint path", round(checked["path"], 2))


def test_watchdog_holds_within_two_periods_then_damps():
    cfg = SafetyConfig(watchdog_hold_s=0.2, watchdog_damp_s=0.6)
    ctrl, hw = make_controller(cfg)
    dt = ctrl.backend.control_dt
    now, _ = run_ticks(ctrl, 0.0, 0.01)
    q = ctrl.latest_state.joint_pos
    target = q + np.array([0.3, 0.2, -0.2, 0.3, 0.3, 0.3])
    rows = q + np.linspace(0, 1, 21)[1:, None] * (target - q)
    chunk_time = now
    assert ctrl.submit_chunk(joint_chunk(now, rows, dt=0.05), now).accepted
    now, log = run_ticks(ctrl, now, 1.0)
    track = [(t, c) for t, c in log if c.action is Action.TRACK]
    assert track and max(t for t, _ in track) < chunk_time + cfg.watchdog_hold_s + 1e-9
    held = [c for t, c in log if chunk_time + cfg.watchdog_hold_s + 2 * dt <= t < chunk_time + cfg.watchdog_damp_s]
    assert held and all(c.action is Action.HOLD for c in held)
    assert all(np.array_equal(c.joint_pos, held[0].joint_pos) for c in held)
    # the hold is the last tracked command: no jump
    assert np.array_equal(held[0].joint_pos, track[-1][1].joint_pos)
    # the arm was still moving when the watchdog fired (the chunk lasts 1 s): the hold really stopped it
    assert np.max(np.abs(held[0].joint_pos - target)) > 0.05
    damped = [c for t, c in log if t >= chunk_time + cfg.watchdog_damp_s + 2 * dt]
    assert damped and all(c.action is Action.DAMP for c in damped)
    assert hw.damped and ctrl.mode is Mode.DAMPED


def test_estop_latches_until_reset_and_restart_needs_start_check():
    ctrl, hw = make_controller()
    now, _ = run_ticks(ctrl, 0.0, 0.01)
    q = ctrl.latest_state.joint_pos
    assert ctrl.submit_chunk(joint_chunk(now, q + 0.02), now).accepted
    now, _ = run_ticks(ctrl, now, 0.05)
    ctrl.estop()
    assert hw.damped and hw.calls[-1][0] == "set_to_damping"
    for _ in range(3):
        now, log = run_ticks(ctrl, now, 0.1)
        assert all(c.action is Action.DAMP for _, c in log)
        result = ctrl.submit_chunk(joint_chunk(now, ctrl.latest_state.joint_pos + 0.01), now)
        assert not result.accepted and "e-stop" in result.reason
    assert ctrl.reset_estop() and not ctrl.reset_estop()
    # still damped after the reset until a chunk passes the start check
    now, log = run_ticks(ctrl, now, 0.05)
    assert all(c.action is Action.DAMP for _, c in log) and hw.damped
    far = ctrl.submit_chunk(joint_chunk(now, ctrl.latest_state.joint_pos + 0.5), now)
    assert not far.accepted and "refusing to start" in far.reason and hw.damped
    near = ctrl.submit_chunk(joint_chunk(now, ctrl.latest_state.joint_pos + 0.01), now)
    assert near.accepted and not hw.damped
    now, log = run_ticks(ctrl, now, 0.05)
    assert log[-1][1].action is Action.TRACK


def test_start_refused_far_from_measured_state():
    ctrl, hw = make_controller()
    now, _ = run_ticks(ctrl, 0.0, 0.01)
    q = ctrl.latest_state.joint_pos
    result = ctrl.submit_chunk(joint_chunk(now, q + np.array([0, 0, 0, 0, 0, 0.15])), now)
    assert not result.accepted and "0.150 rad" in result.reason
    assert hw.damped and all(name != "set_joint_cmd" for name, _ in hw.calls)


def test_shutdown_damps_and_stops_commanding():
    ctrl, hw = make_controller()
    now, _ = run_ticks(ctrl, 0.0, 0.01)
    assert ctrl.submit_chunk(joint_chunk(now, ctrl.latest_state.joint_pos + 0.02), now).accepted
    now, _ = run_ticks(ctrl, now, 0.02)
    assert not hw.damped
    ctrl.shutdown()
    assert hw.damped and hw.calls[-1][0] == "set_to_damping"
    n = len(hw.calls)
    ctrl.tick(now)
    assert not ctrl.submit_chunk(joint_chunk(now + 0.01, ctrl.latest_state.joint_pos), now + 0.01).accepted
    assert len(hw.calls) == n


def test_bad_target_holds_and_tracking_fault_damps():
    ctrl, hw = make_controller()
    now, _ = run_ticks(ctrl, 0.0, 0.01)
    q = ctrl.latest_state.joint_pos
    assert ctrl.submit_chunk(joint_chunk(now, q + 0.02), now).accepted
    now, _ = run_ticks(ctrl, now, 0.02)
    state = ctrl.latest_state
    before = ctrl.safety.last_joint_pos.copy()
    cmd = ctrl.safety.step(now, state, (np.full(6, np.nan), 0.01))
    assert cmd.action is Action.HOLD and np.array_equal(cmd.joint_pos, before)
    # the measured arm is far from the command (blocked/collision): damp
    from arx5_driver.backends import ArmState
    off = ArmState(state.joint_pos + 0.5, state.joint_vel, state.gripper_width, state.stamp)
    assert ctrl.safety.step(now, off, (before, 0.01)).action is Action.DAMP


def test_workspace_holds_at_the_table():
    cfg = SafetyConfig(table_z_m=0.30)
    ctrl, hw = make_controller(cfg)
    now, _ = run_ticks(ctrl, 0.0, 0.01)
    z0 = ctrl.kinematics.fk_position(ctrl.latest_state.joint_pos)[2]
    assert z0 > 0.32
    down = np.zeros((16, 7))
    down[:, 2] = -0.01  # 16 cm down in 0.32 s: through the table at 0.30 m
    assert ctrl.submit_chunk(ExecutorChunk(now, "ee_delta", down, 0, 0.02), now).accepted
    now, log = run_ticks(ctrl, now, 0.45)
    zs = [ctrl.kinematics.fk_position(c.joint_pos)[2] for _, c in log if c.joint_pos is not None]
    assert min(zs) >= 0.30 and min(zs) < 0.31
    assert any("workspace" in c.reason for _, c in log)


def test_safety_config_validation():
    with pytest.raises(ValueError, match="watchdog_damp_s"):
        SafetyConfig(watchdog_hold_s=1.0, watchdog_damp_s=0.5)
    with pytest.raises(ValueError, match="velocity scales"):
        SafetyConfig(velocity_scale=1.5)


def test_infeasible_chunks_are_refused_not_slewed():
    ctrl, hw = make_controller()
    now, _ = run_ticks(ctrl, 0.0, 0.01)
    q = ctrl.latest_state.joint_pos
    # 0.2 rad per 20 ms on joint 1 = 10 rad/s, twice the SDK's 5 rad/s
    rows = q + 0.01 + np.outer(np.arange(4) * 0.2, [1, 0, 0, 0, 0, 0])
    result = ctrl.submit_chunk(joint_chunk(now, rows, dt=0.02), now)
    assert not result.accepted and "10.00 rad/s on joint1" in result.reason
    assert ctrl.submit_chunk(joint_chunk(now, q + 0.01, dt=0.02), now).accepted
    now, _ = run_ticks(ctrl, now, 0.05)
    # while tracking, a chunk whose first action is out of reach from the current command is refused
    far = ctrl.submit_chunk(joint_chunk(now, q + np.array([0, 0, 0, 0, 0, 0.5]), dt=0.02), now)
    assert not far.accepted and "from the current command on joint6" in far.reason
    assert ctrl.mode is Mode.TRACKING


def test_backend_refusing_stiffness_keeps_arm_damped():
    """If the SDK refuses to raise the gains (its 0.2 rad check), the chunk is refused and the arm stays damped."""
    ctrl, hw = make_controller()
    now, _ = run_ticks(ctrl, 0.0, 0.01)

    def refuse(gain):
        raise RuntimeError("max_pos_error too large")

    hw.set_gain = refuse
    result = ctrl.submit_chunk(joint_chunk(now, ctrl.latest_state.joint_pos + 0.01), now)
    assert not result.accepted and "could not be made stiff" in result.reason
    assert hw.damped and ctrl.mode is Mode.DAMPED
    now, log = run_ticks(ctrl, now, 0.02)
    assert all(c.action is Action.DAMP for _, c in log)


def test_deactivate_damps_without_latching():
    ctrl, hw = make_controller()
    now, _ = run_ticks(ctrl, 0.0, 0.01)
    assert ctrl.submit_chunk(joint_chunk(now, ctrl.latest_state.joint_pos + 0.02), now).accepted
    now, _ = run_ticks(ctrl, now, 0.02)
    ctrl.deactivate()
    assert hw.damped and ctrl.mode is Mode.DAMPED
    now, log = run_ticks(ctrl, now, 0.02)
    assert all(c.action is Action.DAMP for _, c in log)
    assert ctrl.submit_chunk(joint_chunk(now, ctrl.latest_state.joint_pos + 0.01), now).accepted
    now, log = run_ticks(ctrl, now, 0.02)
    assert log[-1][1].action is Action.TRACK
