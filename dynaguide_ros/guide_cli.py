"""``dynaguide guide`` — call ``/set_guidance`` (or ``/clear_guidance``) from the command line.

The pip-side equivalent of ``ros2 service call /set_guidance dynaguide_msgs/srv/SetGuidance ...``::

    dynaguide guide --positive open1.png open2.png --negative close.png --scale 1.5
    dynaguide guide --scale 10          # retune s (or --sigma, --stochastic-steps): the goal images in force stay
    dynaguide guide --clear

Images larger than :data:`MAX_GOAL_SIDE` are downsized here (the embedders use 64-224 px), so a phone photo
works.  Contradictory flags (``--clear`` with images or values) are refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


MAX_GOAL_SIDE = 512
"""Goal images are downsized to at most this many pixels a side before sending (aspect ratio kept)."""

DEFAULT_TIMEOUT_S = 10.0


class GuideError(ValueError):
    """A user mistake on the command line: one line, exit code 2."""


def load_rgb(path: str | Path, max_side: int | None = MAX_GOAL_SIDE) -> np.ndarray:
    """Read an image file as ``(H, W, 3) uint8`` RGB (PNG/JPEG via Pillow), downsized to ``max_side``."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            im = im.convert("RGB")
            if max_side and max(im.size) > max_side:
                im.thumbnail((max_side, max_side), PILImage.Resampling.LANCZOS)
            import numpy as np

            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise GuideError(f"cannot read image {path}: {exc}") from exc


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


def check_args(args) -> None:
    """Raise :class:`GuideError` for contradictory or meaningless flags."""
    values = [f for f, v in (("--scale", args.scale is not None), ("--sigma", bool(args.sigma)),
                             ("--stochastic-steps", bool(args.stochastic_steps))) if v]
    images = [f for f, v in (("--positive", args.positive), ("--negative", args.negative)) if v]
    if args.clear and (values or images):
        raise GuideError(f"--clear removes the guidance; it cannot be combined with {', '.join(images + values)}")
    if not (args.clear or values or images):
        raise GuideError("give goal images (--positive/--negative), a value to retune the guidance in force "
                         "(--scale/--sigma/--stochastic-steps), or --clear")
    import numpy as np

    checked = (("--scale", args.scale), ("--sigma", args.sigma), ("--stochastic-steps", args.stochastic_steps))
    for flag, value in checked:
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise GuideError(f"{flag} must be a finite number >= 0, got {value}")


def run_guide(args) -> int:
    """``dynaguide guide`` with its parsed arguments (:mod:`dynaguide_cli.ros`)."""
    from dynaguide_ros.ros_env import apply_localhost_defaults

    try:
        check_args(args)
        positive, negative = [load_rgb(p) for p in args.positive], [load_rgb(p) for p in args.negative]
    except GuideError as exc:
        print(f"dynaguide guide: {exc}", file=sys.stderr)
        return 2
    apply_localhost_defaults()
    import rclpy

    rclpy.init()
    print(f"waiting up to {args.timeout:g} s for the graph (/set_guidance; start it with "
          "`dynaguide launch calvin_sim` or `dynaguide demo`)...", file=sys.stderr, flush=True)
    try:
        if args.clear:
            res = call_clear_guidance(args.timeout)
        else:
            res = call_set_guidance(positive, negative, args.scale, args.sigma, args.stochastic_steps, args.timeout)
    except TimeoutError as exc:
        print(f"dynaguide guide: {exc}", file=sys.stderr)
        return 1
    finally:
        rclpy.shutdown()
    if not res.success:  # the manager's message already says "rejected: ..."
        print(res.message, file=sys.stderr)
        return 1
    print(f"ok: {res.message}")
    return 0
