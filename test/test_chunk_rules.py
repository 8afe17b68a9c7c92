"""One set of chunk rules: the simulation bridge's schedule, the ROS message decoder and the ARX5 chunk
executor reject the same bad chunk for the same reason (``dynaguide.chunk_execution``), and the ARX5 executor
keeps its own ``max_future_s``."""

from __future__ import annotations

import numpy as np
import pytest

from arx5_driver.backends import load_sdk_configs
from arx5_driver.chunk_executor import ChunkExecutor, ChunkRejected, ExecutorChunk
from arx5_driver.config import ExecutorConfig
from arx5_driver.kinematics import Kinematics
from dynaguide.chunk_execution import ActionSchedule, check_chunk_stamp
from dynaguide_ros.conversions import MessageError, chunk_from_msg, chunk_to_msg, seconds_to_time

NOW = 5.0


@pytest.fixture(scope="module")
def arx5():
    rc, _ = load_sdk_configs("X5")
    return rc, Kinematics(rc)


def _rows(n: int = 4) -> np.ndarray:
    return np.hstack([np.full((n, 6), 0.1), np.full((n, 1), 0.02)])


def _reasons(arx5, actions: np.ndarray, stamp: float, dt: float, start_index: int,
             max_future_s: float = 0.1, frozen_steps: int = 0) -> dict[str, str]:
    """The rejection reason of each consumer (``""``: accepted)."""
    out = {}
    try:
        ActionSchedule(7, 0.1, max_future_s=max_future_s).add_chunk(actions, stamp, dt, start_index, now=NOW,
                                                                    frozen_steps=frozen_steps)
        out["schedule"] = ""
    except ValueError as exc:
        out["schedule"] = str(exc)
    msg = chunk_to_msg(np.zeros_like(actions), "joint_position", seconds_to_time(stamp), 0.1)
    msg.actions = actions.astype(np.float32).ravel().tolist()
    msg.dt, msg.start_index, msg.frozen_steps = dt, start_index, frozen_steps
    try:
        chunk_from_msg(msg)
        out["message"] = ""
    except MessageError as exc:
        out["message"] = str(exc)
    ex = ChunkExecutor(arx5[0], arx5[1], ExecutorConfig(max_future_s=max_future_s))
    try:
        ex.plan(ExecutorChunk(stamp, "joint_position", actions, start_index, dt, frozen_steps=frozen_steps), NOW, None)
        out["arx5"] = ""
    except ChunkRejected as exc:
        out["arx5"] = str(exc)
    return out


@pytest.mark.parametrize("actions, dt, start_index, reason", [
    (np.where(np.eye(4, 7) > 0, np.nan, _rows()), 0.1, 0, "chunk contains NaN or infinite actions"),
    (_rows(), 0.0, 0, "chunk dt must be positive and finite, got 0.0"),
    (_rows(), float("inf"), 0, "chunk dt must be positive and finite, got inf"),
    (_rows(), 0.1, 4, "start_index 4 outside [0, 4)"),
])
def test_content_rules_are_shared(arx5, actions, dt, start_index, reason):
    reasons = _reasons(arx5, actions, NOW, dt, start_index)
    assert reasons["schedule"] == reason and reasons["message"] == reason
    assert reasons["arx5"] == f"joint_position: {reason}"


@pytest.mark.parametrize("start_index, frozen, reason", [
    (0, 4, ""), (1, 3, ""), (0, 0, ""),
    (1, 4, "frozen_steps 4 outside [0, 3] (the chunk's 4 actions from start_index 1)"),
    (0, 9, "frozen_steps 9 outside [0, 4] (the chunk's 4 actions from start_index 0)"),
])
def test_frozen_steps_rule_is_shared(arx5, start_index, frozen, reason):
    """``ActionChunk.frozen_steps`` (real-time chunking) must lie within the chunk's executable actions."""
    reasons = _reasons(arx5, _rows(), NOW, 0.1, start_index, frozen_steps=frozen)
    assert reasons["schedule"] == reason and reasons["message"] == reason
    assert reasons["arx5"] == (f"joint_position: {reason}" if reason else "")


