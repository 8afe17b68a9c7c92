"""The CALVIN evaluation harness end to end on tiny real data: real PyBullet, real (untrained) models.

Checks behaviour that could break: trials are recorded once each, a killed run (with a torn last line)
resumes without rerunning finished trials and with the same per-trial seeds, results files have the
documented shape.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from calvin_bridge.config import CalvinEnvConfig
from calvin_bridge.datasets import CollectConfig, collect, make_goals
from calvin_bridge.env import CalvinEnv
from calvin_bridge.experts import target_point
from dynaguide.checkpoint import save_checkpoint
from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel
from dynaguide.embedders.factory import EmbedderConfig, make_embedder
from dynaguide_experiments.calvin.config import (CalvinExperimentConfig, DataConfig, EvalConfig, ModelConfig,
                                                 TrainingConfig)
from dynaguide_experiments.calvin.evaluate import run_experiment
from dynaguide_experiments.calvin.harness import load_start_poses, read_trials, summarise, wilson_interval
from dynaguide.policy import DiffusionPolicy, DiffusionPolicyConfig

SIZE = 64


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("calvin_harness")
    base = CalvinEnvConfig()
    env_cfg = dataclasses.replace(base, static_camera=dataclasses.replace(base.static_camera, width=SIZE, height=SIZE))
    collect(env_cfg, CollectConfig(num_demos=2, seed=3_000_000), root / "val.h5", progress=False)
    make_goals(env_cfg, root / "goals.h5", per_behaviour=1, behaviours=("switch_on", "drawer_open"), progress=False)
    embedder_cfg = EmbedderConfig(kind="random", image_size=SIZE, patch_size=16, dim=32)
    embedder = make_embedder(embedder_cfg)
    torch.manual_seed(0)
    policy = DiffusionPolicy(DiffusionPolicyConfig.cpu(image_keys=("rgb_static",), image_size=SIZE, proprio_dim=15,
                                                       action_dim=7, n_action_steps=8))
    dynamics = LatentDynamicsModel(LatentDynamicsConfig.cpu(embed_tokens=embedder.num_tokens, embed_dim=embedder.dim,
                                                            pool=2, proprio_dim=15, action_dim=7, horizon=16))
    for model in (policy, dynamics):
        model.set_normalizer_stats(-torch.ones(7), torch.ones(7), -3 * torch.ones(15), 3 * torch.ones(15))
    save_checkpoint(root / "models" / "policy", policy, policy.cfg)
    save_checkpoint(root / "models" / "dynamics", dynamics, dynamics.cfg)
    cfg = CalvinExperimentConfig(
        data=DataConfig(train=(), merged="", validation=str(root / "val.h5"), goals=str(root / "goals.h5"),
                        static_size=SIZE),
        embedder=embedder_cfg, model=ModelConfig(policy_image_size=SIZE),
        training=TrainingConfig(export_dir=str(root / "models")),
        eval=EvalConfig(trials=3, horizon=16, batch_envs=2, goals_per_target=1))
    return root, cfg


def test_wilson_interval_brackets_the_rate():
    lo, hi = wilson_interval(7, 10)
    assert 0.39 < lo < 0.7 < hi < 0.92
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


def test_start_poses_are_first_frames_of_validation_segments(tiny_setup):
    root, cfg = tiny_setup
    poses = load_start_poses(cfg.data.validation)
    assert poses.shape == (2, 8) and np.all(np.isfinite(poses))


@pytest.mark.parametrize("behaviour", ["switch_on", "drawer_open", "button_on", "door_left", "touch_red"])
def test_target_point_lies_on_the_table(behaviour):
    with CalvinEnv(dataclasses.replace(CalvinEnvConfig(), render_every_step=False)) as env:
        env.reset(seed=1)
        point = target_point(env, behaviour)
    assert point.shape == (3,) and 0.3 < point[2] < 0.9 and abs(point[0]) < 0.6


def test_eval_records_each_trial_once_and_resumes_unfinished_trials(tiny_setup, tmp_path):
    root, cfg = tiny_setup
    methods = ["base", "dynaguide", "gpc", "itps"]
    full = run_experiment(cfg, "articulated", methods, tmp_path / "full", targets=["switch_on"], progress=False)
    cell = full["behaviours"]["switch_on"]
    assert set(cell) == set(methods)
    for m in methods:
        assert cell[m]["n"] == 3 and sum(cell[m]["distribution"].values()) == 3
        assert 0.0 <= cell[m]["ci95"][0] <= cell[m]["rate"] <= cell[m]["ci95"][1] <= 1.0
    for name in ("results.json", "results.md", "bars.png"):
        assert (tmp_path / "full" / name).is_file()
    reference = {t["trial"]: t for t in read_trials(tmp_path / "full" / "trials" / "switch_on__dynaguide.jsonl")}
    assert sorted(reference) == [0, 1, 2]

    # "kill" after one trial: keep the first record only (plus a torn line), then resume
    part = tmp_path / "part"
    (part / "trials").mkdir(parents=True)
    first = json.dumps(reference[0])
    (part / "trials" / "switch_on__dynaguide.jsonl").write_text(first + "\n" + first[:20])
    one_env = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, batch_envs=1))
    run_experiment(one_env, "articulated", ["dynaguide"], part, targets=["switch_on"], progress=False)
    resumed = read_trials(part / "trials" / "switch_on__dynaguide.jsonl")
    assert sorted(t["trial"] for t in resumed) == [0, 1, 2]          # trial 0 not rerun
    assert resumed[0] == reference[0]                                  # the finished trial's record kept
    for t in resumed:   # same per-trial seeds whatever the batch composition (trajectories may differ by
        ref = reference[t["trial"]]   # batch-dependent float rounding: results/calvin/README.md)
        assert (t["seed"], t["target"], t["method"]) == (ref["seed"], ref["target"], ref["method"])
        assert 1 <= t["steps"] <= cfg.eval.horizon


def test_summarise_counts_first_behaviours():
    trials = [{"label": "switch_on", "steps": 10}, {"label": "no_behaviour", "steps": 400},
              {"label": "drawer_open", "steps": 50}, {"label": "switch_on", "steps": 30}]
    s = summarise(trials, "switch_on")
    assert s["rate"] == 0.5 and s["n"] == 4
    assert s["distribution"] == {"switch_on": 2, "drawer_open": 1, "no_behaviour": 1}


def _slot_runner(latency_steps: int):
    from calvin_bridge.config import CalvinEnvConfig
    from dynaguide_experiments.calvin.harness import CellRunner, _Slot

    cfg = EvalConfig(latency_steps=latency_steps)
    runner = CellRunner(CalvinEnvConfig(), cfg, np.zeros((1, 8)), n_obs_steps=2, n_action_steps=8,
                        unnormalize=lambda x: x)
    hold = np.zeros(7)
    hold[6] = 1.0
    slot = _Slot(0, 0, [], [], np.zeros(3), torch.Generator(), hold=hold)
    return runner, slot


def test_lockstep_executes_the_first_n_action_steps_of_each_chunk():
    runner, slot = _slot_runner(0)
    chunk = np.arange(16.0)[:, None].repeat(7, axis=1)
    np.testing.assert_array_equal(runner._actions_of_tick(slot, chunk)[:, 0], np.arange(8.0))


def test_latency_runs_the_previous_chunk_on_until_the_new_one_arrives():
    runner, slot = _slot_runner(3)
    first = np.arange(16.0)[:, None].repeat(7, axis=1)
    actions = runner._actions_of_tick(slot, first)
    np.testing.assert_array_equal(actions[:3], np.repeat(slot.hold[None], 3, axis=0))  # nothing yet: hold
    np.testing.assert_array_equal(actions[3:, 0], np.arange(3.0, 8.0))
    second = 100 + first
    actions = runner._actions_of_tick(slot, second)
    np.testing.assert_array_equal(actions[:, 0], [8, 9, 10, 103, 104, 105, 106, 107])


def test_latency_beyond_the_chunk_is_refused():
    runner, slot = _slot_runner(9)
    with pytest.raises(ValueError, match="latency_steps"):
        runner._actions_of_tick(slot, np.zeros((16, 7)))
    with pytest.raises(ValueError, match="latency_steps"):
        EvalConfig(latency_steps=-1)


def test_underspecified_experiment_uses_the_underspecified_goals_and_articulated_seeds(tiny_setup, tmp_path):
    root, cfg = tiny_setup
    result = run_experiment(cfg, "underspecified", ["dynaguide"], tmp_path / "under", targets=["switch_on"],
                            progress=False)
    assert result["experiment"] == "underspecified"
    assert result["settings"]["eval"]["goal_set"] == "underspecified"
    trials = read_trials(tmp_path / "under" / "trials" / "switch_on__dynaguide.jsonl")
    articulated = run_experiment(cfg, "articulated", ["base"], tmp_path / "art", targets=["switch_on"], progress=False)
    assert articulated["settings"]["eval"]["goal_set"] == "heldout"
    seeds = [t["seed"] for t in read_trials(tmp_path / "art" / "trials" / "switch_on__base.jsonl")]
    assert sorted(t["seed"] for t in trials) == sorted(seeds)  # same scenes as ArticulatedParts


@pytest.mark.parametrize("label, outcome", [("switch_on", "positive"), ("drawer_open", "positive"),
                                            ("door_left", "negative"), ("touch_red", "other"),
                                            ("no_behaviour", "none")])
def test_tasks_sort_first_behaviours_into_positive_negative_other_none(label, outcome):
    from dynaguide_experiments.calvin.harness import Task

    task = Task("mix", ("switch_on", "drawer_open"), ("door_left",))
    assert task.outcome(label) == outcome
    assert task.success(label) == (outcome == "positive")
    avoid = Task("avoid", (), ("door_left",))
    assert avoid.success(label) == (outcome in ("positive", "other"))   # any behaviour but a negative one


def test_objective_setups_are_validated():
    from dynaguide_experiments.calvin.config import ObjectiveSetup

    with pytest.raises(ValueError, match="positive behaviours, negative behaviours"):
        ObjectiveSetup()
    with pytest.raises(ValueError, match="both positive and negative"):
        ObjectiveSetup(positives=("switch_on",), negatives=("switch_on",))
    with pytest.raises(ValueError, match="at least two"):
        ObjectiveSetup(positives=("switch_on",), sum_positives=True)


def test_multi_objective_cells_report_shares_and_pair_the_sum_ablation_with_its_setup(tiny_setup, tmp_path):
    root, cfg = tiny_setup
    names = ["switch_on+drawer_open", "switch_on+drawer_open_sum"]
    result = run_experiment(cfg, "multi_objective", ["base", "dynaguide"], tmp_path / "multi", targets=names,
                            progress=False)
    for name in names:
        for m in ("base", "dynaguide"):
            cell = result["behaviours"][name][m]
            shares = [cell[f"{k}_share"] for k in ("positive", "negative", "other", "none")]
            assert sum(shares) == pytest.approx(1.0) and cell["rate"] == cell["positive_share"]
    assert result["setups"]["switch_on+drawer_open_sum"]["sum_positives"] is True
    for name in ("results.json", "results.md", "bars.png", "distributions.png"):
        assert (tmp_path / "multi" / name).is_file()
    seeds = [sorted(t["seed"] for t in read_trials(tmp_path / "multi" / "trials" / f"{n}__dynaguide.jsonl"))
             for n in names]
    assert seeds[0] == seeds[1]   # the ablation runs on the same scenes as its setup
    with pytest.raises(ValueError, match="single target"):
        run_experiment(cfg, "multi_objective", ["itps"], tmp_path / "itps", targets=names[:1], progress=False)
    with pytest.raises(ValueError, match="unknown targets"):
        run_experiment(cfg, "multi_objective", ["base"], tmp_path / "x", targets=["switch_on"], progress=False)


def test_ablation_varies_one_parameter_at_a_time_and_collects_every_cell(tiny_setup, tmp_path):
    from dynaguide_experiments.calvin.ablation import SQUARED_SIGMA, run_ablation, settings

    root, cfg = tiny_setup
    cells = settings(cfg, ("scale", "squared"))
    default = cfg.eval.guidance
    assert set(cells) == {"default", "scale=1.5", "scale=10.0", "squared=True"}
    for name, cell in cells.items():
        changed = {f.name for f in dataclasses.fields(default)
                   if getattr(cell["guidance"], f.name) != getattr(default, f.name)}
        assert changed == {"scal": {"scale"}, "squa": {"squared", "sigma"}, "defa": set()}[name[:4]]
    assert cells["squared=True"]["guidance"].sigma == SQUARED_SIGMA
    with pytest.raises(ValueError, match="unknown ablation parameters"):
        settings(cfg, ("temperature",))
    result = run_ablation(cfg, "switch_on", tmp_path / "ablation", params=("squared",), progress=False)
    assert [p["value"] for p in result["grid"]["squared"]] == [False, True]
    assert all(p["n"] == cfg.eval.trials for p in result["grid"]["squared"])
    assert (tmp_path / "ablation" / "ablation.png").is_file()
    seeds = {name: sorted(t["seed"] for t in read_trials(tmp_path / "ablation" / "cells" / name / "trials"
                                                          / "switch_on__dynaguide.jsonl"))
             for name in ("default", "squared=True")}
    assert seeds["default"] == seeds["squared=True"]   # every setting on the same scenes


def test_underrepresented_runs_each_share_with_its_own_policy_on_the_same_seeds(tiny_setup, tmp_path):
    import shutil

    from dynaguide_experiments.calvin.underrepresented import policy_dir, run_underrepresented

    root, cfg = tiny_setup
    policies = tmp_path / "policies"
    for share in (0.01, 0.05):
        shutil.copytree(root / "models" / "policy", policy_dir(policies, "switch_on", share))
    result = run_underrepresented(cfg, "switch_on", [0.05, 0.01], tmp_path / "under", policies=policies,
                                  methods=("base", "dynaguide"), progress=False)
    assert list(result["shares"]) == ["0.01", "0.05"]                  # ordered by share
    assert all(result["shares"][s][m]["n"] == cfg.eval.trials for s in ("0.01", "0.05") for m in ("base", "dynaguide"))
    assert result["policies"]["0.01"].endswith("switch_on_1pct/policy")
    assert (tmp_path / "under" / "shares.png").is_file()
    with pytest.raises(FileNotFoundError, match="train it first"):
        run_underrepresented(cfg, "switch_on", [0.2], tmp_path / "x", policies=policies, progress=False)


def test_underrepresented_reports_each_training_seed_and_the_natural_policy(tiny_setup, tmp_path):
    import shutil

    from dynaguide.data.schema import Demo
    from dynaguide.data.writer import write_hdf5_dataset
    from dynaguide_experiments.calvin.underrepresented import policy_dir, run_underrepresented

    root, cfg = tiny_setup
    policies = tmp_path / "policies"
    for share, seed in ((0.01, 0), (0.01, 1)):
        shutil.copytree(root / "models" / "policy", policy_dir(policies, "switch_on", share, seed))
    assert policy_dir(policies, "switch_on", 0.01, 1).parent.name == "switch_on_1pct_seed1"
    # the natural share is counted in the training file: 1 switch_on segment of 4
    demos = [Demo(actions=np.zeros((3, 7), np.float32), proprio=np.zeros((3, 15), np.float32),
                  images={"third_person": np.zeros((3, 8, 8, 3), np.uint8)},
                  behaviour=b, name=f"demo_{i}") for i, b in enumerate(("switch_on", "door_left", "door_left",
                                                                       "button_on"))]
    merged = write_hdf5_dataset(tmp_path / "train.h5", demos)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, merged=str(merged)))
    result = run_underrepresented(cfg, "switch_on", ["0.01@1", "natural", "0.01"], tmp_path / "under",
                                  policies=policies, methods=("base",), progress=False)
    assert list(result["shares"]) == ["0.01", "0.01@1", "0.25 (natural)"]
    assert result["reference_share"] == "0.25 (natural)"
    assert result["policies"]["0.01@1"].endswith("switch_on_1pct_seed1/policy")
    # both seeds ran the same trial seeds (the same scenes)
    seeds = [[t["seed"] for t in map(json.loads, (tmp_path / "under" / f"share_{k}" / "trials" /
                                                  "switch_on__base.jsonl").read_text().splitlines())]
             for k in ("0.01", "0.01@1")]
    assert sorted(seeds[0]) == sorted(seeds[1])
    assert "(seed 1)" in (tmp_path / "under" / "results.md").read_text()


def test_commit_steps_replaces_the_policys_replanning_period(tiny_setup, tmp_path):
    """``eval.commit_steps`` reaches the runner: more actions than a chunk holds are refused there."""
    root, cfg = tiny_setup
    with pytest.raises(ValueError, match="commit_steps"):
        EvalConfig(commit_steps=-1)
    too_many = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, commit_steps=17))
    with pytest.raises(ValueError, match="n_action_steps 17"):
        run_experiment(too_many, "articulated", ["base"], tmp_path / "c17", targets=["switch_on"], progress=False)


@pytest.mark.parametrize("target,label,outcome", [
    ("drawer_open", "drawer_open", "target"), ("drawer_open", "drawer_close", "same_part"),
    ("drawer_open", "switch_on", "other"), ("drawer_open", "no_behaviour", "none"),
    ("touch_red", "touch_blue", "other"), ("button_on", "button_off", "same_part")])
def test_breakdown_sorts_first_behaviours_into_four_outcomes(target, label, outcome):
    from dynaguide_experiments.calvin.breakdown import outcome_of

    assert outcome_of(target, label) == outcome


def test_breakdown_counts_one_methods_trials_of_every_target(tmp_path):
    from dynaguide_experiments.calvin.breakdown import cell_breakdown, parse_cell

    trials = tmp_path / "trials"
    trials.mkdir()
    rows = {"drawer_open__dynaguide": ["drawer_open", "drawer_close", "no_behaviour"],
            "switch_on__dynaguide": ["switch_on", "touch_red"], "switch_on__base": ["touch_red"]}
    for name, labels in rows.items():
        target = name.split("__")[0]
        lines = [json.dumps({"target": target, "label": b}) for b in labels]
        (trials / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    cell = cell_breakdown(tmp_path, "dynaguide")
    assert cell["n"] == 5 and cell["counts"] == {"target": 2, "same_part": 1, "other": 1, "none": 1}
    assert parse_cell(f"DynaGuide s=4={tmp_path}:dynaguide") == ("DynaGuide s=4", str(tmp_path), "dynaguide")
    with pytest.raises(ValueError, match="NAME=DIR:METHOD"):
        parse_cell("no-method-here")
    with pytest.raises(FileNotFoundError, match="gpc"):
        cell_breakdown(tmp_path, "gpc")


@pytest.mark.parametrize("normalisers", ["shared", "different"])
def test_the_graphs_runner_steers_a_chunk_exactly_as_the_harness_planner(tiny_setup, normalisers):
    """Same observation, goals and noise: ``GuidedPolicyRunner.act`` (the policy node's code path, goal and
    observation tokens embedded as the embedding node does) gives the harness's DynaGuide chunk — also for a
    dynamics model fitted on other action min/max (the shipped pair), whose chunks both map the same way."""
    from dynaguide.data.datasets import to_image_tensor
    from dynaguide.embedders.protocol import resize_images
    from dynaguide.guidance.objectives import action_transform_for
    from dynaguide_experiments.calvin.evaluate import load_models
    from dynaguide_experiments.calvin.harness import Observation, Planners, load_goal_images
    from dynaguide.guided_runner import GuidedPolicyRunner

    root, cfg = tiny_setup
    policy, dynamics = load_models(cfg)
    if normalisers == "different":
        norm = dynamics.action_normalizer
        norm.set_stats(norm.min - 0.5, norm.max + 0.25)
    embedder = make_embedder(cfg.embedder)
    goals = {"drawer_open": load_goal_images(cfg.data.goals, "drawer_open", "heldout", 1)}
    planner = Planners(policy, dynamics, embedder, cfg.eval, goals, 0.02,
                       action_transform=action_transform_for(policy, dynamics)).make("dynaguide", "drawer_open")
    runner = GuidedPolicyRunner(policy, dynamics, trained=True)
    assert (runner.action_transform is not None) == (normalisers == "different")

    def node_tokens(frames: np.ndarray) -> np.ndarray:   # the embedding node: uint8 → [0, 1] → resize → embed
        with torch.no_grad():
            return embedder(resize_images(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0,
                                          embedder.image_size)).numpy()

    g = cfg.eval.guidance
    runner.set_guidance_tokens(node_tokens(goals["drawer_open"]), None,
                               runner.guidance_defaults.retuned(scale=g.scale, sigma=g.sigma,
                                                                stochastic_steps=g.stochastic_steps))
    frame = goals["drawer_open"][0]                       # any 64 px static frame
    images, proprio = np.stack([frame, frame]), np.zeros((2, 15), np.float32)
    harness = planner(Observation(to_image_tensor(images)[None], torch.from_numpy(proprio)[None], torch.zeros(1, 3),
                                  [torch.Generator().manual_seed(7)]))
    runner.generator = torch.Generator().manual_seed(7)
    graph = runner.act({"rgb_static": images}, proprio, node_tokens(frame[None])[0])
    assert graph.guided
    np.testing.assert_allclose(graph.actions, policy.unnormalize_actions(harness)[0].numpy(), atol=1e-4)


def test_rtc_latency_run_plans_with_the_previous_chunk_frozen_and_records_splices(tiny_setup, tmp_path):
    """Closed loop with latency 4 and RTC (tiny real models): every splice's jump is recorded, and the RTC chunk's
    first o + d steps agree with the previous chunk's actions that ran meanwhile (hard mode: exactly)."""
    from dynaguide.guidance.rtc import RTCConfig

    root, cfg = tiny_setup
    ev = dataclasses.replace(cfg.eval, trials=2, horizon=40, latency_steps=4,
                             rtc=RTCConfig(enabled=True, mode="hard"))
    run_experiment(dataclasses.replace(cfg, eval=ev), "articulated", ["dynaguide"], tmp_path / "rtc",
                   targets=["switch_on"], progress=False)
    for trial in read_trials(tmp_path / "rtc" / "trials" / "switch_on__dynaguide.jsonl"):
        assert len(trial["splice_jumps"]) >= (trial["steps"] - 4) // 8 - 1 >= 0   # hold -> chunk 1 not counted
        assert all(j >= 0 for j in trial["splice_jumps"])

    runner, slot = _slot_runner(4)
    runner.cfg = dataclasses.replace(runner.cfg, rtc=RTCConfig(enabled=True))
    assert runner._rtc_prefix([slot], 16, 7) == (None, None)          # no previous chunk: no prefix
    first = np.tile(np.linspace(-1, 1, 16)[:, None], (1, 7)).astype(np.float32)
    runner._actions_of_tick(slot, first, first)
    prefix, weights = runner._rtc_prefix([slot], 16, 7)
    np.testing.assert_array_equal(prefix[0, :8].numpy(), first[8:])   # aligned: new step i = previous step i + P
    assert torch.all(weights[0, :4] == 1) and torch.all(weights[0, 8:] == 0) and 0 < weights[0, 4] < 1


