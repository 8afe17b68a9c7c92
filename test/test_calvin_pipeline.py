"""CALVIN experiment pipeline pieces that need no training: merging collected files, config validation."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from dynaguide.data.schema import Demo
from dynaguide.data.source import DemoSource
from dynaguide.data.writer import write_hdf5_dataset
from dynaguide_experiments.calvin.config import CalvinExperimentConfig, EvalConfig
from dynaguide_experiments.calvin.pipeline import merge_segments


def _demos(n: int, behaviour: str, offset: float) -> list[Demo]:
    return [Demo(actions=np.full((3 + i, 7), offset + i, np.float32),
                 images={"third_person": np.zeros((3 + i, 8, 8, 3), np.uint8)},
                 proprio=np.zeros((3 + i, 15), np.float32), behaviour=behaviour) for i in range(n)]


def test_merge_keeps_every_segment_in_order_and_is_idempotent(tmp_path):
    a = write_hdf5_dataset(tmp_path / "a.h5", _demos(3, "switch_on", 0.0))
    b = write_hdf5_dataset(tmp_path / "b.h5", _demos(2, "drawer_open", 100.0))
    out = tmp_path / "merged.h5"
    assert merge_segments((str(a), str(b)), out) == {"demos": 5, "skipped": False}
    src = DemoSource(out)
    assert src.names == [f"demo_{i}" for i in range(5)]
    assert [src.behaviour[n] for n in src.names] == ["switch_on"] * 3 + ["drawer_open"] * 2
    assert src.actions["demo_3"][0, 0] == 100.0 and src.length("demo_4") == 4
    with h5py.File(out) as f:
        assert f["data/demo_4"].attrs["source"] == "b.h5:demo_1"
    assert merge_segments((str(a), str(b)), out)["skipped"] is True


@pytest.mark.parametrize("bad", [{"negatives": "all"}, {"goal_set": "train"}, {"trials": 0},
                                 {"seed": 100},                       # a training seed
                                 {"seed": 3_500_000},                 # a validation seed used as evaluation
                                 {"split": "validation", "seed": 5_000_000}])
def test_eval_config_rejects_bad_settings_and_seeds_outside_their_split(bad):
    with pytest.raises(ValueError):
        EvalConfig(**bad)


def test_shipped_experiment_config_loads():
    cfg = CalvinExperimentConfig.load("config/calvin_experiment.yaml")
    assert cfg.embedder.kind == "efficientnet_lite0" and cfg.eval.guidance.stochastic_mode == "renoise"


@pytest.mark.parametrize("share, kept", [(0.2, 2), (0.5, 8), (0.01, 1)])
def test_underrepresent_keeps_the_first_segments_of_the_behaviour_at_its_share(tmp_path, share, kept):
    from dynaguide_experiments.calvin.pipeline import underrepresent

    path = write_hdf5_dataset(tmp_path / "d.h5", _demos(10, "switch_on", 0.0) + _demos(8, "drawer_open", 50.0))
    names = DemoSource(path).names
    out = underrepresent(path, names, "switch_on", share)
    assert out == names[:kept] + names[10:]        # the first k switch_on segments, every other segment, in order
    with pytest.raises(ValueError, match="needs 1592"):   # 199 repeats of each of 10 segments: refused
        underrepresent(path, names, "switch_on", 0.995)
    with pytest.raises(ValueError, match="no training segments"):
        underrepresent(path, names, "door_left", 0.1)


def test_underrepresent_repeats_the_behaviours_segments_above_its_natural_share(tmp_path):
    from dynaguide_experiments.calvin.pipeline import underrepresent

    path = write_hdf5_dataset(tmp_path / "d.h5", _demos(3, "switch_on", 0.0) + _demos(8, "drawer_open", 50.0))
    names = DemoSource(path).names
    out = underrepresent(path, names, "switch_on", 0.5)   # 8 switch_on needed, 3 recorded: 3 + 3 + 2 repeats
    assert out[8:] == names[3:]                           # every other segment once, in order
    assert out[:8] == [names[0]] * 3 + [names[1]] * 3 + [names[2]] * 2
    assert sum(n in names[:3] for n in out) / len(out) == 0.5


def test_training_config_rejects_a_share_outside_0_1():
    from dynaguide_experiments.calvin.config import TrainingConfig

    with pytest.raises(ValueError, match="underrepresented_share"):
        TrainingConfig(underrepresented_behaviour="switch_on", underrepresented_share=1.0)


def test_the_training_seed_reaches_the_trainer():
    """``dynaguide calvin train --seed K`` (training.seed): a second policy on the same data differs by its seed."""
    import dataclasses as dc

    from dynaguide_cli.main import build_parser
    from dynaguide_cli.calvin import _config
    from dynaguide_experiments.calvin.pipeline import _train_config

    args = build_parser().parse_args(["calvin", "train", "--config", "config/calvin_play_gripper.yaml", "--seed", "1"])
    cfg = _config(args)
    assert cfg.training.seed == 1 and _train_config(cfg, 10).seed == 1
    assert _train_config(dc.replace(cfg, training=dc.replace(cfg.training, seed=0)), 10).seed == 0
