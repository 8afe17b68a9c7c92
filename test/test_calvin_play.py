"""Chained play collection (``dynaguide calvin play``) and the base-policy check, on real PyBullet.

Each test checks one behaviour that could break: segments chain (the next starts where the previous ended)
with labels counted from their own start, a perturbed segment records the expert's action rather than the
executed one, a killed collection resumes to exactly the data of an uninterrupted one, the feasibility test
agrees with the scenes made for a behaviour, and the reversal / finish measures count what they claim.
"""

from __future__ import annotations

import dataclasses
import json

import h5py
import numpy as np
import pytest

from calvin_bridge.config import CalvinEnvConfig
from calvin_bridge.env import CalvinEnv
from calvin_bridge.experts import ARTICULATED_BANDS, BEHAVIOURS, behaviour_scene, is_possible
from calvin_bridge.labels import behaviour_label
from calvin_bridge.play import PlayConfig, collect_play, play_episode, shard_path, summarise_play
from dynaguide_experiments.calvin.base_check import summarise_base
from dynaguide_experiments.calvin.harness import is_reversal, load_start_poses, reversal_counts

SIZE = 32


@pytest.fixture(scope="module")
def env_config() -> CalvinEnvConfig:
    base = CalvinEnvConfig()
    return dataclasses.replace(base, static_camera=dataclasses.replace(base.static_camera, width=SIZE, height=SIZE),
                               gripper_camera=dataclasses.replace(base.gripper_camera, width=SIZE, height=SIZE))


@pytest.fixture(scope="module")
def env(env_config):
    with CalvinEnv(env_config) as e:
        yield e


def _segments(path):
    with h5py.File(path, "r") as f:
        names = sorted(f["data"], key=lambda n: int(n.split("_")[-1]))
        return [({k: v for k, v in f["data"][n].attrs.items()}, f["data"][n]["actions"][:],
                 f["data"][n]["obs/proprio"][:], f["data"][n]["obs/states"][:]) for n in names]


@pytest.mark.parametrize("behaviour", sorted(ARTICULATED_BANDS) + ["button_on", "button_off", "touch_red"])
def test_a_scene_made_for_a_behaviour_is_one_where_it_is_possible(env, behaviour):
    rng = np.random.default_rng(7)
    for seed in range(3):
        env.reset(seed=seed, options={"scene": behaviour_scene(env, behaviour, rng)})
        assert is_possible(env, behaviour)


@pytest.mark.parametrize("done,opposite", [("drawer_open", "drawer_close"), ("switch_on", "switch_off"),
                                           ("door_left", "door_right")])
def test_a_part_at_the_far_end_of_its_range_allows_only_the_way_back(env, done, opposite):
    part = ARTICULATED_BANDS[done][0]
    lo, hi = env.scene.joint_limits[part]
    env.reset(seed=0, options={"scene": {part: hi}})
    assert not is_possible(env, done)
    assert is_possible(env, opposite)


def test_segments_chain_and_are_labelled_from_their_own_start(env):
    cfg = PlayConfig(episodes=1, segments_per_episode=3, noise=0.0, seed=11)
    segments = [(a, attrs, r) for a, attrs, r in play_episode(env, cfg, 11) if a is not None]
    assert len(segments) >= 2
    for (prev, _, _), (nxt, _, _) in zip(segments, segments[1:]):
        # the next segment's first state is the previous one's last
        np.testing.assert_allclose(nxt["proprio"][0], prev["proprio"][-1], atol=1e-5)
        np.testing.assert_allclose(nxt["states"][0], prev["states"][-1], atol=1e-5)
    for arrays, attrs, result in segments:
        label = behaviour_label(arrays["states"][0], arrays["states"][-1], arrays["proprio"][-1][:3])
        assert label == result["label"]
        assert attrs["behavior"] in BEHAVIOURS