@pytest.mark.parametrize("latency", [0, 3, 8])
def test_splice_jumps_are_taken_where_execution_switches_chunks(latency):
    runner, slot = _slot_runner(latency)
    chunks = [np.full((16, 7), 0.1 * (k + 1)) for k in range(3)]
    for chunk in chunks:
        runner._actions_of_tick(slot, chunk)
    # lockstep and d < P: chunk 1 -> 2 -> 3 (two splices); d = P: each tick runs the previous chunk (one splice)
    expected = [np.sqrt(6) * 0.1] * (1 if latency == 8 else 2)
    np.testing.assert_allclose(slot.splice_jumps, expected, atol=1e-5)


def test_lockstep_rtc_pulls_the_overlap_towards_the_previous_plan_and_freezes_nothing():
    from calvin_bridge.config import CalvinEnvConfig as _EnvCfg
    from dynaguide_experiments.calvin.harness import CellRunner, _Slot
    from dynaguide.guidance.rtc import RTCConfig

    ev = EvalConfig(rtc=RTCConfig(enabled=True, mode="soft", jacobian=False))
    runner = CellRunner(_EnvCfg(), ev, np.zeros((1, 8)), 2, 8, lambda x: x)
    slot = _Slot(0, 0, [], [], np.zeros(3), torch.Generator(), hold=np.zeros(7))
    assert runner._rtc_prefix([slot], 16, 7) == (None, None)          # no previous plan yet
    plan = np.arange(16 * 7, dtype=np.float32).reshape(16, 7)
    runner._actions_of_tick(slot, plan, plan)
    prefix, weights = runner._rtc_prefix([slot], 16, 7)
    np.testing.assert_array_equal(prefix[0, :8].numpy(), plan[8:])      # the previous plan's unexecuted tail
    assert float(weights[0, 0]) < 1.0 and float(weights[0, 7]) > 0.0  # soft on the overlap, nothing frozen
    assert float(weights[0, 8:].abs().sum()) == 0.0


