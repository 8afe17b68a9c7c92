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

from dynaguide.config import ConfigError, from_dict, unflatten

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


#: parameters every rclpy node understands besides its config dataclass's
STANDARD_PARAMETERS = ("use_sim_time", "start_type_description_service")


def _names(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        out += _names(tp, prefix + f.name + ".") if dataclasses.is_dataclass(tp) else [prefix + f.name]
    return out


def valid_parameters(cls: type) -> list[str]:
    """Every parameter name a node configured by ``cls`` accepts (dotted for nested dataclasses)."""
    return sorted([*_names(cls), *STANDARD_PARAMETERS])


def unknown_parameter_error(node_name: str, unknown: list[str], valid: list[str]) -> str:
    """One line naming the unknown parameter(s), the closest valid name, and every valid one."""
    import difflib

    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"unknown parameter(s) for {node_name}: {', '.join(hints)}; valid: {', '.join(valid)}"


def check_parameters(node_name: str, cls: type, names) -> None:
    """Raise :class:`~dynaguide.config.ConfigError` if any of ``names`` is not a parameter of ``cls``."""
    valid = valid_parameters(cls)
    unknown = sorted(n for n in names if n not in valid and not n.startswith("qos_overrides."))
    if unknown:
        raise ConfigError(unknown_parameter_error(node_name, unknown, valid))


def declare_config(node, cls: type[T]) -> T:
    """Declare every field of ``cls`` as a parameter (default = the dataclass default) and build it.

    Parameters given to the node (parameters file, ``-p``) that ``cls`` does not have are an error naming the
    closest valid one: a misspelt key must never be silently ignored."""
    check_parameters(node.get_name(), cls, getattr(node, "_parameter_overrides", {}).keys())
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
