"""A LeRobotDataset as training data: its episodes decode (video frames at each row's timestamp) and a dynamics model
for a LeRobot policy trains from it with that policy's action stats and horizon.

Writes a tiny dataset with LeRobot's own LeRobotDataset.create / add_frame / save_episode (a *video* camera: AV1
encoding works here).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

# a tiny model on the random embedder: 56 px / 14 px patches = 4 x 4 tokens of 32
TINY = ["--embedder", "random", "--embedder-image-size", "56", "--embedder-dim", "32", "--set", "model_dim=32",
        "--set", "n_layers=1", "--set", "n_heads=2", "--set", "pool=1", "--steps", "4", "--batch-size", "8",
        "--threads", "1", "--no-progress", "--no-plot"]


def _cli(*args: str) -> int:
    from dynaguide_cli.main import main

    return main(list(args))


def _lerobot_dataset(root: Path, episodes: int = 3, frames: int = 20):
    from dynaguide.policy.lerobot_adapter import _import_torchvision

    _import_torchvision()
    lerobot_dataset = pytest.importorskip("lerobot.datasets.lerobot_dataset")
    features = {"observation.images.top": {"dtype": "video", "shape": (48, 48, 3),
                                           "names": ["height", "width", "channels"]},
                "observation.state": {"dtype": "float32", "shape": (5,), "names": None},
                "action": {"dtype": "float32", "shape": (4,), "names": None}}
    ds = lerobot_dataset.LeRobotDataset.create("local/tiny", fps=10, root=root, features=features, use_videos=True)
    for ep in range(episodes):
        for i in range(frames):
            ds.add_frame({"observation.images.top": np.full((48, 48, 3), 10 * i + ep, np.uint8),
                          "observation.state": np.full(5, i, np.float32),
                          "action": np.full(4, ep + i / 100, np.float32), "task": f"task {ep % 2}"})
        ds.save_episode()
    ds.finalize()


def _lerobot_policy(out: Path) -> Path:
    """A tiny real LeRobot DiffusionPolicy for that dataset (random weights), saved by LeRobot's save_pretrained."""
    import torch

    from dynaguide.policy.lerobot_adapter import import_lerobot

    import_lerobot()  # the GR00T import workaround (lerobot_adapter's docstring)
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    torch.manual_seed(0)
    config = DiffusionConfig(
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, (5,)),
                        "observation.images.top": PolicyFeature(FeatureType.VISUAL, (3, 48, 48))},
        output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))}, n_obs_steps=2, horizon=8,
        n_action_steps=4, down_dims=(16, 32), kernel_size=3, n_groups=4, diffusion_step_embed_dim=16,
        spatial_softmax_num_keypoints=8, num_inference_steps=5, crop_shape=None, pretrained_backbone_weights=None,
        device="cpu", push_to_hub=False)
    stats = {"observation.state": {"min": torch.zeros(5), "max": torch.full((5,), 19.0)},
             "action": {"min": torch.zeros(4), "max": torch.full((4,), 2.19)},
             "observation.images.top": {"mean": torch.full((3, 1, 1), 0.4), "std": torch.full((3, 1, 1), 0.2)}}
    pre, post = make_diffusion_pre_post_processors(config, dataset_stats=stats)
    for part in (DiffusionPolicy(config), pre, post):
        part.save_pretrained(out)
    return out


def test_lerobot_dataset_episodes_decode_and_train(tmp_path):
    from dynaguide.checkpoint import load_checkpoint
    from dynaguide.datasets_external import ExternalDatasetError, LeRobotKeys, lerobot_episodes
    from dynaguide.guided_runner import GuidedPolicyRunner, RunnerConfig

    root = tmp_path / "tiny"
    _lerobot_dataset(root)
    demos = list(lerobot_episodes(root, LeRobotKeys(camera="observation.images.top")))
    assert [len(d) for d in demos] == [20, 20, 20] and [d.behaviour for d in demos] == ["task 0", "task 1", "task 0"]
    for ep, d in enumerate(demos):  # the frame at each row's timestamp, decoded from the shared video file
        assert np.allclose(d.actions[:, 0], ep + np.arange(20) / 100) and np.allclose(d.proprio[:, 0], np.arange(20))
        means = d.images["observation.images.top"].reshape(20, -1).mean(1)
        assert np.abs(means - (10 * np.arange(20) + ep)).max() < 4.0, means
    with pytest.raises(ExternalDatasetError, match="not a feature"):
        next(lerobot_episodes(root, LeRobotKeys(proprio="observation.joints")))

    # the dynamics model for a LeRobot policy trained on that dataset: its action stats and horizon
    policy_dir = _lerobot_policy(tmp_path / "policy")
    out = tmp_path / "dyn"
    assert _cli("train", "dynamics", "--data", str(root), "--camera", "observation.images.top", "--out", str(out),
                "--segment", "window", "--window", "10", "--stride", "5", "--policy", str(policy_dir),
                "--policy-kind", "lerobot", *TINY) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["segments"] == 9 and (summary["proprio_dim"], summary["action_dim"], summary["horizon"]) == (5, 4, 8)
    model, _ = load_checkpoint(out / "dynamics")
    assert model.cfg.embedder["kind"] == "random" and model.cfg.action_dim == 4
    runner = GuidedPolicyRunner.from_config(RunnerConfig(policy_kind="lerobot", policy_checkpoint=str(policy_dir),
                                                         dynamics_checkpoint=str(out / "dynamics"),
                                                         image_keys=("top",), proprio_dim=5, action_dim=4))
    assert runner.trained  # the runner's action-space check passed: same horizon and action min/max
    assert _cli("train", "dynamics", "--data", str(root), "--out", str(tmp_path / "bad"), "--camera", "nope",
                *TINY) == 2
