"""``camera_node`` — publishes ``image_raw`` (sensor_msgs/Image, sensor-data QoS) and ``camera_info``.

Sources (parameter ``source``): ``device:N`` or ``/dev/videoN`` (OpenCV/V4L2, e.g. a GoPro behind a
capture card as in UMI), a video file, a directory of images (played in name order, looping), or
``test_pattern`` (synthetic moving colour bars, 640 x 480: a dry run of a graph without a camera).
Optional centre crop to a square and resize.  A source that fails to deliver is retried; the node
never dies on a bad frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image

from dynaguide_ros.conversions import rgb_to_image_msg
from dynaguide_ros.params import declare_config
from dynaguide_ros.qos import SENSOR

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
TEST_PATTERN = "test_pattern"


def test_pattern_frame(i: int, width: int = 640, height: int = 480) -> np.ndarray:
    """Frame ``i`` of the synthetic source: eight colour bars scrolling one pixel per frame."""
    bars = np.array([[255, 255, 255], [255, 255, 0], [0, 255, 255], [0, 255, 0], [255, 0, 255], [255, 0, 0],
                     [0, 0, 255], [0, 0, 0]], dtype=np.uint8)
    cols = ((np.arange(width) + i) * len(bars) // width) % len(bars)
    return np.ascontiguousarray(np.broadcast_to(bars[cols][None], (height, width, 3)))


@dataclass
class CameraNodeConfig:
    source: str = "device:0"
    rate_hz: float = 10.0
    width: int = 0                 # 0 = keep the source size
    height: int = 0
    center_crop_square: bool = False
    loop: bool = True
    frame_id: str = "camera"
    fov_deg: float = 69.0          # horizontal field of view, for camera_info


class FrameSource:
    """Yields ``(H, W, 3) uint8`` RGB frames from a device, a video file or an image directory."""

    def __init__(self, source: str, loop: bool = True) -> None:
        self.source, self.loop = source, loop
        self.files: list[Path] = []
        self.index = 0
        self.cap = None
        self.pattern = source == TEST_PATTERN
        path = Path(source)
        if self.pattern:
            pass
        elif path.is_dir():
            self.files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.files:
                raise ValueError(f"image directory {source} contains no images")
        elif source.startswith("device:") or source.startswith("/dev/video") or path.is_file():
            target = int(source.split(":", 1)[1]) if source.startswith("device:") else source
            self.cap = cv2.VideoCapture(target)
            if not self.cap.isOpened():
                raise ValueError(f"cannot open camera/video source {source!r}")
        else:
            raise ValueError(f"camera source {source!r} is neither a device, a video file, an image directory nor "
                             f"{TEST_PATTERN!r}")

    def read(self) -> np.ndarray | None:
        if self.pattern:
            self.index += 1
            return test_pattern_frame(self.index)
        if self.files:
            if self.index >= len(self.files):
                if not self.loop:
                    return None
                self.index = 0
            bgr = cv2.imread(str(self.files[self.index]), cv2.IMREAD_COLOR)
            self.index += 1
        else:
            ok, bgr = self.cap.read()
            if not ok and self.loop and Path(self.source).is_file():
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, bgr = self.cap.read()
            if not ok:
                return None
        return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()


def prepare_frame(rgb: np.ndarray, cfg: CameraNodeConfig) -> np.ndarray:
    if cfg.center_crop_square:
        h, w = rgb.shape[:2]
        s = min(h, w)
        rgb = rgb[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    if cfg.width > 0 and cfg.height > 0:
        rgb = cv2.resize(rgb, (cfg.width, cfg.height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


class CameraNode(Node):
    def __init__(self) -> None:
        super().__init__("camera_node")
        self.cfg = declare_config(self, CameraNodeConfig)
        self.source = FrameSource(self.cfg.source, self.cfg.loop)
        self.image_pub = self.create_publisher(Image, "image_raw", SENSOR)
        self.info_pub = self.create_publisher(CameraInfo, "camera_info", SENSOR)
        self.create_timer(1.0 / self.cfg.rate_hz, self._tick)
        self.get_logger().info(f"camera node ready ({self.cfg.source} at {self.cfg.rate_hz} Hz)")

    def _tick(self) -> None:
        rgb = self.source.read()
        if rgb is None:
            self.get_logger().warning(f"no frame from {self.cfg.source}", throttle_duration_sec=5.0)
            return
        rgb = prepare_frame(rgb, self.cfg)
        stamp = self.get_clock().now().to_msg()
        self.image_pub.publish(rgb_to_image_msg(rgb, stamp=stamp, frame_id=self.cfg.frame_id))
        h, w = rgb.shape[:2]
        f = 0.5 * w / np.tan(np.radians(self.cfg.fov_deg) / 2)
        info = CameraInfo(height=h, width=w, distortion_model="plumb_bob", d=[0.0] * 5,
                          k=[f, 0.0, w / 2, 0.0, f, h / 2, 0.0, 0.0, 1.0],
                          r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
                          p=[f, 0.0, w / 2, 0.0, 0.0, f, h / 2, 0.0, 0.0, 0.0, 1.0, 0.0])
        info.header.stamp, info.header.frame_id = stamp, self.cfg.frame_id
        self.info_pub.publish(info)

    def destroy_node(self) -> None:
        if getattr(self, "source", None) is not None:  # None when the constructor failed before opening it
            self.source.close()
        super().destroy_node()


def main(argv=None) -> int:
    from dynaguide_ros.node_main import spin_node

    return spin_node(CameraNode, argv)