def test_a_perturbed_segment_records_the_expert_action_not_the_executed_one(env):
    cfg = PlayConfig(episodes=1, segments_per_episode=1, noise=0.5, noise_share=1.0, seed=3)
    arrays, attrs, _ = next(play_episode(env, cfg, 3))
    assert attrs["perturbed"]
    actions, positions = arrays["actions"][:-1], arrays["proprio"][:, :3]
    # the expert moves at most max_rel_pos per step along its line; the noise shows in the *executed* motion
    executed = np.diff(positions, axis=0) / env.config.max_rel_pos
    residual = executed[:, :3] - actions[:, :3]
    assert np.abs(actions[:, :3]).max() <= 1.0
    assert np.std(residual) > 0.15       # executed ≠ recorded: noise of std 0.5 went into the robot only


def test_a_killed_collection_resumes_where_it_stopped(env_config, tmp_path):
    cfg = PlayConfig(episodes=3, segments_per_episode=2, seed=5, noise=0.3, noise_share=0.5)
    collect_play(env_config, cfg, tmp_path / "whole", progress=False)
    # "kill" after the first episode, with a torn second episode (a segment written past next_episode)
    collect_play(env_config, dataclasses.replace(cfg, episodes=1), tmp_path / "cut", progress=False)
    first_episode = _segments(shard_path(tmp_path / "cut", 0, 1))
    with h5py.File(shard_path(tmp_path / "cut", 0, 1), "a") as f:
        f["data"].copy(f["data"]["demo_0"], "demo_99")
        f["data"]["demo_99"].attrs["episode_order"] = 1
    with pytest.raises(FileExistsError):
        collect_play(env_config, cfg, tmp_path / "cut", progress=False)
    collect_play(env_config, cfg, tmp_path / "cut", resume=True, progress=False)
    whole, cut = _segments(shard_path(tmp_path / "whole", 0, 1)), _segments(shard_path(tmp_path / "cut", 0, 1))
    # the finished episode is kept as it was, the torn segment is gone, the rest ran with the same seeds
    for (a_attrs, a_act, _, _), (b_attrs, b_act, _, _) in zip(first_episode, cut):
        assert a_attrs["episode_seed"] == b_attrs["episode_seed"] == 5
        np.testing.assert_array_equal(a_act, b_act)
    assert [s[0]["episode_order"] for s in cut] == sorted(s[0]["episode_order"] for s in cut)
    assert {s[0]["episode_seed"] for s in cut} == {s[0]["episode_seed"] for s in whole} == {5, 6, 7}
    assert summarise_play([shard_path(tmp_path / "cut", 0, 1)])["episodes"] == 3
    # (PyBullet's contact solver warm-starts from the previous episode, so episodes 6 and 7 may differ from the
    # uninterrupted run's by a step or two: a resumed collection has the same seeds, not bit-equal frames)


