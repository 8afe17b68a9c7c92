"""Typed node parameters: one dataclass per node, declared as ROS parameters field by field.

The YAML files in ``config/`` are standard ROS 2 parameter files (``node: ros__parameters: ...``), so
the same file serves ``ros2 launch`` and the pip launcher; the node turns its parameters into its
config dataclass through :func:`dynaguide.config.from_dict` (unknown or mistyped values fail loudly).
Nested dataclasses map to dotted parameter names (``guidance.scale``).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from dynaguide.config import from_dict, unflatten

T = TypeVar("T")


def _flatten(cls: type, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(tp):
            out.update(_flatten(tp, prefix + f.name + "."))
        else:
            out[prefix + f.name] = list(value) if isinstance(value, tuple) else value
    return out


def declare_config(node, cls: type[T]) -> T:
    """Declare every field of ``cls`` as a parameter (default = the dataclass default) and build it."""
    values = {}
    for name, default in _flatten(cls).items():
        if default is None:
            default = ""
        param = node.declare_parameter(name, default)
        value = param.value
        if isinstance(default, list) and value is not None:
            value = list(value)
        values[name] = value
    nested = unflatten(values)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # "" stands for None in ROS parameters
        if nested.get(f.name) == "" and "None" in str(hints[f.name]):
            nested[f.name] = None
    return from_dict(cls, nested)
