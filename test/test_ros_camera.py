"""camera_node publishes an image directory over DDS, resized, with camera_info."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.ros


def test_camera_node_streams_image_directory(start_process, tmp_path):
    import cv2
    import rclpy
    from sensor_msgs.msg import CameraInfo, Image

    from dynaguide_ros.conversions import rgb_from_image_msg
    from dynaguide_ros.qos import SENSOR

    frames = tmp_path / "frames"
    frames.mkdir()
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i, c in enumerate(colours):
        cv2.imwrite(str(frames / f"{i:03d}.png"), np.full((60, 80, 3), c[::-1], np.uint8))  # BGR on disk
    proc = start_process("camera", "node", "camera_node", "--ros-args", "-p", f"source:={frames}",
                         "-p", "rate_hz:=20.0", "-p", "width:=32", "-p", "height:=24")
    proc.wait_for_log("camera node ready", timeout=60)
    rclpy.init()
    node = rclpy.create_node("camera_probe")
    images, infos = [], []
    node.create_subscription(Image, "image_raw", images.append, SENSOR)
    node.create_subscription(CameraInfo, "camera_info", infos.append, SENSOR)
    deadline = time.monotonic() + 30
    while len(images) < 6 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_node()
    rclpy.shutdown()
    assert len(images) >= 6, proc.log()
    rgbs = [rgb_from_image_msg(m) for m in images]
    assert all(r.shape == (24, 32, 3) for r in rgbs)
    seen = {tuple(int(v) for v in r[12, 16]) for r in rgbs}
    assert seen == set(colours)          # every file, RGB order preserved
    assert infos and infos[-1].width == 32 and infos[-1].height == 24