def test_resume_with_other_settings_is_refused(env_config, tmp_path):
    cfg = PlayConfig(episodes=1, segments_per_episode=1, seed=5)
    collect_play(env_config, cfg, tmp_path, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        collect_play(env_config, dataclasses.replace(cfg, noise=0.9), tmp_path, resume=True, progress=False)


def test_two_workers_write_disjoint_episodes(env_config, tmp_path):
    cfg = PlayConfig(episodes=2, segments_per_episode=1, seed=9, workers=2)
    stats = collect_play(env_config, cfg, tmp_path, progress=False)
    seeds = [{s[0]["episode_seed"] for s in _segments(shard_path(tmp_path, w, 2))} for w in range(2)]
    assert seeds[0] | seeds[1] <= {9, 10} and not seeds[0] & seeds[1]
    assert stats["episodes"] == 2


@pytest.mark.parametrize("bad", [dict(noise=-1.0), dict(noise=float("nan")), dict(noise_share=1.5),
                                 dict(episodes=0), dict(mixture={"fly": 1.0}), dict(mixture={"switch_on": 0.0})])
def test_play_config_refuses_bad_settings(bad):
    with pytest.raises(ValueError):
        PlayConfig(**bad)


@pytest.mark.parametrize("previous,move,expected", [
    (None, [1, 0, 0], None),                       # first chunk: no pair
    ([1, 0, 0], [1, 0.1, 0], False),               # onwards
    ([1, 0, 0], [-1, 0, 0], True),                 # straight back
    ([1, 0, 0], [0, 1, 0], False),                 # a 90° turn is not a reversal
    ([1, 0, 0], [-0.1, 0, 0], None),               # barely moving: not counted
])
def test_is_reversal(previous, move, expected):
    prev = None if previous is None else np.asarray(previous, dtype=float)
    assert is_reversal(prev, np.asarray(move, dtype=float)) == expected


def test_reversal_counts_of_a_back_and_forth_sequence():
    actions = np.zeros((32, 7))
    actions[:8, 0], actions[8:16, 0], actions[16:24, 0], actions[24:, 0] = 1, -1, -1, 1
    assert reversal_counts(actions, 8) == (2, 3)


def test_summarise_base_counts_finishes_reversals_and_first_behaviours():
    trials = [{"label": "drawer_open", "steps": 50, "reversals": 1, "chunk_pairs": 5},
              {"label": "no_behaviour", "steps": 400, "reversals": 10, "chunk_pairs": 49},
              {"label": "switch_on", "steps": 80, "reversals": 0, "chunk_pairs": 9},
              {"label": "drawer_open", "steps": 60, "reversals": 0, "chunk_pairs": 7}]
    s = summarise_base(trials)
    assert s["n"] == 4 and s["finish_rate"] == 0.75
    assert s["reversal_rate"] == pytest.approx(11 / 70)
    assert s["first_behaviours"] == {"drawer_open": 2, "no_behaviour": 1, "switch_on": 1}
    assert s["meets"] == {"finish_rate": False, "reversal_rate": False, "play_not_specialist": False}


def test_validation_and_evaluation_start_poses_are_disjoint(env_config, tmp_path):
    collect_play(env_config, PlayConfig(episodes=2, segments_per_episode=2, seed=3_000_000), tmp_path,
                 progress=False)
    path = shard_path(tmp_path, 0, 1)
    every = load_start_poses(path)
    val, ev = load_start_poses(path, "validation"), load_start_poses(path, "evaluation")
    assert len(val) + len(ev) == len(every) and len(ev) >= 1
    assert not any(np.allclose(v, e) for v in val for e in ev)
    json.dumps(summarise_play([path]))   # the collection summary is plain JSON


# ------------------------------------------------------------------------------------------ protocol
def _protocol_setup(tmp_path):
    import torch

    from dynaguide.checkpoint import save_checkpoint
    from dynaguide_experiments.calvin.config import CalvinExperimentConfig, DataConfig
    from dynaguide.policy import DiffusionPolicy, DiffusionPolicyConfig

    torch.manual_seed(0)
    policy = DiffusionPolicy(DiffusionPolicyConfig.cpu(image_keys=("rgb_static",), image_size=32, proprio_dim=15,
                                                       action_dim=7))
    for name in ("policy", "dynamics"):
        save_checkpoint(tmp_path / name, policy, policy.cfg)
    for name in ("val.h5", "goals.h5"):   # the registered data files (hashed, not read)
        (tmp_path / name).write_bytes(name.encode() * 100)
    cfg = CalvinExperimentConfig(data=DataConfig(train=(), merged="", validation=str(tmp_path / "val.h5"),
                                                 goals=str(tmp_path / "goals.h5")))
    return cfg


def test_a_protocol_freezes_models_and_settings(tmp_path):
    from dynaguide_experiments.calvin.protocol import ProtocolError, apply_protocol, write_protocol

    cfg = _protocol_setup(tmp_path)
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, trials=50, rtc=dataclasses.replace(
        cfg.eval.rtc, enabled=True, jacobian=False)))
    out = tmp_path / "protocol.json"
    write_protocol(cfg, out, str(tmp_path / "policy"), str(tmp_path / "dynamics"), ["articulated"], ["base"], [])
    with pytest.raises(ProtocolError, match="exists"):
        write_protocol(cfg, out, str(tmp_path / "policy"), str(tmp_path / "dynamics"), ["articulated"], ["base"], [])
    loaded, protocol = apply_protocol(dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, trials=3)), out,
                                      require_committed=False)
    assert loaded.eval.trials == 50 and len(protocol["sha256"]) == 64
    assert loaded.eval.rtc.enabled and not loaded.eval.rtc.jacobian   # chunk consistency is part of the protocol
    # a changed model byte is refused
    weights = tmp_path / "dynamics" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ProtocolError, match="dynamics model"):
        apply_protocol(cfg, out, require_committed=False)


