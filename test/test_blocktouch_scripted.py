"""Scripted data collector guarantees, HDF5 layout, Bezier resampling, the rollout harness, Wilson CIs."""

import h5py
import numpy as np
import pytest
import torch

from dynaguide_experiments.blocktouch.dataset import (chunk_indices, classifier_batch, load_demos, obs_indices,
                                                      outcome_chunk, policy_batch)
from dynaguide_experiments.blocktouch.env import COLOR_NAMES, BlockTouchEnv, BlockTouchEnvConfig
from dynaguide_experiments.blocktouch.evaluation import rollout, wilson_interval
from dynaguide_experiments.blocktouch.layouts import Scenes
from dynaguide_experiments.blocktouch.scripted import CollectorConfig, bezier_targets, collect_demos

ENV = BlockTouchEnvConfig(image_size=32, supersample=1)


def test_bezier_targets_equal_arc_length():
    start, end = np.array([100.0, 100.0]), np.array([400.0, 100.0])
    straight = bezier_targets(start, end, None, 30.0)
    assert len(straight) == 10 and np.allclose(straight[-1], end)
    assert np.allclose(np.diff(np.concatenate([start[None], straight]), axis=0), [30.0, 0.0])
    curved = bezier_targets(start, end, np.array([250.0, 450.0]), 20.0)
    steps = np.linalg.norm(np.diff(np.concatenate([start[None], curved]), axis=0), axis=1)
    assert np.allclose(curved[-1], end)
    assert steps.max() - steps.min() < 0.5 and steps.max() <= 20.0 + 1e-6  # chords of equal arcs
    assert curved[:, 1].max() > 200  # the waypoint bends the path


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bt") / "demos.hdf5"
    cfg = CollectorConfig(num_demos=24, seed=3, batch_size=64, num_failures=10)
    stats = collect_demos(path, cfg, ENV, progress=False, failures_path=path.with_name("failures.hdf5"))
    return path, cfg, stats


def test_failures_touched_another_block_and_leave_the_demos_unchanged(demo_file, tmp_path):
    path, cfg, stats = demo_file
    assert stats["failures"] == 10
    with h5py.File(path.with_name("failures.hdf5")) as f:
        assert len(f["data"]) == 10
        for name in f["data"]:
            g = f["data"][name]
            assert 0 <= g.attrs["touched"] != g.attrs["target"] and g.attrs["num_samples"] >= cfg.min_steps
            assert g["plan_tail"].shape == (cfg.plan_tail_steps, 2)
    alone = tmp_path / "alone.hdf5"  # the same demonstrations without asking for failures
    collect_demos(alone, cfg, ENV, progress=False)
    with h5py.File(path) as a, h5py.File(alone) as b:
        assert sorted(a["data"]) == sorted(b["data"])
        for name in a["data"]:
            assert np.array_equal(a["data"][name]["actions"][()], b["data"][name]["actions"][()])
    both = load_demos([path, path.with_name("failures.hdf5")])
    assert both.num_episodes == 34 and both.start[24] == int(both.length[:24].sum())
    assert (both.touched[24:] >= 0).all()


def test_collector_keeps_only_intended_touches_with_equal_colours(demo_file):
    path, cfg, stats = demo_file
    assert stats["demos"] == 24 and stats["tried"] >= 24
    counts = np.zeros(4, int)
    with h5py.File(path) as f:
        names = list(f["data"])
        assert len(names) == 24
        for name in names:
            g = f["data"][name]
            n = g.attrs["num_samples"]
            assert g.attrs["touched"] == g.attrs["target"]
            assert g.attrs["behavior"] == COLOR_NAMES[g.attrs["touched"]]
            assert n >= cfg.min_steps
            assert g["actions"].shape == (n, 2) and np.abs(g["actions"][()]).max() <= 1.0
            assert g["obs/image"].shape == (n, 32, 32, 3) and g["obs/image"].dtype == np.uint8
            assert g["obs/proprio"].shape == (n, 2) and g["obs/states"].shape == (n, 16)
            assert g["final_obs/image"].shape == (1, 32, 32, 3)
            counts[g.attrs["touched"]] += 1
    assert counts.tolist() == [6, 6, 6, 6]


