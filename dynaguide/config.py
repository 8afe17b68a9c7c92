"""Typed configuration: dataclasses loaded from YAML (or dicts), with strict key checking.

Every configurable piece of the stack is a ``@dataclass``; this module is the one place that turns
YAML/JSON mappings into those dataclasses and back.  Unknown keys are an error (a typo in a config
file must never be silently ignored), nested dataclasses are built recursively, and tuples/lists are
converted to the annotated container type.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar
from collections.abc import Mapping

import yaml

from dynaguide.inputs import InputError

T = TypeVar("T")


class ConfigError(InputError):
    """A configuration mapping does not fit its dataclass (unknown key, wrong type, bad file)."""


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {type(value).__name__}")
        return from_dict(tp, value, where=where)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _convert(non_none[0], value, where)
        return value
    if origin in (tuple,):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a sequence, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        if not args:
            return tuple(value)
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin in (list,):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        inner = args[0] if args else Any
        return [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict,):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def check_ranges(obj: Any, ranges: Mapping[str, tuple[float, float]]) -> None:
    """Raise ``ValueError`` unless every attribute named in ``ranges`` is a finite number in ``[low, high]``
    (for a sequence: every item).  Config dataclasses call it in ``__post_init__`` with generous upper bounds,
    so that a file asking for an absurd size (``n_layers: 100000``) is refused before anything is allocated."""
    for name, (low, high) in ranges.items():
        value = getattr(obj, name)
        for v in (value if isinstance(value, (list, tuple)) else (value,)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
                raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")


def from_dict(cls: type[T], data: Mapping[str, Any], where: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys raise :class:`ConfigError`."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def to_dict(obj: Any) -> dict[str, Any]:
    """Dataclass → plain dict of JSON/YAML-friendly values (tuples become lists)."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v
    return plain(obj)


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys → nested mappings: ``{"runner.guidance.scale": 4}`` → ``{"runner": {"guidance": {"scale": 4}}}``
    (how ROS parameter names address nested config dataclasses)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        d = nested
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise ConfigError(f"parameter {key!r} nests under {p!r}, which also has a value")
        d[parts[-1]] = value
    return nested


MAX_YAML_BYTES = 16 * 2**20
"""Largest YAML config read (ours are a few KB)."""

MAX_YAML_NODES = 1_000_000
"""Most values a YAML config may expand to, aliases (``*name``) counted at every use: a "billion laughs" file of
a few hundred bytes expands to 10^9 values when a reader walks it."""


def _expanded_nodes(node: yaml.Node, memo: dict[int, int]) -> int:
    key = id(node)
    if key not in memo:
        memo[key] = 1  # a recursive structure counts once per level
        if isinstance(node, yaml.SequenceNode):
            memo[key] = 1 + sum(_expanded_nodes(child, memo) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[key] = 1 + sum(_expanded_nodes(k, memo) + _expanded_nodes(v, memo) for k, v in node.value)
    return memo[key]


def parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)`` after checking its size and how far its aliases expand (:class:`ConfigError`
    naming ``where`` otherwise)."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(text)} characters, over the {MAX_YAML_BYTES} a config file may have")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None and _expanded_nodes(root, {}) > MAX_YAML_NODES:
            raise ConfigError(f"{where}: its aliases expand to more than {MAX_YAML_NODES} values; write the values "
                              "out instead of nesting aliases")
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"cannot read config {where}: {exc}") from exc


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is ``{}``."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    data = parse_yaml(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_config(cls: type[T], path: str | Path, section: str | None = None) -> T:
    """Load dataclass ``cls`` from a YAML file, optionally from one top-level ``section``."""
    data = load_yaml(path)
    if section is not None:
        if section not in data:
            raise ConfigError(f"{path}: no section {section!r} (have {sorted(data)})")
        data = data[section] or {}
    return from_dict(cls, data, where=f"{path}:{section or cls.__name__}")
