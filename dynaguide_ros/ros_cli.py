"""``dynaguide reset`` and ``dynaguide topic list | echo | hz`` — for pip installs, which have no ``ros2`` CLI.

``reset``: ``calvin/reset`` of the sim graph (a new scene from ``--seed``, or the same random stream).
``topic list``: the graph's topics and their types; ``topic echo NAME``: its messages as YAML-like text (long
arrays and image data summarised); ``topic hz NAME``: the receive rate.  Subscriptions take the publishers'
QoS (best effort if any publisher is, transient local if all are), so latched topics such as
``guidance/state`` show their last message.
"""

from __future__ import annotations

import sys
import time

DISCOVERY_S = 3.0
MAX_ITEMS = 8   # array elements printed before "... (N values)"


def _init():
    from dynaguide_ros.ros_env import apply_localhost_defaults

    apply_localhost_defaults()
    import rclpy

    rclpy.init()
    return rclpy, rclpy.create_node("dynaguide_cli")


def _discover(node, rclpy, seconds: float = DISCOVERY_S) -> dict[str, list[str]]:
    """Topics seen after ``seconds`` of discovery, longer (up to twice that) while new ones still appear."""
    start = last_change = time.monotonic()
    seen: set[str] = set()
    while True:  # discovery is asynchronous: let it settle
        rclpy.spin_once(node, timeout_sec=0.1)
        names = {name for name, _ in node.get_topic_names_and_types()}
        now = time.monotonic()
        if names - seen:
            seen |= names
            last_change = now
        if now - start >= 2 * seconds or (now - start >= seconds and now - last_change >= 1.0):
            break
    return {name: types for name, types in node.get_topic_names_and_types()}


def message_text(msg, indent: int = 0) -> str:
    """A readable rendering of a ROS message: fields in order, long sequences summarised."""
    pad = "  " * indent
    if not hasattr(msg, "get_fields_and_field_types"):
        return f"{pad}{msg!r}"
    lines = []
    for field in msg.get_fields_and_field_types():
        value = getattr(msg, field)
        if hasattr(value, "get_fields_and_field_types"):
            lines.append(f"{pad}{field}:")
            lines.append(message_text(value, indent + 1))
            continue
        if isinstance(value, (bytes, bytearray)) or (hasattr(value, "__len__") and not isinstance(value, str)):
            items = list(value)
            if items and hasattr(items[0], "get_fields_and_field_types"):
                lines.append(f"{pad}{field}: ({len(items)} messages)")
                for item in items[:MAX_ITEMS]:
                    lines.append(f"{pad}-")
                    lines.append(message_text(item, indent + 1))
                continue
            shown = ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in items[:MAX_ITEMS])
            more = f", ... ({len(items)} values)" if len(items) > MAX_ITEMS else ""
            lines.append(f"{pad}{field}: [{shown}{more}]")
            continue
        lines.append(f"{pad}{field}: {value:.6g}" if isinstance(value, float) else f"{pad}{field}: {value!r}")
    return "\n".join(lines)


def _subscribe(node, rclpy, topic: str, callback, wait_s: float):
    from dynaguide_ros.recorder import _adapted_qos, _message_class

    name = topic if topic.startswith("/") else "/" + topic
    deadline = time.monotonic() + wait_s
    while True:
        infos = node.get_publishers_info_by_topic(name)
        if infos:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"no publisher of {name} within {wait_s:g} s (`dynaguide topic list` shows the topics)")
        rclpy.spin_once(node, timeout_sec=0.1)
    cls = _message_class(infos[0].topic_type)
    return node.create_subscription(cls, name, callback, _adapted_qos([i.qos_profile for i in infos]))


def run_reset(args) -> int:
    """``dynaguide reset`` with its parsed arguments (:mod:`dynaguide_cli.ros`)."""
    rclpy, node = _init()
    try:
        from dynaguide_msgs.srv import ResetScene
        from dynaguide_ros.guide_cli import call_service

        print(f"waiting up to {args.timeout:g} s for the sim graph (calvin/reset)...", file=sys.stderr, flush=True)
        res = call_service(ResetScene, "calvin/reset", ResetScene.Request(seed=args.seed), args.timeout, node)
    except TimeoutError as exc:
        print(f"dynaguide reset: {exc}", file=sys.stderr)
        return 1
    finally:
        node.destroy_node()
        rclpy.shutdown()
    print(res.message, file=sys.stdout if res.success else sys.stderr)
    return 0 if res.success else 1


def run_topic(args) -> int:
    """``dynaguide topic`` with its parsed arguments (:mod:`dynaguide_cli.ros`)."""
    rclpy, node = _init()
    try:
        if args.action == "list":
            if args.topic:
                print("dynaguide topic list: takes no topic name", file=sys.stderr)
                return 2
            for name, types in sorted(_discover(node, rclpy, args.wait).items()):
                print(f"{name} [{', '.join(types)}]" if args.show_types else name)
            return 0
        if not args.topic:
            print(f"dynaguide topic {args.action}: give a topic name (`dynaguide topic list`)", file=sys.stderr)
            return 2
        stamps: list[float] = []

        def on_message(msg) -> None:
            stamps.append(time.monotonic())
            if args.action == "echo":
                print(message_text(msg) + "\n---", flush=True)

        _subscribe(node, rclpy, args.topic, on_message, args.wait)
        start = last_report = time.monotonic()
        while args.count <= 0 or len(stamps) < args.count:
            rclpy.spin_once(node, timeout_sec=0.1)
            now = time.monotonic()
            if args.duration and now - start > args.duration:
                break
            if args.action == "hz" and now - last_report >= 1.0:
                last_report = now
                recent = [t for t in stamps if t > now - args.window]
                rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
                print(f"average rate: {rate:.2f} Hz over the last {args.window:g} s ({len(stamps)} messages)",
                      flush=True)
        return 0
    except (TimeoutError, ValueError) as exc:
        print(f"dynaguide topic {args.action}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
