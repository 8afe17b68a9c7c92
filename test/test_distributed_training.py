"""Training across processes (issue 26): the same command in one process and in two (torchrun, gloo, CPU) —
and with gradient accumulation — reaches the same parameters for the same global batch.

Tolerances (measured, see README "Beyond one machine"): every parameter and both Adam moments agree within
1e-6.  One exception, excluded by name: the *key* part of an attention layer's ``in_proj_bias``.  Softmax is
invariant to a bias added to every key, so its true gradient is exactly zero and what is there is rounding
noise; Adam divides the gradient by its own RMS and turns that noise into steps of size ``lr``, whatever the
summation order.  Those entries are only checked to have moved by at most ``lr · steps``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dynaguide.data.datasets import DynamicsDataset, PolicyDataset
from dynaguide.data.schema import Demo
from dynaguide.data.writer import write_hdf5_dataset
from dynaguide.distributed import Rows, micro_batches
from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel
from dynaguide.embedders.random_patch import RandomPatchEmbedder
from dynaguide.policy import DiffusionPolicy, DiffusionPolicyConfig
from dynaguide.training import TrainConfig, train_classifier, train_dynamics, train_policy
from dynaguide_experiments.blocktouch.classifier import OutcomeClassifier, OutcomeClassifierConfig

ATOL = 1e-6
LR = 1e-4
TINY = ["--embedder", "random", "--embedder-image-size", "28", "--embedder-patch-size", "14", "--embedder-dim", "16",
        "--set", "model_dim=32", "--set", "n_layers=1", "--set", "n_heads=2", "--set", "pool=1", "--horizon", "8",
        "--batch-size", "8", "--lr", str(LR), "--threads", "1", "--no-progress", "--no-plot", "--val-fraction", "0.25"]


def _data(path: Path) -> Path:
    rng = np.random.default_rng(0)
    demos = [Demo(actions=rng.normal(size=(20, 3)), images={"rgb": rng.integers(0, 255, (20, 32, 32, 3), np.uint8)},
                  proprio=rng.normal(size=(20, 4)), behaviour=f"b{i % 2}") for i in range(8)]
    return write_hdf5_dataset(path, demos)


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # the checkout under test first (a worktree next to an editable install of another one)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


def _train(data: Path, out: Path, *extra: str, processes: int = 1) -> subprocess.CompletedProcess:
    cli = ["-m", "dynaguide_cli", "train", "dynamics", "--data", str(data), "--out", str(out), *TINY, *extra]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    run = subprocess.run([sys.executable, *launcher, *cli], capture_output=True, text=True, env=_env(), timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def _key_bias(name: str, value: torch.Tensor) -> slice | None:
    if name.endswith("self_attn.in_proj_bias"):
        d = value.shape[0] // 3
        return slice(d, 2 * d)
    return None


def _assert_same_state(one: Path, other: Path, steps: int) -> dict[str, float]:
    """Max abs differences of model, EMA and optimizer tensors of two ``latest`` checkpoints (asserted)."""
    worst = {}
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        a, b = load_file(one / name), load_file(other / name)
        assert a.keys() == b.keys()
        diff = 0.0
        for key in a:
            x, y = a[key].double(), b[key].double()
            keys = _key_bias(key, a[key])
            if keys is not None and name != "optimizer.safetensors":
                assert (x[keys] - y[keys]).abs().max() <= 2 * LR * steps, key  # see module docstring
                x, y = torch.cat([x[:keys.start], x[keys.stop:]]), torch.cat([y[:keys.start], y[keys.stop:]])
            diff = max(diff, float((x - y).abs().max()))
        assert diff <= ATOL, (name, diff)
        worst[name] = diff
    return worst


def test_two_processes_train_the_same_parameters_as_one(tmp_path):
    data = _data(tmp_path / "data.h5")
    two = _train(data, tmp_path / "two", "--steps", "2", processes=2)
    caches = list(tmp_path.glob("*.emb.h5"))   # built by the main process; the other one opened it
    assert len(caches) == 1 and not list(tmp_path.glob("*.tmp*"))
    _train(data, tmp_path / "one", "--steps", "4")
    summaries = [json.loads(line) for line in two.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["processes"] == 2  # printed by the main process only
    assert read_steps(tmp_path / "two") == 2
    # resumed by two processes from the checkpoint the main process wrote: as if never interrupted
    _train(data, tmp_path / "two", "--steps", "4", processes=2)
    worst = _assert_same_state(tmp_path / "one" / "run" / "latest", tmp_path / "two" / "run" / "latest", steps=4)
    print("max abs differences, 2 processes vs 1:", worst)
    one, two_ = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert abs(one["final_train_loss"] - two_["final_train_loss"]) < 1e-5
    assert abs(one["final_val_loss"] - two_["final_val_loss"]) < 1e-5
    # the exported (EMA) checkpoints too
    a, b = load_file(tmp_path / "one" / "dynamics" / "model.safetensors"), \
        load_file(tmp_path / "two" / "dynamics" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a if _key_bias(k, a[k]) is None) <= ATOL


def read_steps(out: Path) -> int:
    return json.loads((out / "summary.json").read_text())["steps"]


def test_a_global_batch_that_does_not_split_is_refused_in_one_line(tmp_path):
    from dynaguide_cli.main import main

    data = _data(tmp_path / "data.h5")
    code = main(["train", "dynamics", "--data", str(data), "--out", str(tmp_path / "o"), *TINY, "--steps", "1",
                 "--grad-accum", "3"])
    assert code == 2
    with pytest.raises(ValueError, match="multiple of 6"):
        micro_batches(8, 2, 3, 0)


def test_micro_batches_cover_the_global_batch_once():
    rows = [r for rank in range(2) for r in micro_batches(12, 2, 3, rank)]
    assert [(r.start, r.stop) for r in rows] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12)]
    assert all(r.total == 12 for r in rows)
    with pytest.raises(ValueError):
        Rows(4, 4, 12)


# ------------------------------------------------------------------ gradient accumulation, in one process
def _demos(n=6, length=12, size=16):
    rng = np.random.default_rng(0)
    return [Demo(actions=np.stack([np.full(length, 1.0 - 2 * (i % 2)), rng.normal(0, 0.1, length)], 1),
                 images={"rgb": rng.integers(0, 255, (length, size, size, 3), np.uint8)},
                 proprio=rng.normal(size=(length, 2)), behaviour="right" if i % 2 == 0 else "left") for i in range(n)]


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(steps=3, batch_size=8, lr=1e-3, val_every=100, checkpoint_every=100,
                                 progress=False, ema_decay=0.9, plot=False), **kw})


@pytest.mark.parametrize("kind", ["policy", "dynamics", "classifier"])
def test_gradient_accumulation_equals_one_batch(tmp_path, kind):
    """4 micro-batches of 2 = one batch of 8 (the policy with random image shifts: their draws are sharded too)."""
    demos = _demos()

    def run(accum: int):
        torch.manual_seed(0)
        if kind == "policy":
            model = DiffusionPolicy(DiffusionPolicyConfig.cpu(
                image_size=16, proprio_dim=2, action_dim=2, horizon=8, cnn_width=16, num_keypoints=8,
                down_dims=(16, 32), step_embed_dim=16, random_shift=2))
            return train_policy(model, PolicyDataset(demos, ["rgb"], n_obs_steps=2, horizon=8),
                                _cfg(grad_accum=accum), tmp_path / f"p{accum}")
        if kind == "dynamics":
            model = LatentDynamicsModel(LatentDynamicsConfig.cpu(
                embed_tokens=16, embed_dim=16, pool=2, model_dim=32, n_heads=4, n_layers=1, proprio_dim=2,
                action_dim=2, horizon=8))
            return train_dynamics(model, DynamicsDataset(demos, "rgb", horizon=8), _cfg(grad_accum=accum),
                                  tmp_path / f"d{accum}", embedder=RandomPatchEmbedder(16, 4, 16, seed=0))
        model = OutcomeClassifier(OutcomeClassifierConfig(num_classes=2, image_size=16, cnn_width=16, num_keypoints=8,
                                                          hidden_dim=32, horizon=8))
        return train_classifier(model, DynamicsDataset(demos, "rgb", horizon=8, class_names=["left", "right"]),
                                _cfg(grad_accum=accum), tmp_path / f"c{accum}")

    one, four = run(1), run(4)
    assert np.allclose([v for _, v in one.train_losses], [v for _, v in four.train_losses], atol=1e-5, rtol=0)
    prefix = kind[0]
    a, b = (load_file(tmp_path / f"{prefix}{k}" / "latest" / "optimizer.safetensors") for k in (1, 4))
    moments = max(float((a[k] - b[k]).abs().max()) for k in a if k.endswith("exp_avg"))
    assert moments <= ATOL, moments   # the gradients (Adam's first moment sums them) agree
    # Adam steps every entry by about lr whatever its gradient's size, so entries with a (near-)zero gradient
    # (biases before a softmax or a normalisation) move by rounding noise: parameters agree to a part of lr
    for x, y in ((one.model, four.model), (one.ema_model, four.ema_model)):
        for name, v in x.state_dict().items():
            if v.is_floating_point():
                assert float((v - y.state_dict()[name]).abs().max()) <= 0.2 * 1e-3 * 3, name
