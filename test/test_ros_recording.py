"""Dynamics models from a recorded graph: record the CALVIN sim graph to MCAP, convert, train, load.

Real processes over real DDS (localhost only, conftest), set up once for the module: the CALVIN sim graph
(bridge, guidance manager, untrained policy) and three `dynaguide record` processes stopped by their time limit,
their size limit and SIGTERM.  Each test checks one thing about the result: why each recorder stopped, what the
files hold, that they decode with mcap-ros2-support as rclpy deserialises them, that `dynaguide dataset
from-mcap` reconstructs the executed actions and writes the HDF5 layout, and that a tiny dynamics model trained
from it with `dynaguide train dynamics` loads in GuidedPolicyRunner.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ManagedProcess

pytestmark = pytest.mark.ros

# a tiny model on the random embedder: 56 px / 14 px patches = 4 x 4 tokens of 32
TINY = ["--embedder", "random", "--embedder-image-size", "56", "--embedder-dim", "32", "--set", "model_dim=32",
        "--set", "n_layers=1", "--set", "n_heads=2", "--set", "pool=1", "--steps", "4", "--batch-size", "8",
        "--threads", "1", "--no-progress", "--no-plot"]

#: recorder name → its extra `dynaguide record` arguments (the signalled one is stopped with SIGTERM)
RECORDERS = {"timed": ["--duration", "10"], "sized": ["--max-bytes", "150000"], "signalled": []}


class _Log(io.TextIOBase):
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.lock = threading.Lock()

    def write(self, s: str) -> int:
        with self.lock:
            self.parts.append(s)
        return len(s)

    def text(self) -> str:
        with self.lock:
            return "".join(self.parts)


def _wait(predicate, timeout: float, what: str, log=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log()[-3000:]}")


def _cli(*args: str) -> int:
    from dynaguide_cli.main import main

    return main(list(args))


def _last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@dataclass
class Recording:
    """The recorders' files ``<dir>/<name>.mcap``, exit codes, logs and final JSON stats (``None`` when they
    printed none)."""

    dir: Path
    returncodes: dict[str, int | None]
    logs: dict[str, str]
    stats: dict[str, dict | None]

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.mcap"


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Recording:
    from dynaguide_ros.launcher import GraphLauncher

    assert os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"
    tmp_path = tmp_path_factory.mktemp("recording")
    t0 = time.monotonic()
    log = _Log()
    launcher = GraphLauncher("calvin_sim", out=log, only=["calvin_bridge", "guidance_manager", "policy_node"],
                             overrides={"guidance_manager": {"state_dir": str(tmp_path / "guidance")},
                                        "calvin_bridge": {"static_size": 64, "gripper_size": 32, "camera_hz": 10.0},
                                        "policy_node": {"replan_period_s": 0.3}})
    launcher.start()
    recorders: dict[str, ManagedProcess] = {}
    try:
        _wait(lambda: "policy node ready" in log.text(), 90, "the policy node", log.text)
        for name, extra in RECORDERS.items():
            recorders[name] = ManagedProcess(
                [sys.executable, "-m", "dynaguide_cli", "record", "-o", str(tmp_path / f"{name}.mcap"), *extra],
                tmp_path / f"record_{name}.log", env=dict(os.environ))
        _wait(lambda: "subscribed to /action_chunk" in recorders["signalled"].log(), 30, "the recorder",
              recorders["signalled"].log)
        time.sleep(2.0)
        os.killpg(recorders["signalled"].proc.pid, signal.SIGTERM)
        for proc in recorders.values():
            proc.proc.wait(timeout=40)
    finally:
        for proc in recorders.values():
            proc.stop()
        launcher.stop()
    print(f"record {time.monotonic() - t0:.1f} s")
    logs = {name: proc.log_path.read_text(errors="replace") for name, proc in recorders.items()}
    codes = {name: proc.proc.returncode for name, proc in recorders.items()}
    stats = {name: _last_json(logs[name]) if codes[name] == 0 else None for name in recorders}
    return Recording(tmp_path, codes, logs, stats)


# ------------------------------------------------------------------------------------------ the recorders
@pytest.mark.parametrize("name, stopped_right", [
    ("timed", lambda s: s["stop_reason"] == "time limit (10 s)"),
    ("sized", lambda s: s["stop_reason"].startswith("size limit") and s["bytes"] >= 150000),
    ("signalled", lambda s: s["stop_reason"].startswith("interrupted")),
], ids=list(RECORDERS))
def test_recorder_exits_cleanly_for_its_stop_reason(recording, name, stopped_right):
    assert recording.returncodes[name] == 0, recording.logs[name]
    assert stopped_right(recording.stats[name]), recording.stats[name]


@pytest.mark.parametrize("topic", ["/action_chunk", "/policy/predicted_path", "/policy/diagnostics"])
def test_recording_holds_the_chunks_the_plan_and_the_diagnostics(recording, topic):
    """The plan and the diagnostics are recorded by default: a recording shows what the policy meant to do."""
    stats = recording.stats["timed"]
    assert stats["messages"][topic] >= 5, stats


@pytest.mark.parametrize("name", list(RECORDERS))
def test_recording_is_a_finalised_ros2_mcap_file(recording, name):
    """Every file has its summary section, ``cdr`` / ``ros2msg`` channels and the offered QoS of each topic."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with open(recording.path(name), "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        assert reader.get_header().profile == "ros2"
        summary = reader.get_summary()
        assert summary is not None
        assert summary.statistics.message_count == sum(recording.stats[name]["messages"].values())
        for channel in summary.channels.values():
            schema = summary.schemas[channel.schema_id]
            assert (channel.message_encoding, schema.encoding) == ("cdr", "ros2msg")
            assert schema.name.count("/msg/") == 1
            qos = yaml.safe_load(channel.metadata["offered_qos_profiles"])
            assert qos and {"reliability", "durability", "history", "depth"} <= set(qos[0])


