"""Typed node parameters: one dataclass per node, declared as ROS parameters field by field.

The YAML files in ``config/`` are standard ROS 2 parameter files (``node: ros__parameters: ...``), so
the same file serves ``ros2 launch`` and the pip launcher; the node turns its parameters into its
config dataclass through :func:`dynaguide.config.from_dict` (unknown or mistyped values fail loudly).
Nested dataclasses map to dotted parameter names (``guidance.scale``).
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
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


# ------------------------------------------------------------------------------ parameter files, before launch
#: node executables whose parameter files are *not* checked before launch: the ARX5 driver declares its parameters
#: by hand rather than through one config dataclass (:func:`declare_config`); every other executable of
#: :data:`dynaguide_ros.graphs.NODE_CONFIGS` is checked before any process starts
UNCHECKED_BEFORE_LAUNCH = ("arx5_driver",)
ROS_STANDARD_PARAMETERS = ("use_sim_time",)
"""Parameters every rclpy node declares itself."""


def _ros_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        kinds = {_ros_type(v) for v in value}
        return f"array of {kinds.pop()}" if len(kinds) == 1 else ("array" if not kinds else "mixed array")
    return type(value).__name__


def _flat_parameters(section: Any, where: str, prefix: str = "") -> dict[str, Any]:
    """``ros__parameters`` (nested mappings allowed, as ROS reads them) → ``{dotted name: value}``."""
    from dynaguide.config import ConfigError

    if not isinstance(section, dict):
        raise ConfigError(f"{where}: ros__parameters must be a mapping, got {type(section).__name__}")
    out: dict[str, Any] = {}
    for key, value in section.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat_parameters(value, where, name + "."))
        else:
            out[name] = value
    return out


def check_params_files(graph: str, files: list[str | Path], overrides: dict[str, dict[str, Any]] | None = None
                       ) -> None:
    """Check the ROS parameter files of ``graph`` (layered in order, then ``overrides``: ``{node: {param:
    value}}``) against each node's config dataclass as the node will read them: unknown parameters, values of
    another ROS type than the declared default (rclpy refuses them and the node dies at start) and values the
    dataclass refuses all raise :class:`~dynaguide.config.ConfigError` naming the file, node and parameter."""
    from dynaguide.config import ConfigError, load_yaml
    from dynaguide_ros.graphs import GRAPHS, NODE_CONFIGS, config_class, real_arm_refusal

    spec = GRAPHS[graph]
    merged: dict[str, dict[str, tuple[Any, str]]] = {}   # node -> param -> (value, where it was set)
    for file in files:
        data = load_yaml(file)
        for section, body in data.items():
            node = str(section).lstrip("/")
            if not isinstance(body, dict) or set(body) - {"ros__parameters"}:
                raise ConfigError(f"{file}: section {section!r} must hold only 'ros__parameters' (ROS parameter "
                                  "file layout: NODE: {ros__parameters: {...}})")
            params = _flat_parameters(body.get("ros__parameters") or {}, f"{file}: {section}")
            targets = [n.name for n in spec.nodes] if node == "**" else [node]
            for target in targets:
                merged.setdefault(target, {}).update({k: (v, str(file)) for k, v in params.items()})
    for node, params in (overrides or {}).items():
        merged.setdefault(node, {}).update({k: (v, "--set") for k, v in params.items()})
    names = {n.name: n for n in spec.nodes}
    for node, params in merged.items():
        if node not in names:
            where = next(iter(params.values()))[1] if params else "parameters"
            raise ConfigError(f"{where}: unknown node(s) [{node!r}]: no node {node!r} in graph {graph!r} "
                              f"(nodes: {sorted(names)})")
    refusal = real_arm_refusal({n: {k: v for k, (v, _) in p.items()} for n, p in merged.items()})
    if refusal:   # before the nodes' own checks: driving the real arm unsafely is the first thing to refuse
        raise ConfigError(refusal)
    for node_name, node_spec in names.items():
        if (node_spec.executable not in NODE_CONFIGS or node_spec.executable in UNCHECKED_BEFORE_LAUNCH
                or node_name not in merged):
            continue
        cls = config_class(node_spec.executable)
        declared = _flatten(cls)
        values: dict[str, Any] = {}
        for name, (value, where) in merged[node_name].items():
            if name in ROS_STANDARD_PARAMETERS:
                continue
            if name not in declared:
                close = min(declared, key=lambda d: _distance(d, name)) if declared else None
                hint = f" (did you mean {close!r}?)" if close else ""
                raise ConfigError(f"{where}: {node_name}: unknown parameter {name!r}{hint}; "
                                  f"valid: {', '.join(sorted(declared))}")
            default = "" if declared[name] is None else declared[name]
            want, got = _ros_type(default), _ros_type(value)
            if want != got and not (isinstance(default, list) and isinstance(value, list) and not default):
                raise ConfigError(f"{where}: {node_name}: parameter {name!r} is {got} {value!r}, but the node "
                                  f"declares it as {want} (e.g. {default!r}); ROS would refuse it at start")
            values[name] = value
        full = {**{k: ("" if v is None else v) for k, v in declared.items()}, **values}
        nested = unflatten(full)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if nested.get(f.name) == "" and "None" in str(hints[f.name]):
                nested[f.name] = None
        sources = ", ".join(sorted({w for _, w in merged[node_name].values()}))
        from_dict(cls, nested, where=f"{sources}: {node_name}")  # ConfigError naming the value the node refuses


def _distance(a: str, b: str) -> int:
    """Edit distance (for 'did you mean' hints)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def check_launch_arguments(args) -> None:
    """``dynaguide launch``'s parameter files and ``--set`` overrides, checked before any node starts."""
    from dynaguide_ros.graphs import GRAPHS
    from dynaguide_ros.paths import config_path

    files = [Path(args.params_file)] if args.params_file else \
        [config_path(name) for name in GRAPHS[args.graph].params_files]
    import yaml

    overrides: dict[str, dict[str, Any]] = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        node, dot, param = key.partition(".")
        if sep and dot:
            overrides.setdefault(node, {})[param] = yaml.safe_load(value)
    check_params_files(args.graph, files, overrides)
