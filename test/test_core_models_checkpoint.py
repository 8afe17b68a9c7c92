"""Checkpoints: safetensors + JSON round trips bit for bit; pickles are refused."""

import json
import pickle

import pytest
import torch

from dynaguide.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel
from dynaguide.policy import DiffusionPolicy, DiffusionPolicyConfig
from dynaguide.training import EMA



def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def _perturb(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 1e-3)


def test_policy_round_trip_with_normalizer_stats_and_ema(tmp_path):
    torch.manual_seed(0)
    cfg = DiffusionPolicyConfig.cpu(proprio_dim=3, action_dim=2, image_size=32, goal_conditioned=True,
                                    n_action_steps=14)
    policy = DiffusionPolicy(cfg)
    policy.set_normalizer_stats(torch.tensor([-0.3, 1.0]), torch.tensor([0.7, 3.0]), torch.zeros(3), torch.ones(3) / 3)
    ema = EMA(policy, 0.99)
    _perturb(policy)  # raw and EMA weights now differ
    save_checkpoint(tmp_path / "ck", policy, cfg, {"note": "x"}, ema_model=ema.model, step=7)
    raw, cfg2 = load_checkpoint(tmp_path / "ck", weights="model")
    assert cfg2 == cfg
    _assert_same_state(raw, policy)
    assert torch.equal(raw.action_normalizer.max, torch.tensor([0.7, 3.0]))
    assert raw.normalizers_fitted
    ema_loaded, _ = load_checkpoint(tmp_path / "ck")  # auto -> EMA
    _assert_same_state(ema_loaded, ema.model)
    meta = read_checkpoint_meta(tmp_path / "ck")
    assert (meta["kind"], meta["step"], meta["extra"]) == ("diffusion_policy", 7, {"note": "x"})
    # the loaded policy computes exactly what the saved one does
    obs = {"rgb": torch.rand(2, 2, 3, 32, 32), "proprio": torch.rand(2, 2, 3), "goal_image": torch.rand(2, 3, 32, 32)}
    policy.eval()
    with torch.no_grad():
        x, t = torch.randn(2, 16, 2), torch.tensor([3, 40])
        assert torch.equal(policy.predict_noise(x, t, policy.encode_observation(obs)),
                           raw.predict_noise(x, t, raw.encode_observation(obs)))


@pytest.mark.parametrize("make_cfg", [LatentDynamicsConfig.paper, LatentDynamicsConfig.cpu])
def test_dynamics_round_trip(tmp_path, make_cfg):
    torch.manual_seed(0)
    cfg = make_cfg()
    model = LatentDynamicsModel(cfg)
    model.set_normalizer_stats(-torch.ones(7), torch.ones(7) * 2, torch.zeros(15), torch.ones(15))
    save_checkpoint(tmp_path / "dyn", model, cfg)
    loaded, cfg2 = load_checkpoint(tmp_path / "dyn")
    assert cfg2 == cfg and isinstance(loaded, LatentDynamicsModel)
    _assert_same_state(loaded, model)


def test_pickles_are_refused_with_a_clear_error(tmp_path):
    model = LatentDynamicsModel(LatentDynamicsConfig.cpu(n_layers=1))
    for name in ("model.pt", "model.pth", "weights.ckpt", "stuff.pkl"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps({"w": [1, 2, 3]}))
        with pytest.raises(ValueError, match="refusing to load .*pickle"):
            load_checkpoint(path)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "policy.pth").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(ValueError, match=r"refusing to load pickle file\(s\) \['policy.pth'\]"):
        load_checkpoint(legacy)
    # a pickle disguised under the safetensors name is rejected by the safetensors parser, not unpickled
    save_checkpoint(tmp_path / "ok", model, model.cfg)
    (tmp_path / "ok" / "model.safetensors").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        load_checkpoint(tmp_path / "ok")


def test_bad_checkpoints_raise(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing")
    model = LatentDynamicsModel(LatentDynamicsConfig.cpu(n_layers=1))
    save_checkpoint(tmp_path / "ck", model, model.cfg)
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    meta["kind"] = "mystery"
    (tmp_path / "ck" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown model kind 'mystery'"):
        load_checkpoint(tmp_path / "ck")
    with pytest.raises(ValueError, match="dataclass"):
        save_checkpoint(tmp_path / "x", model, {"not": "a dataclass"})
    save_checkpoint(tmp_path / "ck2", model, model.cfg)
    with pytest.raises(ValueError, match="no EMA"):
        load_checkpoint(tmp_path / "ck2", weights="ema")


def test_custom_kinds_can_be_registered(tmp_path):
    from dataclasses import dataclass

    from dynaguide.checkpoint import register_checkpoint_kind

    @dataclass
    class TinyConfig:
        width: int = 3

    class Tiny(torch.nn.Module):
        checkpoint_kind = "test_tiny"

        def __init__(self, cfg):
            super().__init__()
            self.cfg = cfg
            self.lin = torch.nn.Linear(cfg.width, 1)

    with pytest.raises(ValueError, match="no registered checkpoint kind"):
        save_checkpoint(tmp_path / "t", Tiny(TinyConfig()), TinyConfig())
    register_checkpoint_kind("test_tiny", TinyConfig, Tiny)
    model = Tiny(TinyConfig(width=5))
    save_checkpoint(tmp_path / "t", model, model.cfg)
    loaded, cfg = load_checkpoint(tmp_path / "t")
    assert cfg == TinyConfig(width=5)
    _assert_same_state(loaded, model)
