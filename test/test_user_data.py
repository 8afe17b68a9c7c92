"""Dynamics models from users' data: record the sim graph to MCAP, convert, train, load; LeRobotDataset in.

The ROS test runs real processes over real DDS (localhost only, conftest): the CALVIN sim graph (bridge,
guidance manager, untrained policy), three `dynaguide record` processes stopped by their time limit, their
size limit and SIGTERM; the files are read back with mcap-ros2-support's decoder and compared with rclpy's
own deserialisation, converted with `dynaguide dataset from-mcap`, a tiny dynamics model is trained from them
with `dynaguide train dynamics` and loaded by GuidedPolicyRunner.  The LeRobot test writes a tiny dataset with
LeRobot's own LeRobotDataset.create / add_frame / save_episode (a *video* camera: AV1 encoding works here)
and trains from it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ManagedProcess

# a tiny model on the random embedder: 56 px / 14 px patches = 4 x 4 tokens of 32
TINY = ["--embedder", "random", "--embedder-image-size", "56", "--embedder-dim", "32", "--set", "model_dim=32",
        "--set", "n_layers=1", "--set", "n_heads=2", "--set", "pool=1", "--steps", "4", "--batch-size", "8",
        "--threads", "1", "--no-progress", "--no-plot"]


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


# ------------------------------------------------------------------------------------------ no ROS needed
def test_message_definitions_follow_rosbag2s_concatenated_format():
    from dynaguide_ros.msgdefs import SEPARATOR, MessageDefinitionError, field_types, message_definition

    text = message_definition("sensor_msgs/Image")
    blocks = text.split(SEPARATOR + "\n")
    assert "uint8[] data" in blocks[0] and "MSG:" not in blocks[0]
    assert [b.splitlines()[0] for b in blocks[1:]] == ["MSG: std_msgs/msg/Header", "MSG: builtin_interfaces/msg/Time"]
    chunk = message_definition("dynaguide_msgs/msg/ActionChunk")
    assert chunk.count("MSG: builtin_interfaces/msg/Time") == 1  # each dependency once
    assert field_types("uint8 FOO=1\nHeader h  # same package\nstd_msgs/String[<=3] s\nfloat64[] x", "pkg") == \
        ["pkg/msg/Header", "std_msgs/msg/String"]
    with pytest.raises(MessageDefinitionError, match="no nope_msgs/msg/Thing.msg"):
        message_definition("nope_msgs/msg/Thing")


def test_from_mcap_rejects_bad_input_with_a_reason(tmp_path):
    from dynaguide.recordings import FromMcapConfig, RecordingError, convert_mcap

    with pytest.raises(RecordingError, match="does not exist"):
        convert_mcap(tmp_path / "missing.mcap", tmp_path / "o.h5")
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"not an mcap file at all" * 10)
    with pytest.raises(RecordingError, match="not a readable MCAP"):
        convert_mcap(junk, tmp_path / "o.h5")
    with pytest.raises(ValueError, match="proprio must be one of"):
        FromMcapConfig(proprio="odometry")
    assert _cli("dataset", "from-mcap", str(junk), "--out", str(tmp_path / "o.h5")) == 2


def test_segments_by_window_and_by_behaviour_event():
    from dynaguide.recordings import FromMcapConfig, Steps, segment_ranges

    n = 40
    held = np.zeros(n, bool)
    held[:3] = True  # before the first executed action: never part of a segment
    frames = np.arange(n)
    frames[20] = -1  # a step without a camera frame splits the runs
    steps = Steps(stamps=np.arange(n) * 0.1, proprio=np.zeros((n, 2)), scene=None, actions=np.zeros((n, 3)),
                  held=held, guided=np.zeros(n, bool), source=np.zeros(n, int), frame_index={"cam": frames},
                  dt=0.1, action_space="ee_delta")
    events = [(1.0, "drawer_open"), (3.5, "switch_on"), (3.6, "button_on")]
    assert segment_ranges(steps, events, FromMcapConfig(window=8, stride=4)) == \
        [(3, 11, "drawer_open"), (7, 15, "drawer_open"), (11, 19, None), (21, 29, None), (25, 33, None),
         (29, 37, "button_on")]  # the last event inside a window labels it
    assert segment_ranges(steps, events, FromMcapConfig(segment="behaviour", window=0, min_length=2)) == \
        [(3, 11, "drawer_open"), (21, 36, "switch_on")]  # button_on: 1 step after switch_on, too short
    assert segment_ranges(steps, events, FromMcapConfig(segment="behaviour", window=5)) == \
        [(6, 11, "drawer_open"), (31, 36, "switch_on")]


# ------------------------------------------------------------------------------------------ ROS graph
@pytest.mark.ros
def test_record_sim_graph_convert_train_and_load(tmp_path):
    import rclpy.serialization
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    from dynaguide.recordings import FromMcapConfig, convert_mcap, read_recording, reconstruct_steps, segment_ranges
    from dynaguide.runtime import GuidedPolicyRunner, RunnerConfig
    from dynaguide_ros.launcher import GraphLauncher
    from dynaguide_ros.recorder import _message_class

    assert os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"
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
        for name, extra in {"timed": ["--duration", "10"], "sized": ["--max-bytes", "150000"], "signalled": []}.items():
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
    t_record = time.monotonic() - t0
    stats = {}
    for name, proc in recorders.items():
        text = proc.log_path.read_text(errors="replace")
        assert proc.proc.returncode == 0, text
        stats[name] = _last_json(text)
    assert stats["timed"]["stop_reason"] == "time limit (10 s)"
    assert stats["sized"]["stop_reason"].startswith("size limit") and stats["sized"]["bytes"] >= 150000
    assert stats["signalled"]["stop_reason"].startswith("interrupted")
    assert stats["timed"]["messages"]["/action_chunk"] >= 5, stats
    # the plan and the diagnostics are recorded by default: a recording shows what the policy meant to do
    assert stats["timed"]["messages"]["/policy/predicted_path"] >= 5, stats
    assert stats["timed"]["messages"]["/policy/diagnostics"] >= 5, stats

    # every file is finalised (summary section) and decodes with mcap-ros2-support; bytes = rclpy's CDR
    for name in recorders:
        with open(tmp_path / f"{name}.mcap", "rb") as f:
            reader = make_reader(f, decoder_factories=[DecoderFactory()])
            assert reader.get_header().profile == "ros2"
            summary = reader.get_summary()
            assert summary is not None and summary.statistics.message_count == sum(stats[name]["messages"].values())
            for channel in summary.channels.values():
                schema = summary.schemas[channel.schema_id]
                assert (channel.message_encoding, schema.encoding) == ("cdr", "ros2msg")
                assert schema.name.count("/msg/") == 1
                qos = yaml.safe_load(channel.metadata["offered_qos_profiles"])
                assert qos and {"reliability", "durability", "history", "depth"} <= set(qos[0])
            if name != "timed":
                continue
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
            assert seen == {k: v for k, v in stats["timed"]["messages"].items() if v}

    # conversion: lockstep executes exactly the scheduled actions (nothing held), frames at the step's stamp
    rec_path = tmp_path / "timed.mcap"
    cfg = FromMcapConfig(window=16, stride=8)
    rec = read_recording(rec_path, cfg)
    steps = reconstruct_steps(rec, cfg)
    executed = np.flatnonzero(~steps.held)
    assert len(executed) > 30 and np.all(np.diff(steps.source[executed]) >= 0)  # the newest chunk wins
    for k in executed:  # action i of a chunk is the one due at stamp + (i - start_index + 1) * dt
        c = rec.chunks[steps.source[k]]
        i = c["start_index"] + int(round((steps.stamps[k] + steps.dt - c["stamp"]) / steps.dt)) - 1
        assert np.array_equal(steps.actions[k], c["actions"][i])
    summary = convert_mcap(rec_path, tmp_path / "data.h5", cfg)
    assert summary["segments"] >= 2 and summary["held_steps"] == 0, summary
    import h5py

    with h5py.File(tmp_path / "data.h5") as f:
        demo = f["data/demo_0"]
        assert demo["obs/rgb_static"].shape == (16, 64, 64, 3) and demo["obs/proprio"].shape == (16, 15)
        assert demo["actions"].shape == (16, 7) and demo["obs/states"].shape == (16, 24)
    # behaviour segmentation: one segment per event (random actions do trigger some), or a clear error without any
    rc = _cli("dataset", "from-mcap", str(rec_path), "--out", str(tmp_path / "b.h5"), "--segment", "behaviour",
              "--min-length", "1")
    by_event = segment_ranges(steps, rec.events, FromMcapConfig(segment="behaviour", min_length=1))
    assert all(e - s <= 32 and b for s, e, b in by_event)
    if by_event:  # events before the first recorded chunk's actions are outside every usable run
        assert rc == 0
        with h5py.File(tmp_path / "b.h5") as f:
            assert {f["data"][n].attrs["behavior"] for n in f["data"]} <= {b for _, b in rec.events}
    else:
        assert rc == 2

    # train a tiny dynamics model from it and load it the way the policy node does
    out = tmp_path / "dyn"
    assert _cli("train", "dynamics", "--data", str(tmp_path / "data.h5"), "--camera", "rgb_static", "--out", str(out),
                *TINY) == 0
    train_summary = json.loads((out / "summary.json").read_text())
    assert train_summary["steps"] == 4 and np.isfinite(train_summary["final_train_loss"])
    runner = GuidedPolicyRunner.from_config(RunnerConfig(dynamics_checkpoint=str(out / "dynamics"), embed_tokens=16,
                                                         embed_dim=32, proprio_dim=15, action_dim=7))
    assert runner.expected_embedder_id == train_summary["embedder_id"]
    assert (runner.dynamics.cfg.embed_tokens, runner.dynamics.cfg.embed_dim) == (16, 32)
    images = {"rgb_static": np.zeros((2, 64, 64, 3), np.uint8)}
    tokens = np.zeros((16, 32), np.float32)
    runner.set_guidance_tokens(tokens[None], None, runner.guidance_defaults.retuned(scale=1.0))
    chunk = runner.act(images, np.zeros((2, 15), np.float32), tokens, train_summary["embedder_id"])
    assert chunk.guided and chunk.actions.shape == (16, 7) and np.isfinite(chunk.actions).all()
    runner.close()
    print(f"record {t_record:.1f} s, total {time.monotonic() - t0:.1f} s")


# ------------------------------------------------------------------------------------------ LeRobot
def _lerobot_dataset(root: Path, episodes: int = 3, frames: int = 20):
    from dynaguide.policy.lerobot_adapter import _import_torchvision

    _import_torchvision()
    lerobot_dataset = pytest.importorskip("lerobot.datasets.lerobot_dataset")
    features = {"observation.images.top": {"dtype": "video", "shape": (48, 48, 3),
                                           "names": ["height", "width", "channels"]},
                "observation.state": {"dtype": "float32", "shape": (5,), "names": None},
                "action": {"dtype": "float32", "shape": (4,), "names": None}}
    ds = lerobot_dataset.LeRobotDataset.create("local/tiny", fps=10, root=root, features=features, use_videos=True)
    for ep in range(episodes):
        for i in range(frames):
            ds.add_frame({"observation.images.top": np.full((48, 48, 3), 10 * i + ep, np.uint8),
                          "observation.state": np.full(5, i, np.float32),
                          "action": np.full(4, ep + i / 100, np.float32), "task": f"task {ep % 2}"})
        ds.save_episode()
    ds.finalize()


def _lerobot_policy(out: Path) -> Path:
    """A tiny real LeRobot DiffusionPolicy for that dataset (random weights), saved by LeRobot's save_pretrained."""
    import torch

    from dynaguide.policy.lerobot_adapter import import_lerobot

    import_lerobot()  # the GR00T import workaround (lerobot_adapter's docstring)
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    torch.manual_seed(0)
    config = DiffusionConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (5,)),
                        "observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, 48, 48))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))}, n_obs_steps=2, horizon=8,
        n_action_steps=4, down_dims=(16, 32), kernel_size=3, n_groups=4, diffusion_step_embed_dim=16,
        spatial_softmax_num_keypoints=8, num_inference_steps=5, crop_shape=None, pretrained_backbone_weights=None,
        device="cpu", push_to_hub=False)
    stats = {"observation.state": {"min": torch.zeros(5), "max": torch.full((5,), 19.0)},
             "action": {"min": torch.zeros(4), "max": torch.full((4,), 2.19)},
             "observation.images.top": {"mean": torch.full((3, 1, 1), 0.4), "std": torch.full((3, 1, 1), 0.2)}}
    pre, post = make_diffusion_pre_post_processors(config, dataset_stats=stats)
    for part in (DiffusionPolicy(config), pre, post):
        part.save_pretrained(out)
    return out