def test_a_policy_that_sees_the_gripper_camera_gets_its_frames_in_the_harness(tiny_setup, tmp_path):
    """A two-camera policy (static + wrist, as the paper's) runs through the harness: the planner's observation
    carries both cameras' last To frames, rendered by the real env, and the policy conditions on them."""
    from dynaguide_experiments.calvin.harness import CellRunner, Planners, Task

    root, cfg = tiny_setup
    torch.manual_seed(0)
    policy = DiffusionPolicy(DiffusionPolicyConfig.cpu(image_keys=("rgb_static", "rgb_gripper"), image_size=SIZE,
                                                       proprio_dim=15, action_dim=7, n_action_steps=8))
    policy.set_normalizer_stats(-torch.ones(7), torch.ones(7), -3 * torch.ones(15), 3 * torch.ones(15))
    save_checkpoint(tmp_path / "policy", policy, policy.cfg)
    seen = []
    encode = policy.encode_observation

    def spy(obs):
        seen.append({k: tuple(v.shape) for k, v in obs.items()})
        return encode(obs)

    policy.encode_observation = spy
    runner = CellRunner(CalvinEnvConfig(), cfg.eval, load_start_poses(cfg.data.validation), 2, 8,
                        policy.unnormalize_actions, cameras=policy.cfg.image_keys)
    planners = Planners(policy, None, None, cfg.eval, {}, max_rel_pos=0.02)
    records = []
    try:
        runner.run_cell(Task.single("switch_on"), 0, planners.make("base", "switch_on"), set(), records.append,
                        progress=False)
    finally:
        runner.close()
    assert len(records) == cfg.eval.trials and seen
    gripper = CalvinEnvConfig().gripper_camera
    for shapes in seen:
        assert shapes["rgb_gripper"][1:] == (2, 3, gripper.height, gripper.width)
        assert shapes["rgb_static"][1:3] == (2, 3) and shapes["rgb_static"][0] == shapes["rgb_gripper"][0]
    # and through the experiment command, with the policy loaded from its checkpoint
    result = run_experiment(cfg, "articulated", ["base"], tmp_path / "run", targets=["switch_on"], progress=False,
                            policy_dir=str(tmp_path / "policy"))
    assert result["behaviours"]["switch_on"]["base"]["n"] == cfg.eval.trials


