"""The packages are layers and every import runs downward:

    dynaguide (method, models, data formats, execution; no ROS, no simulator)
      → calvin_bridge (the simulated play table; no ROS)
        → dynaguide_experiments (BlockTouch, the CALVIN harness and pipeline)
          → dynaguide_ros (every ROS 2 node, message conversions, recording)
            → dynaguide_cli (the ``dynaguide`` command)

``arx5_driver`` is the real arm's driver: its core is ROS-free and uses only ``dynaguide``; its node
(``arx5_driver.node``) is the edge that uses ``dynaguide_ros``.

Two checks.  Statically, every ``import`` / ``from ... import`` statement of a package's source, at any depth
(lazy imports inside functions included), names no higher layer.  Dynamically, each package's modules are
imported in a fresh interpreter in which the higher layers (and ROS, below ``dynaguide_ros``) cannot be imported,
so an upward import through a name string (``importlib.import_module``) or through a third module fails too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: lowest first; a package may import the ones before it, never the ones after it
LAYERS = ("dynaguide", "calvin_bridge", "dynaguide_experiments", "dynaguide_ros", "dynaguide_cli")

#: top-level modules of ROS 2 (rclpy, the interface packages and launch): only dynaguide_ros and above use them
ROS_MODULES = ("rclpy", "rosidl_runtime_py", "rosidl_parser", "launch", "launch_ros", "ament_index_python",
               "builtin_interfaces", "rosgraph_msgs")

#: package (or module) -> top-level names it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "dynaguide": LAYERS[1:] + ("arx5_driver", "pybullet") + ROS_MODULES,
    "calvin_bridge": LAYERS[2:] + ("arx5_driver",) + ROS_MODULES,
    "dynaguide_experiments": LAYERS[3:] + ("arx5_driver",) + ROS_MODULES,
    "dynaguide_ros": LAYERS[4:],
    "arx5_driver": ("calvin_bridge", "dynaguide_experiments", "dynaguide_cli") + ROS_MODULES + ("dynaguide_ros",),
}

#: modules at a package's edge, checked with the layer above: the ARX5 node is a ROS node
EDGE_MODULES = {"arx5_driver.node": "dynaguide_ros"}


def _is_ros(name: str) -> bool:
    return name in ROS_MODULES or name.endswith(("_msgs", "_srvs"))


def _forbidden(package: str, module: str) -> tuple[str, ...]:
    if module in EDGE_MODULES:
        return FORBIDDEN[EDGE_MODULES[module]]
    return FORBIDDEN[package]


def _blocked(name: str, forbidden: tuple[str, ...]) -> bool:
    top = name.split(".")[0]
    if top in forbidden:
        return True
    return set(forbidden) >= set(ROS_MODULES) and _is_ros(top)


def _modules(package: str) -> list[tuple[str, Path]]:
    out = []
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append((".".join(parts), path))
    return out


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """Every module an import statement of ``path`` names (absolute; relative ones resolved), with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            else:
                names.append((node.lineno, node.module))
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_statement_runs_upward(package):
    offenders = [f"{path.relative_to(REPO)}:{line} imports {name}"
                 for module, path in _modules(package)
                 for line, name in _imports(module, path) if _blocked(name, _forbidden(package, module))]
    assert not offenders, "imports that run upward:\n" + "\n".join(offenders)


_IMPORT_ALL = r"""
import importlib, importlib.abc, json, sys

forbidden, ros, modules = json.loads(sys.argv[1])


class UpwardImport(Exception):  # not an ImportError: no `except ImportError` fallback may swallow it
    pass


class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in forbidden or (ros and (top in ros or top.endswith(("_msgs", "_srvs")))):
            raise UpwardImport(name)
        return None


sys.meta_path.insert(0, Block())
report = {"upward": {}, "missing": {}}
for module in modules:
    try:
        importlib.import_module(module)
    except UpwardImport as exc:
        report["upward"][module] = str(exc)
    except ImportError as exc:  # an optional dependency of this install (lerobot, ray, ...)
        report["missing"][module] = f"{type(exc).__name__}: {exc}"
print(json.dumps(report))
"""


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_modules_import_without_the_layers_above(package):
    by_forbidden: dict[tuple[str, ...], list[str]] = {}
    for module, _path in _modules(package):
        if module.endswith("__main__"):
            continue
        by_forbidden.setdefault(_forbidden(package, module), []).append(module)
    for forbidden, modules in by_forbidden.items():
        ros = [m for m in ROS_MODULES] if set(forbidden) >= set(ROS_MODULES) else []
        layers = [f for f in forbidden if f not in ROS_MODULES]
        proc = subprocess.run([sys.executable, "-c", _IMPORT_ALL, json.dumps([layers, ros, modules])],
                              capture_output=True, text=True, cwd=REPO, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert not report["upward"], f"{package}: modules that import a higher layer: {report['upward']}"
        ours = {m: why for m, why in report["missing"].items() if any(layer in why for layer in LAYERS)}
        assert not ours, f"{package}: modules that fail to import: {ours}"