def test_lerobot_dataset_episodes_decode_and_train(tmp_path):
    from dynaguide.checkpoint import load_checkpoint
    from dynaguide.datasets_external import ExternalDatasetError, LeRobotKeys, lerobot_episodes
    from dynaguide.runtime import GuidedPolicyRunner, RunnerConfig

    root = tmp_path / "tiny"
    _lerobot_dataset(root)
    demos = list(lerobot_episodes(root, LeRobotKeys(camera="observation.images.top")))
    assert [len(d) for d in demos] == [20, 20, 20] and [d.behavior for d in demos] == ["task 0", "task 1", "task 0"]
    for ep, d in enumerate(demos):  # the frame at each row's timestamp, decoded from the shared video file
        assert np.allclose(d.actions[:, 0], ep + np.arange(20) / 100) and np.allclose(d.proprio[:, 0], np.arange(20))
        means = d.images["observation.images.top"].reshape(20, -1).mean(1)
        assert np.abs(means - (10 * np.arange(20) + ep)).max() < 4.0, means
    with pytest.raises(ExternalDatasetError, match="not a feature"):
        next(lerobot_episodes(root, LeRobotKeys(proprio="observation.joints")))

    # the dynamics model for a LeRobot policy trained on that dataset: its action stats and horizon
    policy_dir = _lerobot_policy(tmp_path / "policy")
    out = tmp_path / "dyn"
    assert _cli("train", "dynamics", "--data", str(root), "--camera", "observation.images.top", "--out", str(out),
                "--segment", "window", "--window", "10", "--stride", "5", "--policy", str(policy_dir),
                "--policy-kind", "lerobot", *TINY) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["segments"] == 9 and (summary["proprio_dim"], summary["action_dim"], summary["horizon"]) == (5, 4, 8)
    model, _ = load_checkpoint(out / "dynamics")
    assert model.cfg.embedder["kind"] == "random" and model.cfg.action_dim == 4
    runner = GuidedPolicyRunner.from_config(RunnerConfig(policy_kind="lerobot", policy_checkpoint=str(policy_dir),
                                                         dynamics_checkpoint=str(out / "dynamics"),
                                                         image_keys=("top",), proprio_dim=5, action_dim=4))
    assert runner.trained  # the runner's action-space check passed: same horizon and action min/max
    assert _cli("train", "dynamics", "--data", str(root), "--out", str(tmp_path / "bad"), "--camera", "nope",
                *TINY) == 2
