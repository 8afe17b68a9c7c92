"""Client-supplied strings are cut before they are echoed in errors and logs."""

from __future__ import annotations

import numpy as np
import pytest


def test_client_strings_are_cut_before_they_are_echoed():
    from dynaguide.text import clip_text, short_repr

    assert short_repr("rgb16") == "'rgb16'" and clip_text("abc") == "abc"
    huge = "x" * 1_000_000
    assert len(short_repr(huge)) < 100 and "1000000 chars" in short_repr(huge)
    assert len(clip_text(huge, 10)) < 40


def test_conversion_and_executor_errors_do_not_echo_megabytes():
    from sensor_msgs.msg import Image

    from arx5_driver.chunk_executor import ChunkExecutor, ExecutorChunk
    from dynaguide_ros.conversions import MessageError, rgb_from_image_msg

    huge = "e" * 1_000_000
    with pytest.raises(MessageError) as exc:
        rgb_from_image_msg(Image(height=2, width=2, encoding=huge, step=6, data=bytes(12)))
    assert len(str(exc.value)) < 300
    executor = ChunkExecutor.__new__(ChunkExecutor)  # only the frame check: no kinematics needed
    executor.base_frame, executor.tool_frame = "base_link", "eef_link"
    with pytest.raises(ValueError) as exc:
        executor._ee_delta_to_joints(np.zeros((1, 7)), np.zeros(6), "f" * 1_000_000)
    assert len(str(exc.value)) < 300
    del ExecutorChunk
