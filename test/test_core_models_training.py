"""Training loops: the loss goes down, and an interrupted run resumes at the same step, bit for bit."""

import json

import numpy as np
import pytest
import torch

from dynaguide.checkpoint import load_checkpoint, read_checkpoint_meta
from dynaguide.data.datasets import DynamicsDataset, PolicyDataset
from dynaguide.data.embedding_cache import embed_demos
from dynaguide.data.schema import Demo
from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel
from dynaguide.embedders.random_patch import RandomPatchEmbedder
from dynaguide.policy import DiffusionPolicy, DiffusionPolicyConfig
from dynaguide.training import (
    TrainConfig,
    _DynamicsLoss,
    _classifier_loss,
    _policy_loss,
    evaluate,
    train_classifier,
    train_dynamics,
    train_model,
    train_policy,
)
from dynaguide_experiments.blocktouch.classifier import OutcomeClassifier, OutcomeClassifierConfig



def _demos(n=6, length=12, size=16, seed=0):
    """Each demo moves a bright square left or right; actions are the (noisy) velocity, proprio the position."""
    rng = np.random.default_rng(seed)
    demos = []
    for i in range(n):
        direction = 1.0 if i % 2 == 0 else -1.0
        pos = np.clip(8 + direction * np.arange(length) * 0.5, 0, size - 3)
        images = np.zeros((length, size, size, 3), np.uint8)
        for t, x in enumerate(pos.astype(int)):
            images[t, 6:10, x:x + 3] = 255
        actions = np.stack([np.full(length, direction), rng.normal(0, 0.1, length)], 1)
        proprio = np.stack([pos, np.zeros(length)], 1)
        demos.append(Demo(actions=actions, images={"rgb": images}, proprio=proprio,
                          behaviour="right" if direction > 0 else "left"))
    return demos


def _policy():
    torch.manual_seed(0)
    cfg = DiffusionPolicyConfig.cpu(image_size=16, proprio_dim=2, action_dim=2, horizon=8, cnn_width=16,
                                    num_keypoints=8, down_dims=(16, 32), step_embed_dim=16)
    return DiffusionPolicy(cfg)


def _cfg(**kw):
    base = dict(steps=60, batch_size=8, lr=3e-3, val_every=30, val_batches=2, checkpoint_every=10, progress=False,
                ema_decay=0.9, seed=0, plot=False)
    base.update(kw)
    return TrainConfig(**base)


def test_policy_training_decreases_loss_and_checkpoints(tmp_path):
    ds = PolicyDataset(_demos(), ["rgb"], n_obs_steps=2, horizon=8)
    policy = _policy()
    cfg = _cfg(plot=True)
    policy.set_normalizer_stats(**{k: torch.as_tensor(v) for k, v in ds.stats().items()})
    before = evaluate(policy, _policy_loss, ds, cfg)
    result = train_policy(policy, ds, cfg, tmp_path / "run", val_data=ds)
    after = evaluate(result.model, _policy_loss, ds, cfg)
    assert after < 0.6 * before, (before, after)
    assert result.step == 60 and result.resumed_from is None
    assert [s for s, _ in result.val_losses] == [30, 60]
    meta = read_checkpoint_meta(tmp_path / "run" / "latest")
    assert meta["step"] == 60 and meta["extra"]["train_config"]["steps"] == 60
    loaded, _ = load_checkpoint(tmp_path / "run" / "latest")  # EMA weights by default
    for k, v in result.ema_model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_loss_ema" in x for x in lines) and lines[-1]["step"] == 60
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_interrupted_training_resumes_at_the_same_step_bit_for_bit(tmp_path):
    ds = PolicyDataset(_demos(), ["rgb"], n_obs_steps=2, horizon=8)
    cfg = _cfg(steps=9, checkpoint_every=3)
    straight = train_policy(_policy(), ds, cfg, tmp_path / "a")

    calls = {"n": 0}

    def crashing_loss(model, batch, generator):
        calls["n"] += 1
        if calls["n"] == 8:  # crash during step 8; the last checkpoint is at step 6
            raise KeyboardInterrupt
        return _policy_loss(model, batch, generator)

    policy = _policy()
    with pytest.raises(KeyboardInterrupt):
        train_model(policy, policy.cfg, crashing_loss, ds, cfg, tmp_path / "b")
    assert read_checkpoint_meta(tmp_path / "b" / "latest")["step"] == 6
    resumed = train_policy(_policy(), ds, cfg, tmp_path / "b")
    assert resumed.resumed_from == 6 and resumed.step == 9
    assert [s for s, _ in resumed.train_losses] == [7, 8, 9]
    assert resumed.train_losses == straight.train_losses[6:]
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for k, v in straight.ema_model.state_dict().items():
        assert torch.equal(v, resumed.ema_model.state_dict()[k]), k


