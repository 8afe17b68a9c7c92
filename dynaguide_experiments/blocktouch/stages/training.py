"""The train-policy and train-dynamics stages: the base and goal-conditioned policies, the outcome classifier
and the latent dynamics model, each resumable from its last checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from dynaguide.dynamics import LatentDynamicsModel
from dynaguide.embedders.factory import make_embedder
from dynaguide.policy import DiffusionPolicy
from dynaguide.training import train_classifier, train_dynamics, train_policy

from .. import dataset as ds
from ..classifier import OutcomeClassifier
from ..config import BlockTouchConfig
from .models import IMAGE_KEY, unit_stats
from .workdir import Paths, checkpoint_done, clear_if_forced, log, reset_stages, timed


class FrameItems(Dataset):
    """Per-frame items for ``dynaguide.training`` from a vectorised batch function of frame indices."""

    def __init__(self, make_batch: Callable[[torch.Tensor], dict], indices: np.ndarray) -> None:
        self.make_batch = make_batch
        self.indices = np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        batch = self.make_batch(torch.tensor([int(self.indices[i])]))
        return {k: v[0] for k, v in batch.items()}


def load_split(cfg: BlockTouchConfig, with_failures: bool = False) -> tuple[ds.DemoArrays, np.ndarray, np.ndarray]:
    """Frames and a by-episode train/validation split; ``with_failures`` appends the failure episodes."""
    paths = Paths(cfg)
    demos = ds.load_demos([paths.demos, paths.failures] if with_failures else paths.demos)
    train_idx, val_idx = demos.split(cfg.val_fraction, seed=cfg.collect.seed)
    return demos, train_idx, val_idx


def stage_train_policy(cfg: BlockTouchConfig, force: bool = False) -> None:
    """Base policy, then (when ``goal_conditioned`` is evaluated) the goal-conditioned baseline policy."""
    paths = Paths(cfg)
    jobs = [("train_policy", paths.policy, cfg.policy, cfg.policy_train, False)]
    if "goal_conditioned" in cfg.eval.methods:
        jobs.append(("train_goal_policy", paths.goal_policy, replace(cfg.policy, goal_conditioned=True),
                     cfg.goal_policy_train, True))
    demos = None
    for name, directory, pcfg, tcfg, with_goal in jobs:
        clear_if_forced(directory, force)
        if force:
            reset_stages(paths, (name,))
        if checkpoint_done(directory, tcfg.steps):
            log(f"{name}: {directory} complete, skipping")
            continue
        if demos is None:
            demos, train_idx, val_idx = load_split(cfg)
        policy = DiffusionPolicy(pcfg)
        unit_stats(policy)

        def make_batch(idx, _goal=with_goal, _cfg=pcfg, _demos=demos):
            batch = ds.policy_batch(_demos, idx, _cfg.n_obs_steps, _cfg.horizon, IMAGE_KEY)
            if _goal:
                batch[_cfg.goal_key] = _demos.final_images[_demos.episode[idx]].float() / 255.0
            return batch

        log(f"{name}: {tcfg.steps} steps on {len(train_idx)} frames")
        timed(paths, name, partial(train_policy, policy, FrameItems(make_batch, train_idx), tcfg, directory,
                                   FrameItems(make_batch, val_idx) if len(val_idx) else None))


def stage_train_dynamics(cfg: BlockTouchConfig, force: bool = False) -> None:
    """(a) the outcome classifier and (b) the latent dynamics model (embeddings of all frames cached in memory),
    both on the demonstrations plus, when ``cfg.outcome_failures``, the failure episodes."""
    paths = Paths(cfg)
    demos = None
    if force:
        reset_stages(paths, ("train_classifier", "embed_frames", "train_dynamics"))
    clear_if_forced(paths.classifier, force)
    if checkpoint_done(paths.classifier, cfg.classifier_train.steps):
        log(f"train_classifier: {paths.classifier} complete, skipping")
    else:
        demos, train_idx, val_idx = load_split(cfg, cfg.outcome_failures)
        clf = OutcomeClassifier(cfg.classifier)
        unit_stats(clf)
        make_batch = lambda idx: ds.classifier_batch(demos, idx, cfg.classifier.horizon, cfg.outcome_plan_tail)  # noqa: E731
        log(f"train_classifier: {cfg.classifier_train.steps} steps")
        timed(paths, "train_classifier", lambda: train_classifier(
            clf, FrameItems(make_batch, train_idx), cfg.classifier_train, paths.classifier,
            FrameItems(make_batch, val_idx) if len(val_idx) else None))
    clear_if_forced(paths.dynamics, force)
    if checkpoint_done(paths.dynamics, cfg.dynamics_train.steps):
        log(f"train_dynamics: {paths.dynamics} complete, skipping")
        return
    if demos is None:
        demos, train_idx, val_idx = load_split(cfg, cfg.outcome_failures)
    embedder = make_embedder(cfg.embedder).eval()

    def embed_all() -> tuple[torch.Tensor, torch.Tensor]:
        def embed(images: torch.Tensor) -> torch.Tensor:
            out = []
            with torch.no_grad():
                for i in tqdm(range(0, len(images), 512), desc="embed", mininterval=5.0):
                    out.append(embedder(images[i:i + 512].float() / 255.0).half())
            return torch.cat(out)
        return embed(demos.images), embed(demos.final_images)

    tokens, final_tokens = timed(paths, "embed_frames", embed_all)
    model = LatentDynamicsModel(cfg.dynamics)
    unit_stats(model)

    def make_batch(idx):
        batch = ds.dynamics_batch(demos, tokens, final_tokens, idx, cfg.dynamics.horizon, cfg.outcome_plan_tail)
        batch["obs_tokens"] = batch["obs_tokens"].float()
        batch["target_tokens"] = batch["target_tokens"].float()
        return batch

    log(f"train_dynamics: {cfg.dynamics_train.steps} steps")
    timed(paths, "train_dynamics", lambda: train_dynamics(
        model, FrameItems(make_batch, train_idx), cfg.dynamics_train, paths.dynamics,
        FrameItems(make_batch, val_idx) if len(val_idx) else None))
