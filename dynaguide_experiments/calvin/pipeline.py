"""Resumable training stages of the CALVIN experiments.

    dynaguide calvin train --config config/calvin_experiment.yaml --stage all|merge|embed|policy|dynamics|export

Each stage skips work that is already done (merged file present, embedding cache matching, training
checkpoint at its final step) and a killed training run continues from its last checkpoint
(:func:`dynaguide.training.train_model`).  ``policy`` and ``dynamics`` are independent after ``embed``
and can run in two processes at once (one core each).

Across processes, GPUs and nodes (:mod:`dynaguide.distributed`): the same command under ``accelerate launch``
(or ``torchrun``) trains ``policy`` / ``gc_policy`` / ``dynamics`` data-parallel with ``training.batch_size`` as
the global batch (``training.device``, ``mixed_precision``, ``grad_accum``); ``merge`` and the embedding
caches run on the main process first (the others then find them done), ``export`` and ``stages.json`` on the
main process only.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import h5py
from torch.utils.data import Dataset

from calvin_bridge.config import DATASET_CAMERAS
from dynaguide.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from dynaguide.data.datasets import DynamicsDataset, PolicyDataset
from dynaguide.data.embedding_cache import build_embedding_cache
from dynaguide.data.source import split_demos
from dynaguide.distributed import make_accelerator
from dynaguide.dynamics import LatentDynamicsConfig, LatentDynamicsModel
from dynaguide.embedders.factory import make_embedder
from dynaguide.embedders.identity import embedder_identity
from dynaguide_experiments.calvin.config import CalvinExperimentConfig
from dynaguide_experiments.calvin.harness import POLICY_CAMERA
from dynaguide.policy import DiffusionPolicy, DiffusionPolicyConfig
from dynaguide.training import TrainConfig, train_dynamics, train_policy

STAGES = ("merge", "embed", "policy", "dynamics", "export")
#: stages run only when named (the goal-conditioned baseline policy)
OPTIONAL_STAGES = ("gc_policy",)


class RenameCameras(Dataset):
    """Present dataset cameras (``third_person``, ``eye_in_hand``) under the policy's camera names (the env's
    ``rgb_static``, ``rgb_gripper``), so the policy's keys equal the ROS graph's and the harness's.
    ``names``: dataset key → policy key."""

    def __init__(self, base: Dataset, names: dict[str, str]) -> None:
        self.base, self.names = base, dict(names)

    def __len__(self) -> int:
        return len(self.base)

    def stats(self):
        """Min/max of actions and proprio (of the wrapped dataset; no pass over the images)."""
        return self.base.stats()

    def __getitem__(self, i):
        item = dict(self.base[i])
        for src, dst in self.names.items():
            item[dst] = item.pop(src)
        return item


def merge_segments(sources: tuple[str, ...], out: str | Path) -> dict:
    """Copy the ``data/demo_*`` groups of every source file into one file ``out`` (renumbered, attrs kept).

    Skipped when ``out`` already holds as many demos as the sources together.
    """
    out = Path(out)
    counts = []
    for src in sources:
        with h5py.File(src, "r") as f:
            counts.append(len(f["data"]))
    if out.is_file():
        with h5py.File(out, "r") as f:
            if len(f["data"]) == sum(counts):
                return {"demos": sum(counts), "skipped": True}
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w") as dst:
        data = dst.create_group("data")
        i = 0
        for src in sources:
            with h5py.File(src, "r") as f:
                for k, v in f["data"].attrs.items():
                    if k != "next_seed_offset":
                        data.attrs[k] = v
                names = sorted(f["data"], key=lambda n: int(n.split("_")[-1]))
                for name in names:
                    f.copy(f["data"][name], data, name=f"demo_{i}")
                    data[f"demo_{i}"].attrs["source"] = f"{Path(src).name}:{name}"
                    i += 1
    tmp.replace(out)
    return {"demos": i, "skipped": False}


def _train_config(cfg: CalvinExperimentConfig, steps: int) -> TrainConfig:
    t = cfg.training
    return TrainConfig(steps=steps, batch_size=t.batch_size, lr=t.lr, lr_schedule="cosine", warmup_steps=200,
                       val_every=500, checkpoint_every=250, ema_decay=0.995, num_threads=1, device=t.device,
                       mixed_precision=t.mixed_precision, grad_accum=t.grad_accum, seed=t.seed)


def _splits(cfg: CalvinExperimentConfig) -> tuple[list[str], list[str]]:
    return split_demos(cfg.data.merged, cfg.training.val_fraction, seed=0)


#: the most times UnderrepresentedBehaviors repeats one segment to raise a behaviour's share
MAX_REPEATS = 20


def underrepresent(path: str | Path, names: list[str], behaviour: str, share: float) -> list[str]:
    """``names`` with ``behaviour`` making up ``share`` of the training segments as sampled (the
    UnderrepresentedBehaviors data); every other segment is kept as it is.

    ``k = max(1, round(share · n_other / (1 − share)))`` segments of ``behaviour``: below its natural count the
    first ``k`` are kept and the rest dropped; above it every one is kept and the first ``k mod n`` once more
    than the others (each repeated ``k // n`` or ``k // n + 1`` times, at most :data:`MAX_REPEATS`), so a share
    counts a repeated segment as often as it is sampled.  The order of ``names`` is kept (repeats adjacent)."""
    with h5py.File(path, "r") as f:
        behaviours = {n: f["data"][n].attrs.get("behavior") for n in names}
    ours = [n for n in names if behaviours[n] == behaviour]
    others = [n for n in names if behaviours[n] != behaviour]
    if not ours:
        raise ValueError(f"{path} has no training segments of {behaviour!r}")
    k = max(1, round(share * len(others) / (1.0 - share)))
    repeats = {n: k // len(ours) + (i < k % len(ours)) for i, n in enumerate(ours)}
    if max(repeats.values()) > MAX_REPEATS:
        raise ValueError(f"a share of {share:.0%} needs {k} {behaviour!r} segments; the data has {len(ours)} "
                         f"(more than {MAX_REPEATS} repeats each)")
    out: list[str] = []
    for n in names:
        out.extend([n] * (repeats[n] if n in repeats else 1))
    return out


def embed(cfg: CalvinExperimentConfig, paths: tuple[str, ...] | None = None, accelerator=None):
    """Embedding caches of every static frame of ``paths`` (default: the training and validation files), built by
    the main process first when ``accelerator`` runs several (the others open them)."""
    embedder = make_embedder(cfg.embedder)
    caches = {}
    with accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext():
        for path in paths or (cfg.data.merged, cfg.data.validation):
            caches[path] = build_embedding_cache(path, embedder, cfg.data.camera)
    return embedder, caches


def train_base_policy(cfg: CalvinExperimentConfig, goal_conditioned: bool = False, accelerator=None):
    """The base diffusion policy (``model.policy_cameras`` + robot_obs); with ``goal_conditioned`` the GC baseline,
    which also sees its segment's final static frame (hindsight relabelling, as the paper's GC policy)."""
    m = cfg.model
    train_names, val_names = _splits(cfg)
    t = cfg.training
    if t.underrepresented_behaviour and not goal_conditioned:
        train_names = underrepresent(cfg.data.merged, train_names, t.underrepresented_behaviour,
                                     t.underrepresented_share)
    # the static camera's dataset key is data.camera; further cameras use the recorder's keys
    cameras = {(cfg.data.camera if c == POLICY_CAMERA else DATASET_CAMERAS[c]): c for c in m.policy_cameras}
    policy = DiffusionPolicy(DiffusionPolicyConfig.cpu(image_keys=m.policy_cameras, image_size=m.policy_image_size,
                                                       proprio_dim=15, action_dim=7, n_obs_steps=m.n_obs_steps,
                                                       horizon=m.horizon, n_action_steps=m.n_action_steps,
                                                       goal_conditioned=goal_conditioned))
    goal_key = policy.cfg.goal_key if goal_conditioned else None

    def dataset(names):
        return RenameCameras(PolicyDataset(cfg.data.merged, tuple(cameras), m.n_obs_steps, m.horizon, demos=names,
                                           goal_key=goal_key, goal_camera=cfg.data.camera, preload_images=True),
                             cameras)

    name = "gc_policy_run" if goal_conditioned else "policy_run"
    return train_policy(policy, dataset(train_names), _train_config(cfg, cfg.training.policy_steps),
                        Path(cfg.training.out_dir) / name, val_data=dataset(val_names), accelerator=accelerator)


def train_latent_dynamics(cfg: CalvinExperimentConfig, accelerator=None):
    m = cfg.model
    embedder, caches = embed(cfg, (cfg.data.merged,), accelerator)   # the training file's frames are all it reads
    train_names, val_names = _splits(cfg)
    dynamics = LatentDynamicsModel(LatentDynamicsConfig.cpu(
        embed_tokens=embedder.num_tokens, embed_dim=embedder.dim, pool=m.dynamics_pool, proprio_dim=15, action_dim=7,
        horizon=m.horizon, embedder=embedder_identity(embedder)))
    cache = caches[cfg.data.merged]

    def dataset(names):
        return DynamicsDataset(cfg.data.merged, cfg.data.camera, m.horizon, demos=names, tokens=cache)

    return train_dynamics(dynamics, dataset(train_names), _train_config(cfg, cfg.training.dynamics_steps),
                          Path(cfg.training.out_dir) / "dynamics_run", val_data=dataset(val_names),
                          accelerator=accelerator)


def export(cfg: CalvinExperimentConfig) -> dict:
    """Inference-only checkpoints (EMA weights, no optimiser state) in ``training.export_dir``."""
    out = Path(cfg.training.export_dir)
    written = {}
    for name in ("policy", "dynamics", "gc_policy"):
        run = Path(cfg.training.out_dir) / f"{name}_run" / "latest"
        if not run.is_dir():
            continue
        meta = read_checkpoint_meta(run)
        model, config = load_checkpoint(run)
        extra = {"source": str(run), "step": meta.get("step"), "data": cfg.data.merged}
        save_checkpoint(out / name, model, config, extra)
        written[name] = str(out / name)
    if not written:
        raise FileNotFoundError(f"no training runs under {cfg.training.out_dir} to export")
    return written


def run(cfg: CalvinExperimentConfig, stages: tuple[str, ...] = STAGES) -> dict:
    """Run ``stages`` in order; returns ``{stage: seconds}`` (and writes ``<out_dir>/stages.json``)."""
    unknown = [s for s in stages if s not in STAGES + OPTIONAL_STAGES]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r}; stages: {STAGES + OPTIONAL_STAGES}")
    accelerator = make_accelerator(cfg.training.device, cfg.training.mixed_precision)
    times: dict[str, float] = {}
    for stage in stages:
        start = time.perf_counter()
        if stage == "merge":
            with accelerator.main_process_first():
                merge_segments(cfg.data.train, cfg.data.merged)
        elif stage == "embed":
            embed(cfg, accelerator=accelerator)
        elif stage == "policy":
            train_base_policy(cfg, accelerator=accelerator)
        elif stage == "gc_policy":
            train_base_policy(cfg, goal_conditioned=True, accelerator=accelerator)
        elif stage == "dynamics":
            train_latent_dynamics(cfg, accelerator)
        elif stage == "export":
            if accelerator.is_main_process:
                export(cfg)
            accelerator.wait_for_everyone()
        times[stage] = round(time.perf_counter() - start, 1)
    if not accelerator.is_main_process:
        return times
    path = Path(cfg.training.out_dir) / "stages.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**previous, **times}, indent=2) + "\n")
    return times