def test_dynamics_training_with_cached_tokens_decreases_loss(tmp_path):
    demos = _demos()
    emb = RandomPatchEmbedder(image_size=16, patch_size=4, dim=16, seed=0)
    tokens = embed_demos(demos, emb, "rgb")
    ds = DynamicsDataset(demos, "rgb", horizon=8, tokens=tokens)
    torch.manual_seed(0)
    model = LatentDynamicsModel(LatentDynamicsConfig.cpu(
        embed_tokens=16, embed_dim=16, pool=2, model_dim=32, n_heads=4, n_layers=2, proprio_dim=2, action_dim=2,
        horizon=8))
    cfg = _cfg(steps=40, lr=3e-3)
    model.set_normalizer_stats(**{k: torch.as_tensor(v) for k, v in ds.stats().items()})
    loss_fn = _DynamicsLoss(None)
    before = evaluate(model, loss_fn, ds, cfg)
    result = train_dynamics(model, ds, cfg, tmp_path / "dyn", val_data=ds)
    after = evaluate(result.model, loss_fn, ds, cfg)
    assert after < 0.5 * before, (before, after)
    # on-the-fly embedding gives the same loss as the cache
    ds_img = DynamicsDataset(demos, "rgb", horizon=8)
    assert abs(evaluate(result.model, _DynamicsLoss(emb), ds_img, cfg) - after) < 1e-4


def test_classifier_training_decreases_loss(tmp_path):
    ds = DynamicsDataset(_demos(), "rgb", horizon=8, class_names=["left", "right"])
    torch.manual_seed(0)
    model = OutcomeClassifier(OutcomeClassifierConfig(num_classes=2, image_size=16, cnn_width=16, num_keypoints=8,
                                                      hidden_dim=32, horizon=8))
    cfg = _cfg(steps=25)
    model.set_normalizer_stats(**{k: torch.as_tensor(v) for k, v in ds.stats().items()})
    before = evaluate(model, _classifier_loss, ds, cfg)
    result = train_classifier(model, ds, cfg, tmp_path / "cls")
    after = evaluate(result.model, _classifier_loss, ds, cfg)
    assert after < 0.5 * before, (before, after)


def test_generic_dataset_stats_are_fitted_when_missing(tmp_path):
    class Plain(torch.utils.data.Dataset):
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            return self.inner[i]

    inner = PolicyDataset(_demos(n=2), ["rgb"], n_obs_steps=2, horizon=8)
    policy = _policy()
    train_policy(policy, Plain(inner), _cfg(steps=1), tmp_path / "p")
    stats = inner.stats()
    assert torch.allclose(policy.action_normalizer.min, torch.as_tensor(stats["action_min"]))
    assert torch.allclose(policy.proprio_normalizer.max, torch.as_tensor(stats["proprio_max"]))


def test_train_config_from_yaml_and_validation(tmp_path):
    from dynaguide.config import ConfigError, from_dict, load_config

    (tmp_path / "t.yaml").write_text("train:\n  steps: 5\n  betas: [0.9, 0.99]\n  lr_schedule: cosine\n")
    cfg = load_config(TrainConfig, tmp_path / "t.yaml", section="train")
    assert (cfg.steps, cfg.betas, cfg.lr_schedule) == (5, (0.9, 0.99), "cosine")
    with pytest.raises(ConfigError, match="lr_schedule"):
        from_dict(TrainConfig, {"lr_schedule": "step"})
    with pytest.raises(ConfigError, match="ema_decay"):
        from_dict(TrainConfig, {"ema_decay": 1.0})
