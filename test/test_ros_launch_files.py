"""The ROS 2 launch files describe the intended graphs.

``launch``/``launch_ros`` are not on PyPI: where they are missing, the launch files are loaded against a
minimal stand-in of those modules that records the actions they create (the only fake here, and only of
a package that cannot be installed); where they exist, the real ones are used.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _stand_in_modules() -> dict[str, types.ModuleType]:
    launch = types.ModuleType("launch")
    launch.LaunchDescription = type("LaunchDescription", (_Recorded,), {})
    actions = types.ModuleType("launch.actions")
    actions.DeclareLaunchArgument = type("DeclareLaunchArgument", (_Recorded,), {})
    actions.SetEnvironmentVariable = type("SetEnvironmentVariable", (_Recorded,), {})
    subs = types.ModuleType("launch.substitutions")
    subs.LaunchConfiguration = type("LaunchConfiguration", (_Recorded,), {})
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = type("Node", (_Recorded,), {})
    return {"launch": launch, "launch.actions": actions, "launch.substitutions": subs,
            "launch_ros": launch_ros, "launch_ros.actions": ros_actions}


def _load(name: str, monkeypatch):
    if importlib.util.find_spec("launch_ros") is None:
        for mod_name, mod in _stand_in_modules().items():
            monkeypatch.setitem(sys.modules, mod_name, mod)
    spec = importlib.util.spec_from_file_location(f"launch_{name}", REPO / "launch" / f"{name}.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


@pytest.mark.parametrize("graph", ["calvin_sim", "real_arx5"])
def test_launch_file_matches_graph_and_params(graph, monkeypatch):
    from dynaguide_ros.graphs import GRAPHS

    if importlib.util.find_spec("launch_ros") is not None:
        pytest.skip("real launch_ros present: covered by ros2 launch on full installs")
    desc = _load(graph, monkeypatch)
    actions = desc.args[0]
    nodes = [a for a in actions if type(a).__name__ == "Node"]
    envs = {a.args[0]: a.args[1] for a in actions if type(a).__name__ == "SetEnvironmentVariable"}
    assert envs["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert envs["FASTDDS_DEFAULT_PROFILES_FILE"].endswith("fastdds_localhost.xml")
    spec = GRAPHS[graph]
    assert [(n.kwargs["executable"], n.kwargs["name"]) for n in nodes] == [(s.executable, s.name) for s in spec.nodes]
    # every node has a section in the YAML parameters file, and nothing else is in it
    sections: dict = {}
    for name in spec.params_files:
        params = yaml.safe_load((REPO / "config" / name).read_text())
        assert all("ros__parameters" in v for v in params.values()), name
        assert not set(params) & set(sections), f"{name} repeats a node section"
        sections.update(params)
    assert set(sections) == {s.name for s in spec.nodes}
