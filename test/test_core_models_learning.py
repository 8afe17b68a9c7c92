"""Slow: the models learn a small visual task (run with ``-m slow``).

Task: a bright bar sits in the upper or lower half of a 16x16 image; demos from the upper half move
right (+1), from the lower half left (-1).  The policy must read the image to act; the dynamics model
must predict where the bar ends up.
"""

import numpy as np
import pytest
import torch

from dynaguide.data.datasets import DynamicsDataset, PolicyDataset
from dynaguide.data.embedding_cache import embed_demos
from dynaguide.data.schema import Demo
from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel
from dynaguide.embedders.random_patch import RandomPatchEmbedder
from dynaguide.policy import DiffusionPolicy, DiffusionPolicyConfig
from dynaguide.training import TrainConfig, train_dynamics, train_policy

pytestmark = pytest.mark.slow




def _frame(row, col, size=16):
    img = np.zeros((size, size, 3), np.uint8)
    img[row:row + 3, int(col):int(col) + 3] = 255
    return img


def _demos(n=8, length=10):
    demos = []
    for i in range(n):
        upper = i % 2 == 0
        row, direction = (2, 1.0) if upper else (11, -1.0)
        cols = np.clip(6.5 + direction * np.arange(length) * 0.7, 0, 13)
        demos.append(Demo(
            actions=np.stack([np.full(length, direction), np.zeros(length)], 1),
            images={"rgb": np.stack([_frame(row, c) for c in cols])},
            proprio=np.stack([cols, np.full(length, row)], 1),
            behaviour="right" if upper else "left",
        ))
    return demos


def test_policy_reads_the_image_to_choose_the_direction(tmp_path):
    demos = _demos()
    ds = PolicyDataset(demos, ["rgb"], n_obs_steps=2, horizon=8)
    torch.manual_seed(0)
    policy = DiffusionPolicy(DiffusionPolicyConfig.cpu(image_size=16, proprio_dim=2, action_dim=2, horizon=8,
                                                       cnn_width=16, num_keypoints=8, down_dims=(32, 64),
                                                       step_embed_dim=32))
    cfg = TrainConfig(steps=400, batch_size=32, lr=2e-3, ema_decay=0.0, progress=False, plot=False,
                      checkpoint_every=400, val_every=400)
    train_policy(policy, ds, cfg, tmp_path / "policy")
    policy.eval()
    for demo, sign in ((demos[0], 1.0), (demos[1], -1.0)):
        obs = {"rgb": torch.from_numpy(demo.images["rgb"][[0, 0]]).permute(0, 3, 1, 2).float()[None].div(255)
               .expand(8, -1, -1, -1, -1),
               "proprio": torch.from_numpy(demo.proprio[[0, 0]])[None].expand(8, -1, -1)}
        actions = policy.sample_actions(obs, generator=torch.Generator().manual_seed(0))
        assert (torch.sign(actions[..., 0].mean(-1)) == sign).all(), actions[..., 0]


def test_dynamics_predicts_the_outcome_better_than_the_current_frame(tmp_path):
    demos = _demos()
    emb = RandomPatchEmbedder(image_size=16, patch_size=4, dim=16, seed=0)
    tokens = embed_demos(demos, emb, "rgb")
    ds = DynamicsDataset(demos, "rgb", horizon=8, tokens=tokens)
    torch.manual_seed(0)
    model = LatentDynamicsModel(LatentDynamicsConfig.cpu(embed_tokens=16, embed_dim=16, pool=1, model_dim=64,
                                                         n_heads=4, n_layers=2, proprio_dim=2, action_dim=2,
                                                         horizon=8))
    cfg = TrainConfig(steps=400, batch_size=32, lr=1e-3, ema_decay=0.0, progress=False, plot=False,
                      checkpoint_every=400, val_every=400)
    train_dynamics(model, ds, cfg, tmp_path / "dyn")
    model.eval()
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    with torch.no_grad():
        pred = model(batch["obs_tokens"], batch["proprio"], model.action_normalizer.normalize(batch["actions"]))
    err_model = (pred - batch["target_tokens"]).pow(2).mean().item()
    err_copy = (batch["obs_tokens"] - batch["target_tokens"]).pow(2).mean().item()  # "nothing moves" baseline
    assert err_model < 0.25 * err_copy, (err_model, err_copy)
    # and the prediction is closer to its own demo's final frame than to the opposite demo's
    right_final, left_final = torch.from_numpy(tokens["demo_0"][-1]), torch.from_numpy(tokens["demo_1"][-1])
    labels = [ds.source.behaviour[n] for n, _ in ds.index]
    d_right = (pred - right_final).flatten(1).norm(dim=1)
    d_left = (pred - left_final).flatten(1).norm(dim=1)
    correct = [(dr < dl) == (lab == "right") for dr, dl, lab in zip(d_right, d_left, labels)]
    assert np.mean(correct) > 0.95