def test_stamp_rules_are_shared_and_max_future_s_is_kept(arx5):
    reasons = _reasons(arx5, _rows(), NOW + 0.5, 0.1, 0)
    assert reasons["message"] == ""                       # a message carries no clock to check against
    assert "in the future of the clock" in reasons["schedule"]
    assert reasons["arx5"] == f"joint_position: {reasons['schedule']}"
    # with a larger max_future_s both accept the same stamp
    assert _reasons(arx5, _rows(), NOW + 0.5, 0.1, 0, max_future_s=1.0) == {"schedule": "", "message": "",
                                                                          "arx5": ""}
    with pytest.raises(ChunkRejected, match="out of order: chunk stamp 5.000000 is not newer"):
        ex = ChunkExecutor(arx5[0], arx5[1], ExecutorConfig())
        chunk = ExecutorChunk(NOW, "joint_position", _rows(), 0, 0.1)
        ex.accept(chunk.stamp, ex.plan(chunk, NOW, None), NOW, np.zeros(6), 0.0)
        ex.plan(chunk, NOW + 0.01, None)


def test_observation_history_keeps_one_entry_per_stamp():
    """A lockstep sim republishes frame t while it waits: the history must stay [t-1, t], not become [t, t]."""
    from dynaguide.chunk_execution import ObservationHistory

    history = ObservationHistory(2)
    history.append(1.0, "a")
    assert history.padded(2) == ["a", "a"]                 # fewer than n seen: the oldest is repeated
    history.append(2.0, "b")
    history.append(2.0, "b again")                         # republished while paused: replaces, does not shift
    assert history.padded(2) == ["a", "b again"] and history.newest_stamp == 2.0
    history.append(1.5, "late")                             # older than the newest: dropped
    assert history.padded(2) == ["a", "b again"]
    history.append(3.0, "c")
    assert history.padded(2) == ["b again", "c"] and len(history) == 2
    with pytest.raises(ValueError, match="maxlen"):
        ObservationHistory(0)


@pytest.mark.parametrize("clock, stamp", [
    (1000.0, 1005.0),                        # lockstep: sim time + 5 s
    (1.7e9, float(2**31 - 1)),               # wall clock: sec = 2^31 - 1
])
def test_schedule_rejects_future_stamps_and_keeps_accepting_current_ones(clock, stamp):
    s = ActionSchedule(2, 0.1, max_future_s=0.1)
    with pytest.raises(ValueError, match="in the future"):
        s.add_chunk(np.ones((4, 2)), stamp=stamp, dt=0.1, now=clock)
    assert len(s) == 0 and s.stats.rejected == 1
    s.add_chunk(np.ones((4, 2)), stamp=clock, dt=0.1, now=clock)     # not "not newer than" the future one
    assert len(s) == 4
    assert s.next_action(clock + 0.1) is not None                      # the world moves on
    s.add_chunk(np.ones((4, 2)), stamp=clock + 0.05, dt=0.1, now=clock)  # within max_future_s: fine


def test_stamp_rule_is_shared_and_names_the_reason():
    check_chunk_stamp(10.0, 10.0, 9.0)
    check_chunk_stamp(10.05, 10.0, 9.0)
    with pytest.raises(ValueError, match="not newer"):
        check_chunk_stamp(9.0, 10.0, 9.0)
    with pytest.raises(ValueError, match="not finite"):
        check_chunk_stamp(float("nan"), 10.0, 9.0)
    with pytest.raises(ValueError, match=r"0\.500 s in the future"):
        check_chunk_stamp(10.5, 10.0, 9.0)
    check_chunk_stamp(1e12, None, 9.0)  # no clock: only the order is checked (as before)
