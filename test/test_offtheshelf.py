"""Steering an off-the-shelf LeRobot policy on CALVIN: export to a LeRobotDataset, LeRobot training, the harness.

Real LeRobot 0.4.x classes throughout (tiny configs, a few steps): ``export_hdf5_to_lerobot`` writes with
LeRobot's ``LeRobotDataset.create/add_frame/save_episode`` and LeRobot reads it back; ``train_lerobot_diffusion``
trains, checkpoints and resumes with LeRobot's components; the CALVIN harness evaluates a LeRobot policy
(``policy_kind="lerobot"``), executing its chunks from ``action_offset`` and mapping its normalised actions into
the dynamics model's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from dynaguide.policy.lerobot_adapter import import_lerobot

try:
    import_lerobot()
except ImportError as exc:  # CI installs the extra: there a missing LeRobot is a failure
    if os.environ.get("CI"):
        raise
    pytest.skip(f"LeRobot is not installed ({exc})", allow_module_level=True)

from calvin_bridge.config import CalvinEnvConfig  # noqa: E402
from dynaguide.data.schema import Demo  # noqa: E402
from dynaguide.data.writer import write_demo  # noqa: E402
from dynaguide.datasets_external import export_hdf5_to_lerobot, lerobot_episodes, resize_frames  # noqa: E402

A, P = 7, 15


def _write_h5(path, lengths=(20, 24), size=48, seed=0, fail_last=False):
    rng = np.random.default_rng(seed)
    demos = []
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        for i, n in enumerate(lengths):
            demo = Demo(actions=rng.uniform(-1, 1, (n, A)).astype(np.float32),
                        images={"third_person": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)},
                        proprio=rng.normal(size=(n, P)).astype(np.float32), behaviour=f"b{i % 2}")
            success = not (fail_last and i == len(lengths) - 1)
            write_demo(data, demo, f"demo_{i}", attrs={"success": success})
            demos.append(demo)
    return demos


def test_export_writes_a_lerobot_dataset_lerobot_reads_back(tmp_path):
    demos = _write_h5(tmp_path / "a.h5", fail_last=True, lengths=(20, 24, 5))
    out = tmp_path / "ds"
    summary = export_hdf5_to_lerobot([tmp_path / "a.h5"], out, image_size=32, progress=False)
    assert summary["episodes"] == 2 and summary["frames"] == 44  # the failed segment skipped
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"].startswith("v3") and info["fps"] == 30
    assert info["features"]["observation.images.rgb_static"]["dtype"] == "image"
    assert info["features"]["observation.images.rgb_static"]["shape"] == [32, 32, 3]

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/ds", root=out)           # LeRobot's own reader, frame access included
    assert ds.num_episodes == 2 and len(ds) == 44
    item = ds[21]                                       # episode 1, frame 1
    np.testing.assert_allclose(item["action"].numpy(), demos[1].actions[1], atol=1e-6)
    np.testing.assert_allclose(item["observation.state"].numpy(), demos[1].proprio[1], atol=1e-6)
    want = resize_frames(demos[1].images["third_person"][1:2], 32)[0]
    got = (item["observation.images.rgb_static"].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(got, want)           # PNG: lossless
    episodes = list(lerobot_episodes(out))              # our reader agrees
    assert [len(e) for e in episodes] == [20, 24] and episodes[0].behaviour == "b0"

    again = export_hdf5_to_lerobot([tmp_path / "a.h5"], out, image_size=32, progress=False)
    assert "skipped" in again                           # an existing dataset is kept (rerun = resume)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot_data")
    _write_h5(root / "a.h5", lengths=(30, 30, 30), size=32)
    export_hdf5_to_lerobot([root / "a.h5"], root / "ds", progress=False)
    return root / "ds"


def test_lerobot_training_checkpoints_resumes_and_exports(tiny_dataset, tmp_path):
    from dynaguide.lerobot_training import LeRobotTrainSettings, train_lerobot_diffusion
    from dynaguide.policy.lerobot_adapter import LeRobotDiffusionAdapter, load_policy

    small = dict(dataset=str(tiny_dataset), out=str(tmp_path / "run"), batch_size=4, save_freq=2, log_freq=1,
                 crop=28, down_dims=(16, 32), warmup_steps=1)
    first = train_lerobot_diffusion(LeRobotTrainSettings(steps=2, **small), progress=False)
    assert first["steps"] == 2 and first["resumed_from"] is None and np.isfinite(first["final_loss"])
    second = train_lerobot_diffusion(LeRobotTrainSettings(steps=3, **small), progress=False)
    assert second["steps"] == 3 and second["resumed_from"].endswith("000002")
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert (tmp_path / "run" / "checkpoints" / "000002" / "pretrained_model" / "train_config.json").is_file()
    policy = load_policy("lerobot", tmp_path / "run" / "pretrained_model", image_keys=("rgb_static",))
    assert isinstance(policy, LeRobotDiffusionAdapter)
    assert (policy.horizon, policy.action_dim, policy.n_obs_steps, policy.action_offset) == (16, A, 2, 1)


# ------------------------------------------------------------------------------------------ the harness
SIZE = 48


@pytest.fixture(scope="module")
def harness_setup(tmp_path_factory):
    """val/goals data, our dynamics model (action stats ±1) and a LeRobot policy (other action stats)."""
    from calvin_bridge.datasets import CollectConfig, collect, make_goals
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    from dynaguide.checkpoint import save_checkpoint
    from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel
    from dynaguide.embedders.factory import EmbedderConfig, make_embedder
    from dynaguide_experiments.calvin.config import (CalvinExperimentConfig, DataConfig, EvalConfig, ModelConfig,
                                                     TrainingConfig)

    root = tmp_path_factory.mktemp("offtheshelf_harness")
    base = CalvinEnvConfig()
    env_cfg = dataclasses.replace(base, static_camera=dataclasses.replace(base.static_camera, width=SIZE, height=SIZE))
    collect(env_cfg, CollectConfig(num_demos=2, seed=3_000_000), root / "val.h5", progress=False)
    make_goals(env_cfg, root / "goals.h5", per_behaviour=1, behaviours=("switch_on",), progress=False)
    embedder_cfg = EmbedderConfig(kind="random", image_size=SIZE, patch_size=16, dim=32)
    embedder = make_embedder(embedder_cfg)
    torch.manual_seed(0)
    dynamics = LatentDynamicsModel(LatentDynamicsConfig.cpu(embed_tokens=embedder.num_tokens, embed_dim=embedder.dim,
                                                            pool=1, proprio_dim=P, action_dim=A, horizon=16))
    dynamics.set_normalizer_stats(-torch.ones(A), torch.ones(A), -3 * torch.ones(P), 3 * torch.ones(P))
    save_checkpoint(root / "models" / "dynamics", dynamics, dynamics.cfg)
    config = DiffusionConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (P,)),
                        "observation.images.rgb_static": PolicyFeature(FeatureType.VISUAL, (3, 32, 32))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (A,))}, n_obs_steps=2, horizon=16,
        n_action_steps=8, down_dims=(16, 32), kernel_size=3, n_groups=4, diffusion_step_embed_dim=16,
        spatial_softmax_num_keypoints=8, num_inference_steps=4, pretrained_backbone_weights=None, device="cpu",
        push_to_hub=False)
    stats = {"observation.state": {"min": -3 * torch.ones(P), "max": 3 * torch.ones(P)},
             "action": {"min": -0.5 * torch.ones(A), "max": 2 * torch.ones(A)},
             "observation.images.rgb_static": {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25)}}
    pre, post = make_diffusion_pre_post_processors(config, dataset_stats=stats)
    lerobot_dir = root / "lerobot_policy"
    DiffusionPolicy(config).save_pretrained(lerobot_dir)
    pre.save_pretrained(lerobot_dir)
    post.save_pretrained(lerobot_dir)
    cfg = CalvinExperimentConfig(
        data=DataConfig(train=(), merged="", validation=str(root / "val.h5"), goals=str(root / "goals.h5"),
                        static_size=SIZE),
        embedder=embedder_cfg, model=ModelConfig(policy_image_size=SIZE),
        training=TrainingConfig(export_dir=str(root / "models")),
        eval=EvalConfig(trials=2, horizon=16, batch_envs=2, goals_per_target=1))
    return root, cfg, lerobot_dir


def test_harness_maps_lerobot_actions_into_the_dynamics_models_space(harness_setup):
    from dynaguide.guidance.objectives import action_transform_for
    from dynaguide_experiments.calvin.evaluate import load_models

    root, cfg, lerobot_dir = harness_setup
    with pytest.raises(ValueError, match="normalise actions differently"):
        load_models(cfg, str(lerobot_dir), policy_kind="lerobot")          # strict by default, as before
    policy, dynamics = load_models(cfg, str(lerobot_dir), policy_kind="lerobot", map_actions=True)
    transform = action_transform_for(policy, dynamics)
    assert transform is not None
    x = torch.linspace(-1, 1, 16 * A).reshape(1, 16, A).requires_grad_(True)
    y = transform(x)
    raw = (x + 1) / 2 * 2.5 - 0.5                                          # LeRobot min/max −0.5 … 2
    torch.testing.assert_close(y, raw, atol=1e-5, rtol=0)                  # dynamics min/max ±1: raw = normalised
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 1.25))           # differentiable: d y / d x = 2.5 / 2
    same = SimpleNamespace(horizon=16, action_dim=A, action_normalizer=dynamics.action_normalizer)
    assert action_transform_for(same, dynamics) is None                    # same stats: no mapping


def test_harness_evaluates_a_lerobot_policy_from_its_action_offset(harness_setup, tmp_path, monkeypatch):
    from dynaguide_experiments.calvin import harness
    from dynaguide_experiments.calvin.evaluate import run_experiment
    from dynaguide_experiments.calvin.harness import read_trials

    root, cfg, lerobot_dir = harness_setup
    executed = []
    original = harness.CellRunner._actions_of_tick

    def spy(self, slot, chunk, normalised=None):
        actions = original(self, slot, chunk, normalised)
        executed.append((self.action_offset, chunk, actions))
        return actions

    monkeypatch.setattr(harness.CellRunner, "_actions_of_tick", spy)
    result = run_experiment(cfg, "articulated", ["base", "dynaguide"], tmp_path / "out", targets=["switch_on"],
                            policy_dir=str(lerobot_dir), policy_kind="lerobot", progress=False)
    for method in ("base", "dynaguide"):
        assert len(read_trials(tmp_path / "out" / "trials" / f"switch_on__{method}.jsonl")) == 2
        assert result["behaviours"]["switch_on"][method]["n"] == 2
    assert executed and all(offset == 1 for offset, _, _ in executed)
    for _, chunk, actions in executed:
        np.testing.assert_array_equal(actions, chunk[1:9])               # LeRobot's now = chunk step To − 1


def test_action_offset_shifts_lockstep_and_latency_execution():
    from dynaguide_experiments.calvin.config import EvalConfig
    from dynaguide_experiments.calvin.harness import CellRunner, _Slot

    chunk = np.arange(16.0)[:, None].repeat(7, axis=1)
    hold = np.zeros(7)
    runner = CellRunner(CalvinEnvConfig(), EvalConfig(), np.zeros((1, 8)), 2, 8, lambda x: x, action_offset=1)
    slot = _Slot(0, 0, [], [], np.zeros(3), torch.Generator(), hold=hold)
    np.testing.assert_array_equal(runner._actions_of_tick(slot, chunk)[:, 0], np.arange(1.0, 9.0))
    runner = CellRunner(CalvinEnvConfig(), EvalConfig(latency_steps=2), np.zeros((1, 8)), 2, 8, lambda x: x,
                        action_offset=1)
    slot = _Slot(0, 0, [], [], np.zeros(3), torch.Generator(), hold=hold)
    np.testing.assert_array_equal(runner._actions_of_tick(slot, chunk)[:, 0], [0, 0, 3, 4, 5, 6, 7, 8])
    np.testing.assert_array_equal(runner._actions_of_tick(slot, 100 + chunk)[:, 0],
                                  [9, 10, 103, 104, 105, 106, 107, 108])
    runner = CellRunner(CalvinEnvConfig(), EvalConfig(latency_steps=8), np.zeros((1, 8)), 2, 8, lambda x: x,
                        action_offset=1)
    with pytest.raises(ValueError, match="action_offset 1"):
        runner._actions_of_tick(slot, chunk)


def test_offtheshelf_results_have_the_issues_shape(tmp_path):
    from dynaguide_experiments.calvin.offtheshelf import offtheshelf_results

    cell = {"distribution": {"switch_on": 1}, "mean_steps": 10.0}
    harness_run = {"behaviours": {"switch_on": {"base": {"rate": 0.1, "n": 20, "ci95": [0.03, 0.3], **cell},
                                                "dynaguide": {"rate": 0.5, "n": 20, "ci95": [0.3, 0.7], **cell}}},
                   "command": "dynaguide calvin eval ...", "settings": {}}
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "results.json").write_text(json.dumps(harness_run))
    offtheshelf_results(tmp_path / "h", tmp_path / "out")
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert result["lerobot_version"] == "0.4.4" and result["command"] == "dynaguide calvin eval ..."
    row = result["targets"]["switch_on"]
    assert row["base"]["rate"] == 0.1 and row["dynaguide"]["n"] == 20 and row["dynaguide"]["ci95"] == [0.3, 0.7]
    assert row["target_met"] is True                                        # 50 % ≥ 3 × 10 % and ≥ 50 %
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| switch_on | 10 % [3, 30] (n=20) | 50 % [30, 70] (n=20) | yes |" in table
