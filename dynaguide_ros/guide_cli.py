"""``dynaguide guide`` — call ``/set_guidance`` (or ``/clear_guidance``) from the command line.

The pip-side equivalent of ``ros2 service call /set_guidance dynaguide_msgs/srv/SetGuidance ...``::

    dynaguide guide --positive open1.png open2.png --negative close.png --scale 1.5
    dynaguide guide --clear
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3) uint8`` RGB (PNG/JPEG via Pillow)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot read image {path}: {exc}") from exc


def call_service(srv_type, name: str, request, timeout: float, node=None):
    """Call service ``name`` once and return its response (raises ``TimeoutError``)."""
    import rclpy

    from dynaguide_ros.qos import service_qos

    own = node is None
    if own:
        node = rclpy.create_node("dynaguide_guide_cli")
    # a deep response queue: a client's reader also sees the replies to other callers, and a burst of
    # them must not push this call's reply out before it is taken
    client = node.create_client(srv_type, name, qos_profile=service_qos())
    try:
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"/{name} is not available (is the graph running?)")
        future = client.call_async(request)
        rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
        if future.result() is None:
            raise TimeoutError(f"/{name} did not answer in time")
        return future.result()
    finally:
        node.destroy_client(client)
        if own:
            node.destroy_node()


def call_set_guidance(positive: list[np.ndarray], negative: list[np.ndarray], scale: float | None = None,
                      sigma: float = 0.0, stochastic_steps: int = 0, timeout: float = 60.0, node=None):
    """Send one ``SetGuidance`` request with ``(H, W, 3) uint8`` RGB goal images; returns the response.

    ``scale``: the guidance scale s; ``None`` keeps the one in force (the manager's default when none is),
    ``0`` asks for no guidance (unguided chunks, the goals stored).  ``sigma`` / ``stochastic_steps``: 0 keeps.
    """
    from dynaguide_msgs.srv import SetGuidance
    from dynaguide_ros.conversions import rgb_to_image_msg

    req = SetGuidance.Request(positive=[rgb_to_image_msg(x) for x in positive],
                              negative=[rgb_to_image_msg(x) for x in negative],
                              scale=0.0 if scale is None else float(scale), set_scale=scale is not None,
                              sigma=float(sigma), stochastic_steps=int(stochastic_steps))
    return call_service(SetGuidance, "set_guidance", req, timeout, node)


def call_clear_guidance(timeout: float = 30.0, node=None):
    from std_srvs.srv import Trigger

    return call_service(Trigger, "clear_guidance", Trigger.Request(), timeout, node)


def _run(args) -> int:
    from dynaguide_ros.ros_env import apply_localhost_defaults

    apply_localhost_defaults()
    import rclpy

    rclpy.init()
    try:
        if args.clear:
            res = call_clear_guidance(args.timeout)
        else:
            if not args.positive and not args.negative:
                print("give --positive and/or --negative images, or --clear", file=sys.stderr)
                return 2
            res = call_set_guidance([load_rgb(p) for p in args.positive], [load_rgb(p) for p in args.negative],
                                    args.scale, args.sigma, args.stochastic_steps, args.timeout)
    except TimeoutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        rclpy.shutdown()
    print(("ok: " if res.success else "rejected: ") + res.message)
    return 0 if res.success else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("guide", help="set (or clear) the goal images steering the policy")
    p.add_argument("--positive", nargs="*", default=[], help="images of desired outcomes")
    p.add_argument("--negative", nargs="*", default=[], help="images of undesired outcomes")
    p.add_argument("--scale", type=float, default=None,
                   help="guidance scale s (default: keep the current one; 0 = no guidance, unguided chunks)")
    p.add_argument("--sigma", type=float, default=0.0, help="distance temperature (0 = keep current)")
    p.add_argument("--stochastic-steps", type=int, default=0, help="M (0 = keep current)")
    p.add_argument("--clear", action="store_true", help="remove guidance: run the base policy")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=_run)