def test_a_protocol_registers_further_models_and_its_data_files(tmp_path):
    from dynaguide_experiments.calvin.protocol import ProtocolError, apply_protocol, write_protocol

    cfg = _protocol_setup(tmp_path)
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, trials=50, gpc_samples=7))
    first = tmp_path / "first.json"
    write_protocol(cfg, first, str(tmp_path / "policy"), str(tmp_path / "dynamics"), ["articulated"], ["base"], [])
    # a second protocol carries the first one's settings over, whatever cfg says, and registers a further model
    second = tmp_path / "second.json"
    other = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, trials=3, gpc_samples=1))
    protocol = write_protocol(other, second, str(tmp_path / "policy"), str(tmp_path / "dynamics"), ["underspecified"],
                              ["goal_conditioned"], [], extra_models={"gc_policy": str(tmp_path / "policy")},
                              settings_from=str(first))
    assert protocol["settings_from"] == str(first) and set(protocol["models"]) == {"policy", "dynamics", "gc_policy"}
    loaded, _ = apply_protocol(other, second, require_committed=False)
    assert (loaded.eval.trials, loaded.eval.gpc_samples) == (50, 7)
    # regenerated start poses (other bytes) are refused, not evaluated on other start poses
    (tmp_path / "val.h5").write_bytes(b"regenerated")
    with pytest.raises(ProtocolError, match="start poses file .* is not the registered one"):
        apply_protocol(cfg, second, require_committed=False)
    (tmp_path / "val.h5").unlink()
    with pytest.raises(ProtocolError, match="does not exist"):
        write_protocol(cfg, tmp_path / "third.json", str(tmp_path / "policy"), str(tmp_path / "dynamics"),
                       ["articulated"], ["base"], [])


def test_an_uncommitted_protocol_is_refused(tmp_path, monkeypatch):
    import subprocess

    from dynaguide_experiments.calvin.protocol import ProtocolError, apply_protocol, write_protocol

    cfg = _protocol_setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    write_protocol(cfg, "protocol.json", "policy", "dynamics", ["articulated"], ["base"], [])
    with pytest.raises(ProtocolError, match="not committed"):
        apply_protocol(cfg, "protocol.json")
    subprocess.run(["git", "add", "protocol.json"], check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "p"], check=True)
    apply_protocol(cfg, "protocol.json")
    with open("protocol.json", "a") as f:
        f.write(" ")
    with pytest.raises(ProtocolError, match="not committed"):
        apply_protocol(cfg, "protocol.json")


@pytest.mark.parametrize("rare", [("button_on", "button_off"), ("drawer_open", "drawer_close", "door_left",
                                                                  "door_right", "switch_on", "switch_off")])
def test_balancing_picks_the_behaviours_done_least_so_far(env, rare):
    cfg = PlayConfig(episodes=1, segments_per_episode=1, seed=21, noise=0.0)
    attempts = {b: 0 if b in rare else 10_000 for b in BEHAVIOURS}
    # the button and the door always offer one of their two behaviours, so a rare one is always possible
    _, attrs, _ = next(play_episode(env, cfg, 21, attempts))
    assert attrs["behavior"] in rare


def test_killing_a_parallel_collection_stops_its_workers(env_config, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("import dataclasses, sys; from calvin_bridge.config import CalvinEnvConfig; "
              "from calvin_bridge.play import PlayConfig, collect_play; b = CalvinEnvConfig(); "
              "c = dataclasses.replace(b, static_camera=dataclasses.replace(b.static_camera, width=32, height=32)); "
              "collect_play(c, PlayConfig(episodes=400, segments_per_episode=6, workers=2), sys.argv[1], "
              "progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(tmp_path.glob("play_*.h5"))) < 2:
        time.sleep(0.5)
    assert len(list(tmp_path.glob("play_*.h5"))) == 2
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    time.sleep(2)
    # no process of its session survives it
    alive = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    if alive:
        os.killpg(proc.pid, signal.SIGKILL)
    assert alive == []
