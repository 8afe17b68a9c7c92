"""Recorded datasets and goal files have the method core's HDF5 layout and load through it; the CLI."""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest

from calvin_bridge.config import CalvinEnvConfig
from calvin_bridge.datasets import CollectConfig, collect, make_goals, parse_mixture


def small_config() -> CalvinEnvConfig:
    cfg = CalvinEnvConfig()
    return dataclasses.replace(cfg, static_camera=dataclasses.replace(cfg.static_camera, width=32, height=32),
                               gripper_camera=dataclasses.replace(cfg.gripper_camera, width=24, height=24))


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """Two button demos: one collected, then one more appended with ``resume=True``."""
    path = tmp_path_factory.mktemp("calvin") / "demos.hdf5"
    mixture = {"button_on": 1, "button_off": 1}
    first = collect(small_config(), CollectConfig(num_demos=1, seed=5, mixture=mixture), path, progress=False)
    stats = collect(small_config(), CollectConfig(num_demos=2, seed=5, mixture=mixture), path, resume=True,
                    progress=False)
    assert first["demos"] == 1 and stats["demos"] == 1
    return path, stats


def test_dataset_layout(tiny_dataset):
    path, stats = tiny_dataset
    with h5py.File(path, "r") as f:
        assert sorted(f["data"].keys()) == ["demo_0", "demo_1"]
        seeds = [int(f["data"][k].attrs["seed"]) for k in ("demo_0", "demo_1")]
        assert seeds[0] != seeds[1]                 # the resumed demo does not repeat the first episode
        for name in ("demo_0", "demo_1"):
            g = f["data"][name]
            L = g["actions"].shape[0]
            assert g["actions"].shape == (L, 7) and L > 10
            assert g["obs/third_person"].shape == (L, 32, 32, 3) and g["obs/third_person"].dtype == np.uint8
            assert g["obs/eye_in_hand"].shape == (L, 24, 24, 3)
            assert g["obs/proprio"].shape == (L, 15)
            assert g["obs/states"].shape == (L, 24)
            behaviour = g.attrs["behavior"]
            assert behaviour in ("button_on", "button_off") and g.attrs["label"] == behaviour
            actions = g["actions"][()]
            assert np.all(np.abs(actions) <= 1.0)
            states = g["obs/states"][()]
            # the LED flips between the first and last frame in the direction of the behaviour
            assert states[-1, 5] - states[0, 5] == (1.0 if behaviour == "button_on" else -1.0)
            # proprio at t+1 reflects the action at t: gripper closed by the expert
            assert g["obs/proprio"][-1, 14] == -1.0


def test_dataset_loads_through_method_core(tiny_dataset):
    source = pytest.importorskip("dynaguide.data.source")
    datasets = pytest.importorskip("dynaguide.data.datasets")
    path, _ = tiny_dataset
    src = source.DemoSource(path)
    assert len(src.names) == 2 and set(src.behaviour.values()) <= {"button_on", "button_off"}
    ds = datasets.PolicyDataset(path, image_keys=["third_person", "eye_in_hand"], n_obs_steps=2, horizon=8)
    item = ds[0]
    assert tuple(item["third_person"].shape) == (2, 3, 32, 32)
    assert tuple(item["actions"].shape) == (8, 7) and tuple(item["proprio"].shape) == (2, 15)
    dyn = datasets.DynamicsDataset(path, camera="third_person", horizon=8, class_names=["button_on", "button_off"])
    assert int(dyn[0]["label"]) in (0, 1)


def test_mixture_parsing_and_validation():
    assert parse_mixture("switch_on=0.01,drawer_open=1") == {"switch_on": 0.01, "drawer_open": 1.0}
    w = CollectConfig(mixture={"switch_on": 1, "door_left": 3}).weights()
    assert w.sum() == pytest.approx(1.0) and w.max() == pytest.approx(0.75)
    with pytest.raises(ValueError, match="unknown behaviours"):
        CollectConfig(mixture={"swtich_on": 1.0})
    with pytest.raises(ValueError, match="behaviour=weight"):
        parse_mixture("switch_on")


def test_goals(tmp_path):
    out = tmp_path / "goals.hdf5"
    counts = make_goals(small_config(), out, per_behaviour=1, behaviours=("switch_on",), progress=False)
    assert counts == {"heldout/switch_on": 1, "underspecified/switch_on": 1}
    with h5py.File(out, "r") as f:
        sets = {f["data"][k].attrs["goal_set"]: f["data"][k] for k in f["data"]}
        assert set(sets) == {"heldout", "underspecified"}
        for g in sets.values():
            assert g["obs/third_person"].shape == (1, 32, 32, 3)
            assert g["obs/states"][0, 4] == 1.0              # lightbulb on in every switch_on goal
            assert g.attrs["behavior"] == "switch_on"


def test_cli_experts_json(tmp_path):
    from dynaguide_cli.main import main

    out = tmp_path / "experts.json"
    assert main(["calvin", "experts", "--episodes", "1", "--behaviours", "button_off", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result == {"button_off": {"success": 1.0, "n": 1, "labels": {"button_off": 1}}}


def test_cli_bench(tmp_path):
    from dynaguide_cli.main import main

    out = tmp_path / "bench.json"
    assert main(["calvin", "bench", "--sizes", "32", "--steps", "3", "--json", str(out)]) == 0
    sps = json.loads(out.read_text())["steps_per_second"]
    assert set(sps) == {"no_render", "render_32"} and sps["no_render"] > sps["render_32"] > 0
