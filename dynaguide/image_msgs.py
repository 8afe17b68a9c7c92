"""Decoding ``sensor_msgs/Image`` content into RGB arrays, without ROS.

The message may be a rclpy message or one decoded from an MCAP recording (``mcap-ros2-support``): anything
with the fields ``encoding``, ``height``, ``width``, ``step`` and ``data``.  :mod:`dynaguide_ros.conversions`
uses these for live messages, :mod:`dynaguide.recordings` for recorded ones.
"""

from __future__ import annotations

import numpy as np

from dynaguide.text import short_repr

#: encodings accepted for goal and camera images: name -> (channels, channel order)
SUPPORTED_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


class MessageError(ValueError):
    """A message's content is malformed (size mismatch, unknown encoding, non-finite values...)."""


def rgb_from_image_msg(msg, max_side: int = 4096, min_side: int = 1) -> np.ndarray:
    """``sensor_msgs/Image`` (rgb8, bgr8, rgba8, bgra8, mono8) → ``(H, W, 3) uint8`` RGB.

    Raises :class:`MessageError` naming the problem: unknown encoding, zero or oversized dimensions,
    ``step`` smaller than a row, data length not equal to ``height * step``.
    """
    enc = msg.encoding.lower()
    if enc not in SUPPORTED_ENCODINGS:
        raise MessageError(f"unsupported encoding {short_repr(msg.encoding)} "
                           f"(supported: {', '.join(SUPPORTED_ENCODINGS)})")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h < min_side or w < min_side:
        raise MessageError(f"image is {w}x{h}: each side must be at least {min_side} px")
    if h > max_side or w > max_side:
        raise MessageError(f"image is {w}x{h}: each side must be at most {max_side} px")
    channels = SUPPORTED_ENCODINGS[enc]
    if step < w * channels:
        raise MessageError(f"step {step} is smaller than width*channels = {w * channels} for {enc}")
    if len(msg.data) != h * step:
        raise MessageError(f"data has {len(msg.data)} bytes but height*step = {h}*{step} = {h * step}")
    buf = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, step)[:, : w * channels].reshape(h, w, channels)
    if enc == "mono8":
        return np.repeat(buf, 3, axis=2)
    if enc.startswith("bgr"):
        buf = buf[:, :, 2::-1]
    return np.ascontiguousarray(buf[:, :, :3])
