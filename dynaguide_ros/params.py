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

from dynaguide.config import from_dict

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


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        d = nested
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value
    return nested


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
    nested = _nest(values)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # "" stands for None in ROS parameters
        if nested.get(f.name) == "" and "None" in str(hints[f.name]):
            nested[f.name] = None
    return from_dict(cls, nested)
