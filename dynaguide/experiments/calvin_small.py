"""Small CPU-config CALVIN models for the demo graph (policy + latent dynamics), trained from a
``dynaguide calvin collect`` dataset.

    python -m dynaguide.experiments.calvin_small --data runs/calvin_demo/data.h5 --out checkpoints/calvin_cpu

Produces ``<out>/policy`` and ``<out>/dynamics`` (safetensors + JSON).  The policy sees the static
camera (dataset key ``third_person``, published as ``camera/rgb_static`` by the bridge) and the 15-d
``robot_obs``; the dynamics model predicts the default embedder's pooled tokens of the segment's final
static frame, and records that embedder's identity (the shipped ``checkpoints/calvin_cpu`` predate this:
they were trained on the random 224 px / 14 px-patch embedder, 256 x 384 tokens, and record none).  These are small models trained briefly on few demonstrations: they exist so the demo
graph runs on weights that have seen the task, not as a measured result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch.utils.data import Dataset

from dynaguide.checkpoint import load_checkpoint, save_checkpoint
from dynaguide.data import DynamicsDataset, PolicyDataset, build_embedding_cache, split_demos
from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel
from dynaguide.embedders import EmbedderConfig, make_embedder
from dynaguide.policy import DiffusionPolicy, DiffusionPolicyConfig
from dynaguide.training import TrainConfig, train_dynamics, train_policy

DATASET_CAMERA = "third_person"
POLICY_CAMERA = "rgb_static"


class RenameCamera(Dataset):
    """Present dataset camera ``src`` under the policy's camera name ``dst``."""

    def __init__(self, base: Dataset, src: str, dst: str) -> None:
        self.base, self.src, self.dst = base, src, dst

    def __len__(self) -> int:
        return len(self.base)

    def stats(self):
        """Min/max of actions and proprio (of the wrapped dataset; no pass over the images)."""
        return self.base.stats()

    def __getitem__(self, i):
        item = dict(self.base[i])
        item[self.dst] = item.pop(self.src)
        return item


def train(data: str, out: str, policy_steps: int, dynamics_steps: int, image_size: int = 64) -> None:
    out_dir = Path(out)
    train_names, val_names = split_demos(data, 0.1, seed=0)
    policy = DiffusionPolicy(DiffusionPolicyConfig.cpu(image_keys=(POLICY_CAMERA,), image_size=image_size,
                                                       proprio_dim=15, action_dim=7, n_action_steps=8))
    mk = lambda names: RenameCamera(PolicyDataset(data, (DATASET_CAMERA,), 2, 16, demos=names, preload_images=True),
                                    DATASET_CAMERA, POLICY_CAMERA)
    res = train_policy(policy, mk(train_names), TrainConfig(steps=policy_steps, batch_size=64, lr=3e-4, val_every=500,
                                                      checkpoint_every=500, ema_decay=0.99, num_threads=1), out_dir / "policy_run",
                 val_data=mk(val_names))
    embedder = make_embedder(EmbedderConfig())  # the default embedder (EfficientNet-Lite0, 128 px, stride 16)
    # sized for its tokens (8x8 x 112 → pooled 4x4) and recording its identity, checked by the runtime
    dynamics = LatentDynamicsModel(LatentDynamicsConfig.for_embedder(embedder, "cpu", proprio_dim=15, action_dim=7,
                                                                     horizon=16))
    cache = build_embedding_cache(data, embedder, DATASET_CAMERA)  # every frame embedded once
    dyn = lambda names: DynamicsDataset(data, DATASET_CAMERA, 16, demos=names, tokens=cache)
    res_dyn = train_dynamics(dynamics, dyn(train_names), TrainConfig(steps=dynamics_steps, batch_size=64, lr=3e-4, val_every=500,
                                                           checkpoint_every=500, ema_decay=0.99, num_threads=1),
                   out_dir / "dynamics_run", val_data=dyn(val_names))
    for name, result in (("policy", res), ("dynamics", res_dyn)):  # inference-only export: EMA weights, no optimizer
        model, config = load_checkpoint(result.checkpoint)
        save_checkpoint(out_dir / name, model, config, {"source": str(result.checkpoint), "step": result.step,
                                                       "data": str(data)})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--policy-steps", type=int, default=3000)
    p.add_argument("--dynamics-steps", type=int, default=2000)
    a = p.parse_args(argv)
    train(a.data, a.out, a.policy_steps, a.dynamics_steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