def test_stored_actions_replay_to_the_same_touch(demo_file):
    """Physics is deterministic: replaying a demo's actions from its stored initial state reproduces it."""
    path, _, _ = demo_file
    with h5py.File(path) as f:
        for name in list(f["data"])[:6]:
            g = f["data"][name]
            s0 = g["obs/states"][0]
            env = BlockTouchEnv(ENV)
            obs = env.reset_to(s0[None, :2], s0[4:].reshape(1, 4, 3)[:, :, :2], s0[4:].reshape(1, 4, 3)[:, :, 2])
            assert np.array_equal(obs["image"][0], g["obs/image"][0])
            actions = g["actions"][()]
            for t, a in enumerate(actions):
                assert not env.done[0]
                assert np.allclose(env.agent_pos[0], g["obs/states"][t, :2], atol=1e-3)
                env.step(a[None].astype(np.float64))
            assert env.done[0] and env.touched[0] == g.attrs["touched"]
            assert np.array_equal(env.observe()["image"][0], g["final_obs/image"][0])


def test_training_windows_follow_the_time_convention(demo_file):
    demos = load_demos(demo_file[0])
    first_len = int(demos.length[0])
    idx = torch.tensor([0, first_len - 1])
    assert obs_indices(demos, idx, 2).tolist() == [[0, 0], [first_len - 2, first_len - 1]]
    chunk = chunk_indices(demos, idx, 16)
    assert chunk[0].tolist() == [min(i, first_len - 1) for i in range(16)]
    assert chunk[1].tolist() == [first_len - 1] * 16  # past the end: the last action repeated
    batch = policy_batch(demos, idx, 2, 16)
    assert batch["rgb"].shape == (2, 2, 3, 32, 32) and batch["actions"].shape == (2, 16, 2)
    # the outcome models' chunk continues with the scripted plan instead of repeating the last action
    out = outcome_chunk(demos, idx, 16)
    assert torch.equal(out[0, :first_len], demos.actions[:first_len])
    assert torch.equal(out[0, first_len:], demos.plan_tail[0, : 16 - first_len])
    assert torch.equal(out[1, 0], demos.actions[first_len - 1]) and torch.equal(out[1, 1:], demos.plan_tail[0, :15])
    assert torch.equal(classifier_batch(demos, idx, 16)["actions"], out)


def _fixed_scenes(n):
    """Same four blocks (no yaw) in every scene, agents spread in the middle, targets cycling 0..3."""
    blocks = np.repeat(np.array([[[100.0, 100.0], [412.0, 100.0], [412.0, 412.0], [100.0, 412.0]]]), n, 0)
    rng = np.random.default_rng(0)
    agent = rng.uniform(200, 312, size=(n, 2))
    return Scenes(agent, blocks, np.zeros((n, 4)), np.arange(n) % 4)


def test_rollout_harness_known_outcomes():
    scenes = _fixed_scenes(40)
    calls = []

    def stay(obs, targets, generator):  # target = current position: nobody moves, all run to the horizon
        calls.append(len(targets))
        return obs["proprio"][:, -1:].repeat(1, 16, 1)

    res = rollout(stay, scenes, ENV, horizon=24, n_action_steps=8)
    assert res.touched.tolist() == [-1] * 40 and np.all(res.steps == 24) and not res.out.any()
    assert calls == [40, 40, 40] and all(len(t) == 25 for t in res.trajectories)
    assert res.summary()["rate"] == 0.0

    def straight(obs, targets, generator):  # aim at the target block's centre
        goal = torch.tensor(scenes.blocks[0][targets] / 256.0 - 1.0, dtype=torch.float32)
        return goal[:, None].repeat(1, 16, 1)

    res = rollout(straight, scenes, ENV, horizon=100, n_action_steps=4)
    summary = res.summary()
    assert summary["rate"] == 1.0 and summary["n"] == 40 and summary["touch_share"] == [0.25] * 4
    assert np.all(res.steps < 100) and summary["ci95"][1] == 1.0

    def wrong(obs, targets, generator):  # aim at the next colour: every rollout fails, lockstep shrinks
        goal = torch.tensor(scenes.blocks[0][(targets + 1) % 4] / 256.0 - 1.0, dtype=torch.float32)
        return goal[:, None].repeat(1, 16, 1)

    res = rollout(wrong, scenes, ENV, horizon=100, n_action_steps=4)
    assert res.summary()["rate"] == 0.0 and np.all(res.touched == (scenes.target + 1) % 4)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and abs(hi - 0.27753) < 1e-4
    lo, hi = wilson_interval(5, 10)
    assert abs(lo - 0.23659) < 1e-4 and abs(hi - 0.76341) < 1e-4
    lo, hi = wilson_interval(85, 100)
    assert abs(lo - 0.76716) < 1e-4 and abs(hi - 0.90695) < 1e-4  # by hand: 0.83706 -+ 0.06989
    assert wilson_interval(0, 100)[0] == 0.0 and wilson_interval(100, 100)[1] == 1.0  # exact, no round-off
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
