"""Recordings without ROS: message definitions in rosbag2's format, `dynaguide dataset from-mcap` refusing bad
input with a reason, and segmenting the control steps by fixed windows or by behaviour events.

The whole path over real DDS (record the sim graph, convert, train, load): ``test_ros_recording.py``.
"""

from __future__ import annotations

import numpy as np
import pytest


def _cli(*args: str) -> int:
    from dynaguide_cli.main import main

    return main(list(args))


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