def test_recorded_messages_decode_as_rclpy_deserialises_them(recording):
    """mcap-ros2-support's decoding of the bytes equals rclpy's deserialisation (the first two of each topic)."""
    import rclpy.serialization
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    from dynaguide_ros.recorder import _message_class

    stats = recording.stats["timed"]
    with open(recording.path("timed"), "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        seen = {}
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            seen[channel.topic] = seen.get(channel.topic, 0) + 1
            if seen[channel.topic] <= 2:
                ros_msg = rclpy.serialization.deserialize_message(message.data, _message_class(schema.name))
                if schema.name == "visualization_msgs/msg/MarkerArray":  # no header of its own
                    decoded, ros_msg = decoded.markers[0], ros_msg.markers[0]
                assert decoded.header.stamp.sec == ros_msg.header.stamp.sec
                assert decoded.header.stamp.nanosec == ros_msg.header.stamp.nanosec
                if schema.name == "sensor_msgs/msg/Image":   # static camera 64 px; the gripper camera its own
                    size = 64 if channel.topic == "/camera/rgb_static" else decoded.width
                    assert (decoded.height, decoded.width, decoded.encoding) == (size, size, "rgb8")
                    assert bytes(decoded.data) == bytes(ros_msg.data)
                if schema.name == "dynaguide_msgs/msg/ActionChunk":
                    assert np.allclose(np.asarray(decoded.actions), np.asarray(ros_msg.actions))
    assert seen == {k: v for k, v in stats["messages"].items() if v}


# ------------------------------------------------------------------------------------------ conversion
@pytest.fixture(scope="module")
def replayed(recording):
    """The timed recording read back and its control steps reconstructed (windows of 16, stride 8)."""
    from dynaguide.recordings import FromMcapConfig, read_recording, reconstruct_steps

    cfg = FromMcapConfig(window=16, stride=8)
    rec = read_recording(recording.path("timed"), cfg)
    return cfg, rec, reconstruct_steps(rec, cfg)


@pytest.fixture(scope="module")
def converted(recording, replayed):
    """``dynaguide dataset from-mcap``'s conversion of the timed recording → (HDF5 path, summary)."""
    from dynaguide.recordings import convert_mcap

    cfg, _, _ = replayed
    out = recording.dir / "data.h5"
    return out, convert_mcap(recording.path("timed"), out, cfg)


def test_replay_executes_exactly_the_scheduled_actions(replayed):
    """Lockstep executes exactly the scheduled actions (nothing held); action i of a chunk is the one due at
    stamp + (i - start_index + 1) * dt, and the newest chunk wins."""
    _, rec, steps = replayed
    executed = np.flatnonzero(~steps.held)
    assert len(executed) > 30 and np.all(np.diff(steps.source[executed]) >= 0)
    for k in executed:
        c = rec.chunks[steps.source[k]]
        i = c["start_index"] + int(round((steps.stamps[k] + steps.dt - c["stamp"]) / steps.dt)) - 1
        assert np.array_equal(steps.actions[k], c["actions"][i])


def test_conversion_writes_segments_without_held_steps(converted):
    _, summary = converted
    assert summary["segments"] >= 2 and summary["held_steps"] == 0, summary


def test_converted_file_has_the_hdf5_layout(converted):
    import h5py

    path, _ = converted
    with h5py.File(path) as f:
        demo = f["data/demo_0"]
        assert demo["obs/rgb_static"].shape == (16, 64, 64, 3) and demo["obs/proprio"].shape == (16, 15)
        assert demo["actions"].shape == (16, 7) and demo["obs/states"].shape == (16, 24)


def test_behaviour_segments_are_labelled_by_their_event_or_refused_without_any(recording, replayed):
    """One segment per event (random actions do trigger some), or a clear error (exit 2) without any."""
    import h5py

    from dynaguide.recordings import FromMcapConfig, segment_ranges

    _, rec, steps = replayed
    out = recording.dir / "b.h5"
    rc = _cli("dataset", "from-mcap", str(recording.path("timed")), "--out", str(out), "--segment", "behaviour",
              "--min-length", "1")
    by_event = segment_ranges(steps, rec.events, FromMcapConfig(segment="behaviour", min_length=1))
    assert all(e - s <= 32 and b for s, e, b in by_event)
    if by_event:  # events before the first recorded chunk's actions are outside every usable run
        assert rc == 0
        with h5py.File(out) as f:
            assert {f["data"][n].attrs["behavior"] for n in f["data"]} <= {b for _, b in rec.events}
    else:
        assert rc == 2


# ------------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def trained(recording, converted):
    """`dynaguide train dynamics` on the converted file → (exit code, output directory)."""
    path, _ = converted
    out = recording.dir / "dyn"
    return _cli("train", "dynamics", "--data", str(path), "--camera", "rgb_static", "--out", str(out), *TINY), out


def test_dynamics_model_trains_from_the_recording(trained):
    rc, out = trained
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and np.isfinite(summary["final_train_loss"])


def test_trained_model_loads_and_guides_in_the_runner(trained):
    """Loaded the way the policy node does: the runner expects the model's embedder and guides with it."""
    from dynaguide.guided_runner import GuidedPolicyRunner, RunnerConfig

    rc, out = trained
    assert rc == 0
    embedder_id = json.loads((out / "summary.json").read_text())["embedder_id"]
    runner = GuidedPolicyRunner.from_config(RunnerConfig(dynamics_checkpoint=str(out / "dynamics"), embed_tokens=16,
                                                         embed_dim=32, proprio_dim=15, action_dim=7))
    assert runner.expected_embedder_id == embedder_id
    assert (runner.dynamics.cfg.embed_tokens, runner.dynamics.cfg.embed_dim) == (16, 32)
    images = {"rgb_static": np.zeros((2, 64, 64, 3), np.uint8)}
    tokens = np.zeros((16, 32), np.float32)
    runner.set_guidance_tokens(tokens[None], None, runner.guidance_defaults.retuned(scale=1.0))
    chunk = runner.act(images, np.zeros((2, 15), np.float32), tokens, embedder_id)
    assert chunk.guided and chunk.actions.shape == (16, 7) and np.isfinite(chunk.actions).all()
    runner.close()