@pytest.mark.parametrize("cameras", [("rgb_gripper",), ("rgb_static", "rgb_wrist"), ("rgb_static", "rgb_static")])
def test_model_config_refuses_policy_cameras_the_env_does_not_render(cameras):
    with pytest.raises(ValueError, match="policy_cameras"):
        ModelConfig(policy_cameras=cameras)


def _without_clock(result: dict) -> dict:
    """results.json without the wall-clock fields (stage seconds, machine load)."""
    return {k: v for k, v in result.items() if k not in ("stages_s", "machine")}


def _trial_records(out) -> dict:
    """Each cell's trial records in file order, without their wall-clock ``seconds``."""
    return {p.name: [{k: v for k, v in t.items() if k != "seconds"} for t in read_trials(p)]
            for p in sorted((out / "trials").glob("*.jsonl"))}


def test_ray_sweep_writes_the_sequential_runs_results(tiny_setup, tmp_path):
    """A local Ray cluster with 2 workers evaluates the cells and writes the same results.json (and trial records)
    as the sequential harness; a killed Ray sweep resumes, rerunning only its unfinished cells."""
    pytest.importorskip("ray")
    from dynaguide_experiments.calvin.ray_eval import RayEvalConfig

    root, cfg = tiny_setup
    methods, targets = ["base", "dynaguide"], ["switch_on", "drawer_open"]
    sequential = run_experiment(cfg, "articulated", methods, tmp_path / "seq", targets=targets, progress=False)
    # "killed" after one cell: its trials file is kept, the rest reruns on Ray
    (tmp_path / "ray" / "trials").mkdir(parents=True)
    kept = tmp_path / "seq" / "trials" / "switch_on__base.jsonl"
    (tmp_path / "ray" / "trials" / kept.name).write_text(kept.read_text())
    on_ray = run_experiment(cfg, "articulated", methods, tmp_path / "ray", targets=targets, progress=False,
                            ray=RayEvalConfig(workers=2))
    assert _without_clock(on_ray) == _without_clock(sequential)
    assert json.loads((tmp_path / "ray" / "results.json").read_text())["behaviours"] == sequential["behaviours"]
    assert _trial_records(tmp_path / "ray") == _trial_records(tmp_path / "seq")
    assert (tmp_path / "ray" / "trials" / kept.name).read_text() == kept.read_text()   # not rerun
    assert "ray_wall_s" in on_ray["stages_s"] and "switch_on/base_s" not in on_ray["stages_s"]
