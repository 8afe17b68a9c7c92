"""ROS 2 message definitions as MCAP schemas (``ros2msg`` encoding), and QoS profiles as rosbag2 metadata.

An MCAP file that ``ros2 bag`` (mcap storage plugin) and Foxglove read carries, per channel, a schema whose
``name`` is the type (``sensor_msgs/msg/Image``), ``encoding`` is ``ros2msg`` and ``data`` is the *complete*
message definition in rosbag2's concatenated format: the type's own ``.msg`` text first, then every type it
depends on (recursively, each once, depth first in order of appearance), each preceded by a line of 80 ``=``
and a line ``MSG: <package>/msg/<Type>``::

    std_msgs/Header header
    uint32 height
    ...
    ================================================================================
    MSG: std_msgs/msg/Header
    builtin_interfaces/Time stamp
    string frame_id
    ================================================================================
    MSG: builtin_interfaces/msg/Time
    int32 sec
    uint32 nanosec

The ``.msg`` files come from the ``share/<package>/msg/`` directories of the installed interface packages
(the ROS wheels and our ``dynaguide_msgs`` install them there), found through ``AMENT_PREFIX_PATH`` and the
Python environment's prefix.  No rclpy needed here.
"""

from __future__ import annotations

import os
import re
import sys
from functools import cache
from pathlib import Path

SEPARATOR = "=" * 80
"""rosbag2's delimiter line between the definitions of a concatenated ``ros2msg`` schema."""

PRIMITIVES = frozenset({"bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32",
                        "uint32", "int64", "uint64", "string", "wstring"})

RMW_DURATION_INFINITE = (9223372036, 854775807)
"""``{sec, nsec}`` rosbag2 writes for an infinite QoS duration (deadline, lifespan, lease)."""


class MessageDefinitionError(LookupError):
    """A message type's ``.msg`` file (or one of its dependencies') cannot be found or parsed."""


def normalize_type(type_name: str) -> str:
    """``"sensor_msgs/Image"`` or ``"sensor_msgs/msg/Image"`` → ``"sensor_msgs/msg/Image"``."""
    parts = type_name.strip().split("/")
    if len(parts) == 2:
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or parts[1] != "msg" or not all(parts):
        raise MessageDefinitionError(f"not a message type name (package/msg/Type): {type_name!r}")
    return "/".join(parts)


def _share_roots() -> list[Path]:
    roots = [Path(p) / "share" for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    roots += [Path(sys.prefix) / "share", Path(sys.base_prefix) / "share"]
    seen, out = set(), []
    for r in roots:
        if r not in seen and r.is_dir():
            seen.add(r)
            out.append(r)
    return out


@cache
def msg_file(type_name: str) -> Path:
    """The installed ``.msg`` file of ``type_name`` (raises :class:`MessageDefinitionError` if none)."""
    pkg, _, name = normalize_type(type_name).split("/")
    for root in _share_roots():
        candidate = root / pkg / "msg" / f"{name}.msg"
        if candidate.is_file():
            return candidate
    raise MessageDefinitionError(f"no {pkg}/msg/{name}.msg under {[str(r) for r in _share_roots()]} "
                                 "(is the interface package installed? set AMENT_PREFIX_PATH)")


_FIELD_TYPE = re.compile(r"^\s*([A-Za-z][\w/]*)")


def field_types(text: str, package: str) -> list[str]:
    """Non-primitive field types a ``.msg`` text uses, in order, as ``pkg/msg/Type`` (a bare ``Type`` is the
    same package's).  Constants (``uint8 FOO=1``) and comments are skipped; array and bound suffixes
    (``[]``, ``[3]``, ``[<=5]``, ``string<=10``) are stripped."""
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _FIELD_TYPE.match(line)
        if not m:
            continue
        base = m.group(1)
        tokens = line.split()
        if len(tokens) >= 2 and "=" in tokens[1]:  # a constant: "type NAME=value"
            continue
        if base in PRIMITIVES:
            continue
        full = normalize_type(base if "/" in base else f"{package}/{base}")
        if full not in out:
            out.append(full)
    return out


@cache
def message_definition(type_name: str) -> str:
    """The complete ``ros2msg`` definition of ``type_name`` in rosbag2's concatenated format (module docstring)."""
    top = normalize_type(type_name)
    order: list[str] = []
    texts: dict[str, str] = {}

    def visit(t: str) -> None:
        if t in texts:
            return
        try:
            texts[t] = msg_file(t).read_text()
        except OSError as exc:
            raise MessageDefinitionError(f"cannot read the definition of {t}: {exc}") from exc
        order.append(t)
        for dep in field_types(texts[t], t.split("/")[0]):
            visit(dep)

    visit(top)
    parts = [texts[top].rstrip("\n")]
    for dep in order[1:]:
        parts.append(f"{SEPARATOR}\nMSG: {dep}\n{texts[dep].rstrip(chr(10))}")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------- QoS → YAML
def _duration(ns: int | None) -> dict[str, int]:
    if ns is None or ns <= 0 or ns >= RMW_DURATION_INFINITE[0] * 10**9:
        sec, nsec = RMW_DURATION_INFINITE if ns is None or ns > 0 else (0, 0)
        return {"sec": sec, "nsec": nsec}
    return {"sec": ns // 10**9, "nsec": ns % 10**9}


def qos_to_dict(qos) -> dict:
    """An rclpy ``QoSProfile`` → the mapping rosbag2 (Jazzy and later) writes in ``offered_qos_profiles``."""
    def policy(value) -> str:
        name = getattr(value, "name", str(value))
        return name.lower()

    def dur(value) -> dict[str, int]:
        ns = getattr(value, "nanoseconds", None)
        return _duration(None if ns is None else int(ns))

    return {"history": policy(qos.history), "depth": int(qos.depth), "reliability": policy(qos.reliability),
            "durability": policy(qos.durability), "deadline": dur(qos.deadline), "lifespan": dur(qos.lifespan),
            "liveliness": policy(qos.liveliness), "liveliness_lease_duration": dur(qos.liveliness_lease_duration),
            "avoid_ros_namespace_conventions": bool(qos.avoid_ros_namespace_conventions)}


def qos_profiles_yaml(profiles) -> str:
    """A list of rclpy ``QoSProfile`` (the publishers' offered QoS) → rosbag2's ``offered_qos_profiles`` YAML."""
    import yaml

    return yaml.safe_dump([qos_to_dict(q) for q in profiles], sort_keys=False)
