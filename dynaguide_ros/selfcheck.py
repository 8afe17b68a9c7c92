"""``dynaguide interfaces serve|check`` — prove the interfaces work between two processes over DDS.

``serve`` echoes every ``ActionChunk`` it receives on ``chunk_in`` back on ``chunk_echo`` and answers
``set_guidance`` with a SHA-256 digest of every image it received.  ``check`` (another process) sends
random chunks and a ``SetGuidance`` request with many images, and verifies that everything came back
bit for bit.  It prints one JSON line with timings and exits non-zero on any mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

import numpy as np


def images_digest(images) -> str:
    h = hashlib.sha256()
    for im in images:
        h.update(f"{im.height}x{im.width}x{im.step}:{im.encoding}:".encode())
        h.update(bytes(im.data))
    return h.hexdigest()


def serve(args: argparse.Namespace) -> int:
    """``dynaguide interfaces serve``."""
    from rclpy.node import Node

    from dynaguide_msgs.msg import ActionChunk
    from dynaguide_msgs.srv import SetGuidance
    from dynaguide_ros.node_main import spin_node

    class EchoNode(Node):
        def __init__(self) -> None:
            super().__init__("dynaguide_interface_echo")
            self._pub = self.create_publisher(ActionChunk, "chunk_echo", 200)
            self.create_subscription(ActionChunk, "chunk_in", self._pub.publish, 200)
            self.create_service(SetGuidance, "set_guidance", self._on_set)
            self.get_logger().info("echo ready")

        def _on_set(self, request, response):
            response.success = True
            response.num_positive = len(request.positive)
            response.num_negative = len(request.negative)
            response.message = images_digest(list(request.positive) + list(request.negative))
            return response

    return spin_node(EchoNode, argv=args.ros_args)


def check(args: argparse.Namespace) -> int:
    """``dynaguide interfaces check``."""
    from dynaguide_ros.ros_env import apply_localhost_defaults

    apply_localhost_defaults()
    import rclpy
    from rclpy.node import Node

    from dynaguide_msgs.msg import ActionChunk
    from dynaguide_msgs.srv import SetGuidance
    from dynaguide_ros.conversions import chunk_from_msg, chunk_to_msg, rgb_to_image_msg

    rng = np.random.default_rng(args.seed)
    rclpy.init()
    node = Node("dynaguide_interface_check")
    received: list = []
    node.create_subscription(ActionChunk, "chunk_echo", received.append, 200)
    pub = node.create_publisher(ActionChunk, "chunk_in", 200)
    client = node.create_client(SetGuidance, "set_guidance")
    report: dict = {"ok": False}
    try:
        deadline = time.monotonic() + args.timeout
        while not client.wait_for_service(timeout_sec=0.2):
            if time.monotonic() > deadline:
                raise TimeoutError("set_guidance service did not appear")
        while pub.get_subscription_count() == 0 or node.count_publishers("chunk_echo") == 0:
            rclpy.spin_once(node, timeout_sec=0.05)
            if time.monotonic() > deadline:
                raise TimeoutError("echo node's topics did not match")
        sent = []
        for seq in range(args.chunks):
            actions = rng.standard_normal((16, 7)).astype(np.float32)
            msg = chunk_to_msg(actions, "calvin_rel_ee", node.get_clock().now().to_msg(), 1 / 30,
                               start_index=1, sequence=seq, guided=bool(seq % 2))
            sent.append(msg)
            pub.publish(msg)
        while len(received) < len(sent) and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        if len(received) != len(sent):
            raise AssertionError(f"sent {len(sent)} chunks, {len(received)} came back")
        for a, b in zip(sent, received):
            if not (np.array_equal(chunk_from_msg(a), chunk_from_msg(b)) and a.header == b.header
                    and (a.sequence, a.guided, a.start_index, a.action_space)
                    == (b.sequence, b.guided, b.start_index, b.action_space)):
                raise AssertionError(f"chunk {a.sequence} changed in transit")
        images = [rgb_to_image_msg(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
                  for _ in range(args.images)]
        request = SetGuidance.Request(positive=images[: args.images // 2], negative=images[args.images // 2:])
        t0 = time.perf_counter()
        future = client.call_async(request)
        rclpy.spin_until_future_complete(node, future, timeout_sec=args.timeout)
        call_ms = (time.perf_counter() - t0) * 1e3
        response = future.result()
        if response is None:
            raise TimeoutError("set_guidance call timed out")
        if response.message != images_digest(images):
            raise AssertionError("image content changed in transit")
        report = {"ok": True, "chunks": len(sent), "images": len(images), "image_size": args.size,
                  "set_guidance_call_ms": round(call_ms, 2)}
    except (AssertionError, TimeoutError) as exc:
        report = {"ok": False, "error": str(exc)}
    finally:
        node.destroy_node()
        rclpy.shutdown()
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1
