"""Dynamics checkpoints record the embedder they were trained on; the runner refuses other embedders' tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dynaguide.checkpoint import load_checkpoint, save_checkpoint
from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel
from dynaguide.embedders.identity import embedder_id, embedder_identity
from dynaguide.embedders.random_patch import RandomPatchEmbedder
from dynaguide.policy import DiffusionPolicy, DiffusionPolicyConfig
from dynaguide.guided_runner import EmbedderMismatchError, GuidedPolicyRunner, RunnerConfig


def _embedder(seed: int = 0) -> RandomPatchEmbedder:
    return RandomPatchEmbedder(image_size=16, patch_size=4, dim=8, seed=seed)  # 4x4 grid = 16 tokens x 8


def _dynamics(embedder=None, **overrides) -> LatentDynamicsModel:
    torch.manual_seed(0)
    if embedder is not None:
        cfg = LatentDynamicsConfig.for_embedder(embedder, "cpu", proprio_dim=15, action_dim=7, horizon=16, **overrides)
    else:
        cfg = LatentDynamicsConfig.cpu(embed_tokens=16, embed_dim=8, proprio_dim=15, action_dim=7, horizon=16)
    model = LatentDynamicsModel(cfg)
    model.set_normalizer_stats(-torch.ones(7), torch.ones(7), -3 * torch.ones(15), 3 * torch.ones(15))
    return model


def _runner(dynamics) -> GuidedPolicyRunner:
    torch.manual_seed(1)
    policy = DiffusionPolicy(DiffusionPolicyConfig.cpu(image_keys=("rgb_static",), image_size=48, proprio_dim=15,
                                                       action_dim=7))
    policy.set_normalizer_stats(-torch.ones(7), torch.ones(7), -3 * torch.ones(15), 3 * torch.ones(15))
    return GuidedPolicyRunner(policy, dynamics, trained=False)


def test_dynamics_config_records_the_embedder_and_the_checkpoint_keeps_it(tmp_path):
    emb = _embedder()
    cfg = LatentDynamicsConfig.for_embedder(emb, "cpu", proprio_dim=15, action_dim=7, horizon=16)
    assert (cfg.embed_tokens, cfg.embed_dim, cfg.pool) == (16, 8, 1)  # a 4x4 grid is kept unpooled
    assert cfg.embedder == embedder_identity(emb) and cfg.embedder_id == embedder_id(emb)
    big = RandomPatchEmbedder(image_size=32, patch_size=4, dim=8)  # 8x8 grid → pooled 2x2 per cell → 4x4
    assert LatentDynamicsConfig.for_embedder(big, "cpu").pool == 2
    model = _dynamics(emb)
    save_checkpoint(tmp_path / "dyn", model, model.cfg)
    meta = json.loads((tmp_path / "dyn" / "config.json").read_text())
    assert meta["config"]["embedder"]["weights_sha256"] == embedder_identity(emb)["weights_sha256"]
    loaded, loaded_cfg = load_checkpoint(tmp_path / "dyn")
    assert loaded_cfg.embedder == cfg.embedder and loaded_cfg.embedder_id == embedder_id(emb)
    # an older checkpoint (no "embedder" key in its config) still loads: nothing recorded
    del meta["config"]["embedder"]
    (tmp_path / "dyn" / "config.json").write_text(json.dumps(meta))
    _, old_cfg = load_checkpoint(tmp_path / "dyn")
    assert old_cfg.embedder is None and old_cfg.embedder_id is None
    # the recorded identity must fit the token geometry
    with pytest.raises(ValueError, match="does not match embed_tokens"):
        LatentDynamicsConfig.cpu(embed_tokens=64, embed_dim=8, embedder=embedder_identity(emb))
    with pytest.raises(ValueError, match="not an embedder identity"):
        LatentDynamicsConfig.cpu(embed_tokens=16, embed_dim=8, embedder={"grid": [4, 4], "dim": 8})


def test_runner_refuses_tokens_of_another_embedder_with_a_clear_message(tmp_path):
    trained_on, other = _embedder(seed=0), _embedder(seed=1)  # same geometry, different latent space
    good_id, bad_id = embedder_id(trained_on), embedder_id(other)
    assert good_id != bad_id
    runner = _runner(_dynamics(trained_on))
    assert runner.expected_embedder_id == good_id
    rng = np.random.default_rng(0)
    goals = rng.standard_normal((2, 16, 8)).astype(np.float32)
    g = runner.set_guidance_tokens(goals, None,
                                   runner.guidance_defaults.retuned(stochastic_steps=1),
                                   embedder_ids=[good_id, good_id])
    assert runner.guidance is g
    with pytest.raises(EmbedderMismatchError) as info:
        runner.set_guidance_tokens(goals, None, embedder_ids=[good_id, bad_id])
    message = str(info.value)
    assert bad_id in message and good_id in message and "refusing" in message and "goal 1" in message
    assert isinstance(info.value, ValueError)
    assert runner.guidance is g                                    # previous guidance still in force
    runner.set_guidance_tokens(goals, None,
                               runner.guidance_defaults.retuned(stochastic_steps=1),
                               embedder_ids="")  # unknown provenance: accepted
    images = {"rgb_static": rng.integers(0, 256, (2, 48, 48, 3), dtype=np.uint8)}
    proprio = rng.standard_normal((2, 15)).astype(np.float32)
    obs = rng.standard_normal((16, 8)).astype(np.float32)
    with pytest.raises(EmbedderMismatchError, match="observation tokens come from embedder"):
        runner.act(images, proprio, obs, bad_id)
    assert runner.act(images, proprio, obs, good_id).guided
    assert runner.act(images, proprio, obs).guided                 # no id given: not checked
    # from a checkpoint through RunnerConfig
    model = _dynamics(trained_on)
    save_checkpoint(tmp_path / "dyn", model, model.cfg)
    from_cfg = GuidedPolicyRunner.from_config(RunnerConfig(dynamics_checkpoint=str(tmp_path / "dyn")))
    assert from_cfg.expected_embedder_id == good_id
    with pytest.raises(EmbedderMismatchError):
        from_cfg.check_embedder_id(bad_id)


def test_runner_without_a_recorded_embedder_checks_nothing():
    runner = _runner(_dynamics(None))
    assert runner.expected_embedder_id is None
    rng = np.random.default_rng(1)
    runner.set_guidance_tokens(rng.standard_normal((1, 16, 8)), None,
                               runner.guidance_defaults.retuned(stochastic_steps=1),
                               embedder_ids=["anything@1/p1:000000000000"])
    runner.check_embedder_id("something else")
